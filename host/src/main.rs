//! `rekey`: OAuth2 refresh-and-retry from the command line.

mod cli;

use clap::Parser;

fn main() {
    let args = cli::Args::parse();
    cli::init_logging(args.verbose);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let code = match runtime.block_on(cli::run(args)) {
        Ok(code) => code.code(),
        Err(e) => {
            eprintln!("rekey: {}", e.message);
            e.code.code()
        }
    };
    std::process::exit(code);
}
