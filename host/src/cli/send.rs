//! `rekey send`: a curl-like request through the component.

use super::{Exit, Failure};
use rekey::{KeyStore, Request};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// The stored credential to use.
    credential: String,
    /// The URL to request.
    url: String,
    /// HTTP method (default GET, or POST with a body).
    #[arg(short = 'X', long = "request")]
    method: Option<String>,
    /// A request header, `Name: value`; repeatable. Any Authorization is replaced.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Request body; `@FILE` reads a file, `@-` standard input.
    #[arg(short = 'd', long = "data")]
    data: Option<String>,
    /// Print the status line and response headers before the body.
    #[arg(short = 'i', long = "include")]
    include: bool,
    /// Exit 22 and print nothing of the response when its status is 400 or
    /// above (like curl -f).
    #[arg(short = 'f', long = "fail")]
    fail: bool,
}

pub async fn run(
    store: Arc<dyn KeyStore>,
    cache_dir: Option<PathBuf>,
    args: Args,
) -> Result<Exit, Failure> {
    let body = match args.data.as_deref() {
        None => Vec::new(),
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map_err(|e| {
                Failure::new(
                    Exit::BadInput,
                    format!("cannot read the body from stdin: {e}"),
                )
            })?;
            buf
        }
        Some(d) => match d.strip_prefix('@') {
            Some(path) => std::fs::read(path).map_err(|e| {
                Failure::new(
                    Exit::BadInput,
                    format!("cannot read the body from {path}: {e}"),
                )
            })?,
            None => d.as_bytes().to_vec(),
        },
    };
    let method = args
        .method
        .unwrap_or_else(|| if args.data.is_some() { "POST" } else { "GET" }.into());
    let mut req = Request::new(&method, &args.url).body(body);
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| Failure::new(Exit::BadInput, "a header must look like `Name: value`"))?;
        req = req.header(name.trim(), value.trim());
    }
    if args.data.is_some()
        && !req
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }

    let rekey = super::rekey_for_one_call(cache_dir)?;
    let resp = rekey.send(store, &args.credential, req).await?;

    // As curl -f: an error status prints nothing but a line on stderr (a
    // script piping the output must not take an error page for data).
    if args.fail && resp.status >= 400 {
        eprintln!(
            "rekey: the server answered {} (--fail: the response is not printed)",
            status_line(resp.status).trim_start_matches("HTTP/1.1 ")
        );
        return Ok(Exit::HttpError);
    }
    let mut out = std::io::stdout().lock();
    if args.include {
        let _ = writeln!(out, "{}", status_line(resp.status));
        for (k, v) in &resp.headers {
            let _ = writeln!(out, "{k}: {v}");
        }
        let _ = writeln!(out);
    }
    let _ = out.write_all(&resp.body);
    let _ = out.flush();
    Ok(Exit::Ok)
}

/// `HTTP/1.1 200 OK`, as curl -i prints it (the reason phrase is the
/// standard one: the host does not keep the server's).
fn status_line(status: u16) -> String {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("HTTP/1.1 {status} {reason}").trim_end().to_owned()
}
