//! One worker of a mixed-language fleet (`tests/fleet/mixed.py`): the same
//! line protocol as the Node and Python hosts' fleet workers, so one test
//! drives workers in all three languages on one credential.
//!
//! `fleet_worker STORE CREDENTIAL API_URL` (STORE: a SQLite path or a
//! `postgres://` URL; the credential exists there, with settings and keys).
//! `REKEY_FLEET_LEASE_TTL_MS` sets the lease TTL. Prints `READY`; then each
//! stdin line `CALL` sends one GET to API_URL and prints `OK <status>` or
//! `ERR <kind>` (the contract's send-error case, kebab-case); `HOLD` takes
//! the credential's lease directly in the store (as a worker that dies right
//! after taking it leaves it), prints `HELD` and waits to be killed. EOF ends.

use rekey::{Category, Config, Error, HttpConfig, Lease, Record, Rekey, Request};
use std::io::{BufRead, Write};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [store_url, credential, api] = args.as_slice() else {
        anyhow::bail!("usage: fleet_worker STORE CREDENTIAL API_URL");
    };
    let ttl = Duration::from_millis(
        std::env::var("REKEY_FLEET_LEASE_TTL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000),
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let store = rekey::store::open(store_url)?;
    let rekey = Rekey::new(Config {
        lease_ttl: ttl,
        http: HttpConfig {
            total_timeout: ttl / 2,
            ..HttpConfig::default()
        },
        ..Config::default()
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "READY")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "CALL" => {
                let sent =
                    runtime.block_on(rekey.send(store.clone(), credential, Request::get(api)));
                match sent {
                    Ok(resp) => writeln!(out, "OK {}", resp.status)?,
                    Err(e) => writeln!(out, "ERR {}", kind(&e))?,
                }
            }
            "HOLD" => {
                let c = store.load(credential)?;
                let until_ms = rekey_now_ms() + ttl.as_millis() as u64;
                let record = Record {
                    lease: Some(Lease {
                        holder: format!("hold-{}", std::process::id()),
                        until_ms,
                    }),
                    refresh_mark: None,
                    ..c.record()
                };
                store.write_record(credential, c.version, &record)?;
                writeln!(out, "HELD")?;
                out.flush()?;
                loop {
                    std::thread::park();
                }
            }
            other => anyhow::bail!("unknown command {other:?}"),
        }
        out.flush()?;
    }
    Ok(())
}

/// The contract's name for what went wrong.
fn kind(e: &Error) -> &'static str {
    match e {
        Error::NotAuthenticated(_) => "not-authenticated",
        Error::ReauthorizationRequired { .. } => "reauthorization-required",
        Error::SettingsRejected { .. } => "settings-rejected",
        Error::TokenEndpoint(_) => "token-endpoint",
        Error::RefreshInDoubt(_) => "refresh-in-doubt",
        Error::RejectedAfterRefresh(_) => "rejected-after-refresh",
        Error::InsufficientScope { .. } => "insufficient-scope",
        Error::Transport(_) => "transport",
        Error::KeysNotPersisted(_) => "keys-not-persisted",
        Error::LeaseUnavailable(_) => "lease-unavailable",
        Error::StoreUnavailable(_) => "store-unavailable",
        Error::InvalidSettings(_) => "invalid-settings",
        Error::InvalidKeys(_) => "invalid-keys",
        _ if e.category() == Category::Store => "store-unavailable",
        _ => "host",
    }
}

fn rekey_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
