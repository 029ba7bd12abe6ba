//! Command-line parsing and dispatch.

mod authorize;
mod credential;
mod demo;
mod exit;
mod send;

pub use exit::Exit;

use clap::{Parser, Subcommand};
use rekey::KeyStore;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "rekey",
    version,
    about = "OAuth2 refresh-and-retry in a WebAssembly sandbox"
)]
pub struct Args {
    /// Credential store: a SQLite file (`PATH` or `sqlite:PATH`), or a
    /// PostgreSQL database (`postgres://user@host/db`) shared by a fleet.
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
    /// A client certificate chain (PEM) to present to servers that ask for
    /// one (mutual TLS); needs --client-key.
    #[arg(
        long,
        global = true,
        env = "REKEY_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM file; never its contents
    /// on the command line).
    #[arg(
        long,
        global = true,
        env = "REKEY_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Add, show, list or remove stored credentials.
    #[command(subcommand)]
    Credential(credential::Command),
    /// Send one HTTP request with a credential, curl-style.
    Send(send::Args),
    /// Get a credential's first token set: authorization code with PKCE
    /// through a loopback redirect, or the device grant (`--device`).
    Authorize(authorize::Args),
    /// Run a self-contained demo against an embedded OAuth2 provider.
    Demo,
    /// Write the rekey component (.wasm), byte for byte the one this binary
    /// runs, for other hosts (Node.js, Python, wasi:http runtimes).
    Component {
        /// Write it here (default: standard output, unless it is a terminal).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Print its SHA-256 instead.
        #[arg(long)]
        sha256: bool,
    },
}

/// A failure the CLI reports: one line, and the exit code for it.
pub struct Failure {
    pub message: String,
    pub code: Exit,
}

impl Failure {
    pub fn new(code: Exit, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl From<rekey::Error> for Failure {
    fn from(e: rekey::Error) -> Self {
        Failure::new(e.category().into(), e.to_string())
    }
}

impl From<rekey::StoreError> for Failure {
    fn from(e: rekey::StoreError) -> Self {
        rekey::Error::from(e).into()
    }
}

/// How every component call of this process connects: the client
/// certificate (--client-cert/--client-key) and the https proxy
/// ($REKEY_HTTPS_PROXY: an environment variable only, as its URL may carry a
/// password; the usual HTTPS_PROXY is never read).
static HTTP: std::sync::OnceLock<rekey::HttpConfig> = std::sync::OnceLock::new();

fn https_proxy() -> Result<Option<rekey::HttpsProxy>, Failure> {
    match std::env::var("REKEY_HTTPS_PROXY") {
        Ok(url) if !url.is_empty() => rekey::HttpsProxy::new(&url)
            .map(Some)
            .map_err(|e| Failure::new(Exit::BadInput, format!("REKEY_HTTPS_PROXY: {e}"))),
        _ => Ok(None),
    }
}

fn client_identity(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<Option<rekey::ClientIdentity>, Failure> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            Failure::new(
                Exit::BadInput,
                format!("cannot read {}: {e}", path.display()),
            )
        })
    };
    rekey::ClientIdentity::from_pem(&read(cert)?, &read(key)?)
        .map(Some)
        .map_err(|e| Failure::new(Exit::BadInput, format!("--client-cert/--client-key: {e}")))
}

pub async fn run(args: Args) -> Result<Exit, Failure> {
    let _ = HTTP.set(rekey::HttpConfig {
        client_identity: client_identity(args.client_cert.as_deref(), args.client_key.as_deref())?,
        https_proxy: https_proxy()?,
        ..rekey::HttpConfig::default()
    });
    // Where the commands that run the component cache its compiled code.
    let cache_dir = if args.no_cache {
        None
    } else {
        args.cache_dir.or_else(rekey::cache::default_dir)
    };
    match args.command {
        Command::Demo => demo::run().await,
        Command::Component { out, sha256 } => component(out, sha256),
        // Store calls block (a PostgreSQL client runs its own runtime): keep
        // them off the async threads.
        Command::Credential(credential::Command::Keepalive(keepalive)) => {
            let store = blocking(move || open_store(&args.store)).await?;
            credential::keepalive(store, cache_dir, keepalive).await
        }
        Command::Credential(cmd) => {
            blocking(move || credential::run(open_store(&args.store)?.as_ref(), cache_dir, cmd))
                .await
        }
        Command::Authorize(authorize) => {
            let store = blocking(move || open_store(&args.store)).await?;
            authorize::run(store, cache_dir, authorize).await
        }
        Command::Send(send) => {
            let store = blocking(move || open_store(&args.store)).await?;
            send::run(store, cache_dir, send).await
        }
    }
}

fn component(out: Option<std::path::PathBuf>, sha256: bool) -> Result<Exit, Failure> {
    use std::io::{IsTerminal, Write};
    let wasm = rekey::GUEST_WASM;
    if sha256 {
        println!("{}", rekey::cache::sha256_hex(wasm));
        return Ok(Exit::Ok);
    }
    let written = match &out {
        Some(path) => std::fs::write(path, wasm),
        None if std::io::stdout().is_terminal() => {
            return Err(Failure::new(
                Exit::BadInput,
                "refusing to write binary to a terminal: use --out FILE or a redirect",
            ));
        }
        None => std::io::stdout().lock().write_all(wasm),
    };
    written.map_err(|e| Failure::new(Exit::Failed, format!("cannot write the component: {e}")))?;
    Ok(Exit::Ok)
}

/// The runtime for one CLI call: no instance pool to set up, the compiled
/// code from the cache.
fn rekey_for_one_call(cache_dir: Option<std::path::PathBuf>) -> Result<rekey::Rekey, Failure> {
    let config = rekey::Config {
        pooling: None,
        cache_dir,
        http: HTTP.get().cloned().unwrap_or_default(),
        ..rekey::Config::default()
    };
    rekey::Rekey::new(config).map_err(|e| {
        Failure::new(
            Exit::Failure(rekey::Category::Component),
            format!("cannot load the rekey component: {e:#}"),
        )
    })
}

/// Set when SIGTERM or SIGINT arrived: a command of several calls
/// (`credential keepalive`) finishes the one in flight and starts no other.
static STOP_REQUESTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks a command of several calls to stop after the one in flight.
pub fn request_stop() {
    STOP_REQUESTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn stop_requested() -> bool {
    STOP_REQUESTED.load(std::sync::atomic::Ordering::Relaxed)
}

async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> Result<R, Failure> + Send + 'static,
) -> Result<R, Failure> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Failure::new(Exit::Failed, format!("internal error: {e}"))))
}

fn open_store(url: &str) -> Result<Arc<dyn KeyStore>, Failure> {
    Ok(rekey::store::open(url)?)
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
    // Colours only for a person at a terminal who has not asked for none.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}
