//! `rekey`: OAuth2 refresh-and-retry from the command line.

mod cli;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

fn main() {
    let args = cli::Args::parse();
    cli::init_logging(args.verbose);
    // One command, one call at a time: no worker threads to start (store
    // operations still run on blocking threads).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    let code = runtime.block_on(run_until_done(args));
    std::process::exit(code);
}

/// Runs the command. SIGTERM and SIGINT (what `timeout`, systemd, Kubernetes
/// and Ctrl-C send) do not cut a call short: the provider may already have
/// rotated the refresh token, and only finishing the call makes the new one
/// durable. The call is bounded by its own timeouts; a second signal stops
/// at once.
async fn run_until_done(args: cli::Args) -> i32 {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return finish(cli::run(args).await, None);
    };
    let run = cli::run(args);
    tokio::pin!(run);
    let mut received: Option<i32> = None;
    loop {
        let signo = tokio::select! {
            result = &mut run => return finish(result, received),
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        };
        if received.is_some() {
            eprintln!("rekey: stopping now; a refresh in flight may be lost");
            return 128 + signo;
        }
        eprintln!(
            "rekey: signal {signo} received: finishing the call in flight so that refreshed keys are not lost (signal again to stop now)"
        );
        cli::request_stop();
        received = Some(signo);
    }
}

/// The exit code: the command's, or 128 + the signal that asked it to stop.
fn finish(result: Result<cli::Exit, cli::Failure>, signalled: Option<i32>) -> i32 {
    let code = match result {
        Ok(code) => code.code(),
        Err(e) => {
            eprintln!("rekey: {}", e.message);
            e.code.code()
        }
    };
    signalled.map_or(code, |s| 128 + s)
}
