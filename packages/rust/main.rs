//! The packaged `rekey` crate used as a new project would use it: built in a
//! scratch cargo project (see packages/crates.sh), run against the testkit
//! provider. Calls across expiries with refresh-token rotation, then one
//! typed error; prints the component's SHA-256 and the provider's figures.
//!
//! Environment: REKEY_TESTKIT (the provider's binary), SMOKE_DIR (a private
//! scratch folder for the store).

use rekey::{Config, Error, KeyStore, Rekey, Request, Settings, SqliteStore, TokenSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::sync::Arc;

const EXPIRIES: usize = 3;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let testkit = std::env::var("REKEY_TESTKIT")?;
    let dir = std::env::var("SMOKE_DIR")?;
    // The provider prints one JSON line and lives until its stdin closes.
    let mut provider = Command::new(testkit)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(provider.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let info: serde_json::Value = serde_json::from_str(&line)?;
    let field = |k: &str| info[k].as_str().map(str::to_owned).ok_or(format!("no {k}"));
    let (base, api) = (field("base_url")?, field("api_url")?);

    let (token_url, client_id, client_secret) = (
        field("token_url")?,
        field("client_id")?,
        field("client_secret")?,
    );
    let api_origin = origin(&api);
    let first_token_response = admin(&base, "POST", "authorize")?;

    // ---- the README's Rust quick start (packages/crates.sh checks they are the same lines) ----
    let rekey = Rekey::new(Config::default())?; // compiles the embedded component once
    let store: Arc<dyn KeyStore> = Arc::new(SqliteStore::open(format!("{dir}/rekey.db"))?);
    let mut settings = Settings::new(token_url, client_id).with_secret(client_secret);
    settings.api_origins = vec![api_origin]; // where this credential's token may be sent
    let keys = TokenSet::import(&first_token_response)?; // the first token response
    store.put("crm", &settings, Some(&keys))?;

    let crm = rekey.credential(store.clone(), "crm"); // a handle: store and name once
    let resp = crm.send(Request::get(&format!("{api}me"))).await?;
    println!("{} {}", resp.status, resp.text()?);
    // ----

    let mut statuses = vec![resp.status];
    for _ in 0..EXPIRIES {
        admin(&base, "POST", "expire-access-tokens")?;
        statuses.push(crm.send(Request::get(&format!("{api}me"))).await?.status);
    }
    // A credential with no keys stored: the typed "please authenticate".
    store.put("new", &settings, None)?;
    let typed = match rekey
        .send(store.clone(), "new", Request::get(&format!("{api}me")))
        .await
    {
        Err(e @ Error::NotAuthenticated(_)) if e.needs_authorization() => {
            "no keys: not-authenticated"
        }
        Err(e) => {
            return Err(format!("unexpected error for a credential without keys: {e}").into());
        }
        Ok(r) => return Err(format!("a credential without keys answered {}", r.status).into()),
    };
    let stats: serde_json::Value = serde_json::from_str(&admin(&base, "GET", "stats")?)?;
    drop(provider.stdin.take());
    provider.wait()?;

    let count = |k: &str| stats[k].as_u64().unwrap_or(u64::MAX);
    let refreshes = count("refreshes_granted");
    println!(
        "rust: statuses {statuses:?}, refreshes {refreshes}, reused {}, invalid_grant {}, {typed}, component {}",
        count("reused_refresh_tokens"),
        count("invalid_grant"),
        rekey::cache::sha256_hex(rekey::GUEST_WASM)
    );
    let ok = statuses.iter().all(|s| *s == 200)
        && refreshes >= EXPIRIES as u64
        && count("reused_refresh_tokens") == 0
        && count("invalid_grant") == 0;
    if !ok {
        return Err("the smoke run did not hold".into());
    }
    Ok(())
}

fn origin(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    format!("{}://{host}", url.split("://").next().unwrap_or("http"))
}

/// One request to the provider's admin API (plain HTTP/1.1 on loopback).
fn admin(base: &str, method: &str, path: &str) -> Result<String, Box<dyn std::error::Error>> {
    let authority = origin(base).trim_start_matches("http://").to_owned();
    let mut conn = TcpStream::connect(&authority)?;
    write!(
        conn,
        "{method} /_testkit/{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("testkit {path}: {}", head.lines().next().unwrap_or("")).into());
    }
    Ok(body.to_owned())
}
