//! A token set's `instance_url` (Salesforce names the org's API host in its
//! token responses) through `rekey send`: its origin receives the token only
//! when it is https (or http on a literal loopback address) and matches one
//! of the credential's instance URL patterns. Any other `instance_url` is
//! ignored: it never widens or unbinds the credential (issue 20).
//!
//! The provider sends the `instance_url` in every token response; the places
//! a token must not reach are raw TCP listeners on other loopback addresses,
//! so "refused" is checked as "no connection was made", not only as an exit
//! code.

use crate::support::*;
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::thread::JoinHandle;
use std::time::Duration;

/// No token expires on its own during a scenario.
const TTL: Duration = Duration::from_secs(600);

/// Listeners on loopback addresses other than the provider's (127.0.0.1).
struct Sinks {
    /// `http://127.0.0.2:S`: the issue's `http://127.0.0.2/steal`.
    plain: TcpListener,
    /// `https://127.0.0.4:T`: an https origin no pattern names.
    other: TcpListener,
    /// `127.0.0.3:M`: what the instance pattern `http://127.0.0.3:M` names.
    instance: TcpListener,
}

impl Sinks {
    fn new() -> Sinks {
        let bind = |ip: &str| {
            let l = TcpListener::bind((ip, 0)).unwrap();
            // Polled once a send has exited: a connection it made is queued.
            l.set_nonblocking(true).unwrap();
            l
        };
        Sinks {
            plain: bind("127.0.0.2"),
            other: bind("127.0.0.4"),
            instance: bind("127.0.0.3"),
        }
    }

    fn instance_origin(&self) -> String {
        origin("http", &self.instance)
    }

    /// The credential's instance URL patterns: the instance, and the plain
    /// sink's address over https, so that an `http` instance_url there
    /// differs from an allowed pattern only in its scheme.
    fn patterns(&self) -> [String; 2] {
        [self.instance_origin(), origin("https", &self.plain)]
    }

    /// Where a token must not go unless an instance_url made it an origin
    /// of the credential: every sink, in every scheme a pattern names, with
    /// the listener that would see the connection.
    fn targets(&self) -> [(String, &TcpListener); 4] {
        [
            (
                format!("{}/steal", origin("http", &self.plain)),
                &self.plain,
            ),
            (
                format!("{}/steal", origin("https", &self.plain)),
                &self.plain,
            ),
            (
                format!("{}/steal", origin("https", &self.other)),
                &self.other,
            ),
            (
                format!("{}/services/data", self.instance_origin()),
                &self.instance,
            ),
        ]
    }
}

fn origin(scheme: &str, l: &TcpListener) -> String {
    format!("{scheme}://{}", l.local_addr().unwrap())
}

