//! `rekey-testkit`: runs the loopback provider for tests written in other
//! languages. Prints one JSON line (`base_url`, `token_url`, `api_url`,
//! `client_id`, `client_secret`) on stdout, then serves until killed or until
//! its standard input closes (so a test runner that dies takes it along; run
//! it with a pipe or a terminal on stdin, not `</dev/null`).
//!
//! Options: `--access-ttl-ms N` (default 2000), `--client-auth basic|post`
//! (default: either), `--no-rotate`, `--grace-ms N` (rotated tokens stay
//! valid this long; default 0, strict reuse detection), `--token-delay-ms N`
//! (answer each granted refresh only after N ms), `--no-expires-in`,
//! `--assertion-key-file PEM` (the client's public key: `private_key_jwt`
//! and the JWT bearer grant are accepted, RFC 7523).

use rekey_testkit::{ClientAuth, Provider, ProviderConfig};
use std::io::{Read, Write};
use std::time::Duration;

fn main() {
    let config = match parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rekey-testkit: {e}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("start the tokio runtime");
    runtime.block_on(async {
        let provider = Provider::start(config).await.expect("bind 127.0.0.1");
        let client = provider.client();
        let line = serde_json::json!({
            "base_url": provider.base_url(),
            "token_url": client.token_url,
            "api_url": provider.api_url(""),
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "issuer": provider.base_url(),
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|_| out.flush())
            .expect("stdout");
        drop(out);
        // Serve until stdin reaches EOF: a test runner holds a pipe open,
        // and its death ends the provider too.
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        })
        .await;
    });
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<ProviderConfig, String> {
    let mut config = ProviderConfig::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--access-ttl-ms" => config.access_ttl = Duration::from_millis(number(&value(&arg)?)?),
            "--grace-ms" => config.grace_period = Duration::from_millis(number(&value(&arg)?)?),
            "--token-delay-ms" => {
                config.token_delay = Duration::from_millis(number(&value(&arg)?)?)
            }
            "--no-rotate" => config.rotate_refresh_tokens = false,
            "--no-expires-in" => config.omit_expires_in = true,
            "--assertion-key-file" => {
                let path = value(&arg)?;
                let pem = std::fs::read_to_string(&path)
                    .map_err(|e| format!("--assertion-key-file {path}: {e}"))?;
                config.assertion_key = Some(pem);
            }
            "--client-auth" => {
                config.client_auth = Some(match value(&arg)?.as_str() {
                    "basic" => ClientAuth::Basic,
                    "post" => ClientAuth::Post,
                    other => return Err(format!("--client-auth basic|post, not {other:?}")),
                })
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok(config)
}

fn number(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not a whole number"))
}
