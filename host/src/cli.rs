//! Command-line parsing and dispatch.

mod credential;
mod demo;
mod send;

use clap::{Parser, Subcommand};
use rekey::{KeyStore, SqliteStore};
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "rekey",
    version,
    about = "OAuth2 refresh-and-retry in a WebAssembly sandbox"
)]
pub struct Args {
    /// Credential store: a SQLite file path or `sqlite:PATH`.
    #[arg(long, global = true, env = "REKEY_STORE", default_value = "rekey.db")]
    store: String,
    /// More log output on stderr (-v: rekey's events, -vv: everything).
    /// Secrets are never logged at any level.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Cache compiled native code here between runs (default
    /// $XDG_CACHE_HOME/rekey or ~/.cache/rekey).
    #[arg(long, global = true, env = "REKEY_CACHE_DIR")]
    cache_dir: Option<std::path::PathBuf>,
    /// Compile the component at every start instead.
    #[arg(long, global = true)]
    no_cache: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Add, show, list or remove stored credentials.
    #[command(subcommand)]
    Credential(credential::Command),
    /// Send one HTTP request with a credential, curl-style.
    Send(send::Args),
    /// Run a self-contained demo against an embedded OAuth2 provider.
    Demo,
}

/// A failure the CLI reports: one line, and the exit code for it.
pub struct Failure {
    pub message: String,
    pub code: i32,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<rekey::Error> for Failure {
    fn from(e: rekey::Error) -> Self {
        Failure::new(e.exit_code(), e.to_string())
    }
}

impl From<rekey::StoreError> for Failure {
    fn from(e: rekey::StoreError) -> Self {
        rekey::Error::from(e).into()
    }
}

pub async fn run(args: Args) -> Result<i32, Failure> {
    match args.command {
        Command::Demo => demo::run().await,
        Command::Credential(cmd) => credential::run(open_store(&args.store)?.as_ref(), cmd),
        Command::Send(send) => {
            let cache_dir = if args.no_cache {
                None
            } else {
                args.cache_dir.or_else(rekey::cache::default_dir)
            };
            send::run(open_store(&args.store)?, cache_dir, send).await
        }
    }
}

fn open_store(url: &str) -> Result<Arc<dyn KeyStore>, Failure> {
    if url.contains("://") {
        return Err(Failure::new(
            2,
            format!("unsupported store URL scheme in {url:?}: use a file path or sqlite:PATH"),
        ));
    }
    let path = url.strip_prefix("sqlite:").unwrap_or(url);
    Ok(Arc::new(SqliteStore::open(path)?))
}

pub fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "rekey=debug,warn",
        // Everything, but the compiler's own passes: they see only wasm code
        // and would print millions of lines per compile.
        _ => {
            "trace,cranelift_codegen=warn,cranelift_frontend=warn,regalloc2=warn,wasmtime_internal_cranelift=info"
        }
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