/// Whether no connection reached `l` (sends are over: any would be queued).
fn untouched(l: &TcpListener) -> bool {
    matches!(l.accept(), Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// A provider whose token responses carry this `instance_url` (none: no
/// such field), and two credentials added through the CLI, both refreshing
/// before every request: `bound` has the provider's API as its origin and
/// the sinks' instance patterns; `instance-only` has the patterns alone
/// (the credential without `--api-origin`).
async fn world(instance_url: Option<&str>, sinks: &Sinks) -> Fixture {
    let mut config = provider_with_ttl(TTL);
    if let Some(url) = instance_url {
        config
            .extra_token_fields
            .insert("instance_url".into(), json!(url));
    }
    let f = Fixture::new(config).await;
    let secret = f.dir.path().join("secret");
    std::fs::write(&secret, &f.provider.config().client_secret).unwrap();
    let [instance, https_plain] = sinks.patterns();
    let api = api_origin(&f.provider);
    let patterns = [
        "--instance-url-origin",
        &instance,
        "--instance-url-origin",
        &https_plain,
    ];
    for (name, origins) in [
        ("bound", &["--api-origin", &api][..]),
        ("instance-only", &[]),
    ] {
        let keys = f.dir.path().join(format!("{name}.json"));
        let first = f.provider.authorize();
        assert_eq!(
            first.get("instance_url").and_then(|v| v.as_str()),
            instance_url
        );
        std::fs::write(&keys, first.to_string()).unwrap();
        let token_url = f.provider.token_url();
        let mut args = vec![
            "credential",
            "add",
            name,
            "--token-url",
            &token_url,
            "--client-id",
            "rekey-demo",
            "--client-secret-file",
            secret.to_str().unwrap(),
            "--strategy",
            "every-request",
            "--keys",
            keys.to_str().unwrap(),
        ];
        args.extend_from_slice(origins);
        args.extend_from_slice(&patterns);
        let out = rekey_cli(&f.store_path(), &args);
        assert!(out.status.success(), "{name}: {}", all_output(&out));
    }
    f
}

/// The stored tokens of `name`, for "never printed" checks.
fn tokens(f: &Fixture, name: &str) -> [String; 2] {
    let keys = f.stored_keys(name);
    ["access_token", "refresh_token"].map(|k| str_field(&keys, k).to_owned())
}

/// (a)–(d): the `instance_url` is ignored. Every send to a sink is refused
/// before anything leaves (exit 2, naming the API origins), no sink sees a
/// connection, `instance-only` reaches nothing, and `bound` still reaches
/// its API origin, with the provider's `instance_url` kept in its keys.
async fn assert_ignored(instance_url: impl FnOnce(&Sinks) -> Option<String>) {
    let sinks = Sinks::new();
    let instance_url = instance_url(&sinks);
    let f = world(instance_url.as_deref(), &sinks).await;
    let store = f.store_path();
    let api = f.provider.api_url("me");

    let out = rekey_cli(&store, &["send", "bound", &api]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(f.provider.stats().refreshes_granted, 1);
    // The refresh's token response was stored whole, instance_url included.
    assert_eq!(
        f.stored_keys("bound")
            .get("instance_url")
            .and_then(|v| v.as_str()),
        instance_url.as_deref()
    );

    let before = f.provider.stats();
    for name in ["bound", "instance-only"] {
        let secrets = tokens(&f, name);
        let mut targets: Vec<_> = sinks.targets().map(|(url, l)| (url, Some(l))).into();
        if name == "instance-only" {
            // Not bound to the API either: the patterns alone allow nothing
            // (the provider's call count below says it was not reached).
            targets.push((api.clone(), None));
        }
        for (url, sink) in targets {
            let out = rekey_cli(&store, &["send", name, &url]);
            let all = all_output(&out);
            assert!(
                sink.is_none_or(untouched),
                "{name}: the send to {url} connected: {all}"
            );
            assert_eq!(out.status.code(), Some(2), "{name} {url}: {all}");
            assert!(all.contains("API origin"), "{name} {url}: {all}");
            for secret in &secrets {
                assert!(
                    !all.contains(secret.as_str()),
                    "{name}: a token was printed"
                );
            }
        }
    }
    let after = f.provider.stats();
    assert_eq!(
        (after.api_calls, after.token_calls),
        (before.api_calls, before.token_calls),
        "a refused send neither refreshes nor calls the API"
    );

    // Nothing was lost: `bound` still works, and is still bound.
    let out = rekey_cli(&store, &["send", "bound", &api]);
    assert!(out.status.success(), "{}", all_output(&out));
    let shown = rekey_cli(&store, &["credential", "show", "bound"]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(
        shown["settings"]["api_origins"],
        json!([api_origin(&f.provider)])
    );
}

/// (a) `http://` on a loopback address whose `https://` origin is an
/// instance pattern: a plain-http instance_url is not the https one.
#[tokio::test(flavor = "multi_thread")]
async fn an_http_instance_url_is_ignored() {
    assert_ignored(|s| Some(format!("{}/", origin("http", &s.plain)))).await;
}

/// (b) `https://`, but matching no instance pattern (as
/// `https://evil.example` against `https://*.my.salesforce.com`).
#[tokio::test(flavor = "multi_thread")]
async fn an_https_instance_url_matching_no_pattern_is_ignored() {
    assert_ignored(|s| Some(origin("https", &s.other))).await;
}

/// (c) Not a URL, though it names the instance pattern's host and port.
#[tokio::test(flavor = "multi_thread")]
async fn an_instance_url_that_is_not_a_url_is_ignored() {
    assert_ignored(|s| Some(s.instance.local_addr().unwrap().to_string())).await;
}

/// (d) No `instance_url` in the token responses: the patterns alone allow
/// nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_instance_url_leaves_the_credential_bound() {
    assert_ignored(|_| None).await;
}

/// Serves `n` connections on `l`, one at a time, answering each request
/// `200` with a body; returns each request's head.
fn serve(l: TcpListener, n: usize) -> JoinHandle<Vec<String>> {
    l.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        (0..n)
            .map(|_| {
                let (mut conn, _) = l.accept().unwrap();
                let mut head = Vec::new();
                let mut buf = [0; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).unwrap();
                    assert!(n > 0, "the request ended before its head did");
                    head.extend_from_slice(&buf[..n]);
                }
                let body = "the org's data";
                write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
                String::from_utf8_lossy(&head).into_owned()
            })
            .collect()
    })
}

/// (e) A matching `instance_url` adds exactly its own origin: the token goes
/// there (for `instance-only` too), and still nowhere else.
#[tokio::test(flavor = "multi_thread")]
async fn a_matching_instance_url_receives_the_token() {
    let sinks = Sinks::new();
    let instance = sinks.instance_origin();
    let f = world(Some(&instance), &sinks).await;
    let store = f.store_path();
    let url = format!("{instance}/services/data");
    let Sinks {
        plain,
        other,
        instance: listener,
    } = sinks;
    let server = serve(listener, 2);
    let mut sent = Vec::new();
    for name in ["bound", "instance-only"] {
        let out = rekey_cli(&store, &["send", name, &url]);
        assert!(out.status.success(), "{name}: {}", all_output(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "the org's data");
        // Every request refreshes first: the stored token is the one sent.
        sent.push(tokens(&f, name)[0].clone());
    }
    let heads = server.join().unwrap();
    for (head, token) in heads.iter().zip(&sent) {
        assert!(
            head.starts_with("GET /services/data HTTP/1.1\r\n"),
            "{head}"
        );
        let auth = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            })
            .map(|(_, v)| v.trim().to_owned());
        assert_eq!(auth, Some(format!("Bearer {token}")));
    }

    let rest = [
        (format!("{}/steal", origin("http", &plain)), &plain),
        (format!("{}/steal", origin("https", &plain)), &plain),
        (format!("{}/steal", origin("https", &other)), &other),
    ];
    for name in ["bound", "instance-only"] {
        for (url, sink) in &rest {
            let out = rekey_cli(&store, &["send", name, url]);
            let all = all_output(&out);
            assert!(
                untouched(sink),
                "{name}: the send to {url} connected: {all}"
            );
            assert_eq!(out.status.code(), Some(2), "{name} {url}: {all}");
        }
    }
}
