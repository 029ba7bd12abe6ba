//! The `rekey` binary as a user runs it: import, show, send, errors, and that
//! no secret is ever printed, even at the most verbose log level.

use crate::support::*;
use rekey::{KeyStore, SqliteStore};
use std::time::Duration;

/// No token expires on its own during a scenario: the provider's knob expires them.
const TTL: Duration = Duration::from_secs(600);

/// Adds credential `c` through the CLI from a token-response file.
fn cli_add(f: &Fixture, first: &serde_json::Value, extra: &[&str]) {
    let keys = f.dir.path().join("first.json");
    std::fs::write(&keys, first.to_string()).unwrap();
    let (url, id, secret) = (
        f.provider.token_url(),
        f.provider.config().client_id.clone(),
        f.provider.config().client_secret.clone(),
    );
    let origin = api_origin(&f.provider);
    let mut args = vec![
        "credential",
        "add",
        "c",
        "--token-url",
        &url,
        "--client-id",
        &id,
        "--client-secret",
        &secret,
        "--keys",
        keys.to_str().unwrap(),
    ];
    // Bound to the provider's API unless the test binds it itself.
    if !extra.iter().any(|a| a.ends_with("api-origin")) {
        args.extend_from_slice(&["--api-origin", &origin]);
    }
    args.extend_from_slice(extra);
    let out = rekey_cli(&f.store_path(), &args);
    assert!(out.status.success(), "{}", all_output(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_any_output_at_the_most_verbose_level() {
    let f = Fixture::new(provider_with_ttl(TTL)).await;
    let first = f.provider.authorize();
    cli_add(&f, &first, &["--client-auth", "post"]);
    let store = f.store_path();
    // `-vv` is the CLI's most verbose level (everything but the compiler's passes).
    let verbose: &[(&str, &str)] = &[];

    let mut outputs = Vec::new();
    for args in [
        &["credential", "show", "c"][..],
        &["credential", "list"],
        &["-vv", "send", "-i", "c"],
    ] {
        let mut args = args.to_vec();
        let url = f.provider.api_url("me");
        if args.contains(&"send") {
            f.provider.expire_access_tokens();
            args.push(&url);
        }
        let out = rekey_cli_env(&store, &args, verbose);
        assert!(out.status.success(), "{args:?}: {}", all_output(&out));
        outputs.push(all_output(&out));
    }
    // A failing refresh, verbosely: the error path must not leak either.
    f.provider
        .force_token_responses([(400, r#"{"error":"invalid_grant"}"#.into())]);
    f.provider.expire_access_tokens();
    let out = rekey_cli_env(
        &store,
        &["-vv", "send", "c", &f.provider.api_url("me")],
        verbose,
    );
    assert_eq!(out.status.code(), Some(3), "{}", all_output(&out));
    outputs.push(all_output(&out));

    let stored = f.stored_keys("c");
    assert_ne!(
        stored["access_token"], first["access_token"],
        "a refresh happened"
    );
    let secrets = [
        str_field(&first, "access_token"),
        str_field(&first, "refresh_token"),
        str_field(&first, "id_token"),
        str_field(&stored, "access_token"),
        str_field(&stored, "refresh_token"),
        &f.provider.config().client_secret,
    ];
    let all = outputs.concat();
    assert!(all.contains("TRACE"), "trace logging was on");
    assert!(
        all.contains("keys persisted"),
        "rekey's own events were logged"
    );
    for secret in secrets {
        assert!(!all.contains(secret), "a secret leaked into CLI output");
    }
    assert!(outputs[0].contains("[redacted]"));
}

#[tokio::test(flavor = "multi_thread")]
async fn send_prints_the_response_and_refreshes_through_the_cli() {
    let f = Fixture::new(provider_with_ttl(TTL)).await;
    let first = f.provider.authorize();
    cli_add(&f, &first, &["--strategy", "every-request"]);
    let out = rekey_cli(
        &f.store_path(),
        &[
            "send",
            "c",
            &f.provider.api_url("orders"),
            "-d",
            "{\"n\":1}",
            "-H",
            "Content-Type: application/json",
        ],
    );
    assert!(out.status.success(), "{}", all_output(&out));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            body["ok"].as_bool(),
            body["method"].as_str(),
            body["bytes"].as_u64()
        ),
        (Some(true), Some("POST"), Some(7))
    );
    assert_eq!(f.provider.stats().refreshes_granted, 1);

    let out = rekey_cli(
        &f.store_path(),
        &["send", "--fail", "c", &f.provider.api_url("reject")],
    );
    assert_eq!(out.status.code(), Some(5), "{}", all_output(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("with a freshly refreshed token"));
}

/// Proxies from the environment are not used: `http_proxy` would otherwise
/// carry the bearer token, refresh token and client secret to whatever
/// listens there.
#[tokio::test(flavor = "multi_thread")]
async fn proxy_variables_do_not_carry_tokens_away() {
    let f = Fixture::new(provider_with_ttl(TTL)).await;
    let first = f.provider.authorize();
    cli_add(&f, &first, &["--strategy", "every-request"]);
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let proxy = format!("http://{}", trap.local_addr().unwrap());
    let vars: Vec<(&str, &str)> = [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ]
    .into_iter()
    .map(|v| (v, proxy.as_str()))
    .collect();
    let out = rekey_cli_env(
        &f.store_path(),
        &["send", "c", &f.provider.api_url("me")],
        &vars,
    );
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        f.provider.stats().refreshes_granted,
        1,
        "the refresh went to the provider"
    );
    assert!(
        trap.accept().is_err(),
        "rekey connected to the proxy from the environment"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn environment_secrets_are_read_at_call_time() {
    let f = Fixture::new(provider_with_ttl(TTL)).await;
    let first = f.provider.authorize();
    let keys = f.dir.path().join("first.json");
    std::fs::write(&keys, first.to_string()).unwrap();
    let out = rekey_cli(
        &f.store_path(),
        &[
            "credential",
            "add",
            "c",
            "--token-url",
            &f.provider.token_url(),
            "--client-id",
            "rekey-demo",
            "--client-secret-env",
            "MY_APP_SECRET",
            "--strategy",
            "every-request",
            "--api-origin",
            &api_origin(&f.provider),
            "--keys",
            keys.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", all_output(&out));
    let url = f.provider.api_url("me");
    let out = rekey_cli(&f.store_path(), &["send", "c", &url]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "a missing secret variable is a settings problem"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("MY_APP_SECRET"));
    let out = rekey_cli_env(
        &f.store_path(),
        &["send", "c", &url],
        &[("MY_APP_SECRET", "demo-client-secret")],
    );
    assert!(out.status.success(), "{}", all_output(&out));
    let stored = SqliteStore::open(f.store_path())
        .unwrap()
        .load("c")
        .unwrap();
    let settings_json = serde_json::to_string(&stored.settings).unwrap();
    assert!(
        !settings_json.contains("demo-client-secret"),
        "the store never held the secret"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let f = Fixture::new(provider_with_ttl(TTL)).await;
    let store = f.store_path();
    let dir = f.dir.path();
    let add = |keys: &std::path::Path| {
        rekey_cli(
            &store,
            &[
                "credential",
                "add",
                "c",
                "--token-url",
                "http://127.0.0.1:9/token",
                "--client-id",
                "x",
                "--api-origin",
                "http://127.0.0.1:9",
                "--keys",
                keys.to_str().unwrap(),
            ],
        )
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // Malformed token JSON: says where, never echoes it.
    let malformed = dir.join("malformed.json");
    std::fs::write(&malformed, r#"{"access_token": "at_SECRET_PART"#).unwrap();
    let out = add(&malformed);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unusable") && stderr(&out).contains("line 1"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("at_SECRET_PART"));

    // Valid JSON without any token.
    let tokenless = dir.join("tokenless.json");
    std::fs::write(&tokenless, r#"{"token_type":"Bearer"}"#).unwrap();
    let out = add(&tokenless);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("neither access_token nor refresh_token"));

    // A missing keys file.
    let out = add(&dir.join("absent.json"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read keys"));
    assert!(
        SqliteStore::open(&store)
            .unwrap()
            .list()
            .unwrap()
            .is_empty(),
        "nothing was stored"
    );

    // An unknown credential.
    let out = rekey_cli(&store, &["send", "nobody", "http://127.0.0.1:9/"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no credential named \"nobody\""),
        "{}",
        stderr(&out)
    );

    // A store file that is not a database is reported, not overwritten.
    let garbage = dir.join("garbage.db");
    let bytes: Vec<u8> = (0..16_384u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&garbage, &bytes).unwrap();
    let out = rekey_cli(&garbage, &["credential", "list"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr(&out).contains("not a database"), "{}", stderr(&out));
    assert_eq!(std::fs::read(&garbage).unwrap(), bytes);

    // A credential without keys: please authenticate.
    let out = rekey_cli(
        &store,
        &[
            "credential",
            "add",
            "c",
            "--token-url",
            "http://127.0.0.1:9/token",
            "--client-id",
            "x",
            "--api-origin",
            "http://127.0.0.1:9",
        ],
    );
    assert!(out.status.success());
    let out = rekey_cli(&store, &["send", "c", "http://127.0.0.1:9/"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("please authenticate"));
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_can_be_listed_shown_and_removed() {
    let f = Fixture::new(provider_with_ttl(TTL)).await;
    let first = f.provider.authorize();
    cli_add(
        &f,
        &first,
        &[
            "--scope",
            "api",
            "--param",
            "format=json",
            "--strategy",
            "before-expiry",
            "--expiry-margin",
            "30",
        ],
    );
    let out = rekey_cli(&f.store_path(), &["credential", "show", "c"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["settings"]["strategy"], "before-expiry");
    assert_eq!(shown["settings"]["grant"], "refresh-token");
    assert_eq!(shown["settings"]["expiry_margin_secs"], 30);
    assert_eq!(shown["settings"]["extra_params"][0][1], "json");
    assert_eq!(shown["settings"]["client_secret"], "[redacted]");
    assert_eq!(shown["keys"]["refresh_token"], "[redacted]");
    assert_eq!(shown["keys"]["scope"], "api");
    // `show` lists every setting the store keeps, no more, no fewer.
    // (`grant` is stored only when it is not the default; show says it always.)
    let mut every = rekey::Settings::new("http://x/token", "id");
    every.grant = rekey::settings::Grant::ClientCredentials;
    let kept = serde_json::to_value(every).unwrap();
    let names = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&shown["settings"]), names(&kept));
    let out = rekey_cli(&f.store_path(), &["credential", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("c\t"));
    assert!(
        rekey_cli(&f.store_path(), &["credential", "remove", "c"])
            .status
            .success()
    );
    assert_eq!(
        rekey_cli(&f.store_path(), &["credential", "remove", "c"])
            .status
            .code(),
        Some(2)
    );
}

/// Hostile or careless input to `credential add|set` and `send` gets a clear
/// error (exit 2) before anything is stored or sent, and loses nothing.
#[tokio::test(flavor = "multi_thread")]
async fn credential_input_is_checked_and_keys_are_never_replaced_silently() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    let store = f.store_path();
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let add = |name: &str, token_url: &str| {
        rekey_cli(
            &store,
            &[
                "credential",
                "add",
                name,
                "--token-url",
                token_url,
                "--client-id",
                "x",
                "--api-origin",
                "https://api.example.com",
            ],
        )
    };
    // Names: no empty ones, no control characters, no escape sequences.
    for name in ["", "a\nb", "\u{1b}[31mred", "../x", &"n".repeat(65)] {
        let out = add(name, "https://idp.example/token");
        assert_eq!(out.status.code(), Some(2), "{name:?}: {}", stderr(&out));
    }
    // The token URL rules hold at `add`, not first at `send`.
    for url in [
        "http://idp.example/token",
        "http://192.0.2.2:18081\\@127.0.0.1/token",
        "ftp://idp.example/token",
        "token",
    ] {
        let out = add("c", url);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        assert!(stderr(&out).contains("token URL"), "{}", stderr(&out));
    }
    let out = rekey_cli(
        &store,
        &[
            "credential",
            "add",
            "c",
            "--token-url",
            "https://idp.example/token",
            "--client-id",
            "x",
            "--api-origin",
            "https://api.example.com",
            "--param",
            "grant_type=password",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        SqliteStore::open(&store)
            .unwrap()
            .list()
            .unwrap()
            .is_empty(),
        "nothing was stored"
    );

    // A stored credential whose keys rotated: `add` of the same name is
    // refused, so the original file cannot replace the live refresh token.
    cli_add(
        &f,
        &f.provider.authorize(),
        &["--strategy", "every-request"],
    );
    let out = rekey_cli(&store, &["send", "c", &f.provider.api_url("me")]);
    assert!(out.status.success(), "{}", all_output(&out));
    let rotated = f.stored_raw("c");
    let first = f.dir.path().join("first.json");
    let out = rekey_cli(
        &store,
        &[
            "credential",
            "add",
            "c",
            "--token-url",
            &f.provider.token_url(),
            "--client-id",
            "rekey-demo",
            "--keys",
            first.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("credential set"), "{}", stderr(&out));
    assert_eq!(f.stored_raw("c"), rotated, "the stored keys are untouched");

    // `set` changes only what it names: the secret, strategy and keys stay.
    let secret_file = f.dir.path().join("secret");
    std::fs::write(
        &secret_file,
        format!("{}\n", f.provider.config().client_secret),
    )
    .unwrap();
    let out = rekey_cli(
        &store,
        &[
            "credential",
            "set",
            "c",
            "--scope",
            "api",
            "--client-secret-file",
            secret_file.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let c = SqliteStore::open(&store).unwrap().load("c").unwrap();
    assert_eq!(c.settings.scope.as_deref(), Some("api"));
    assert_eq!(c.settings.strategy, rekey::Strategy::EveryRequest);
    assert!(c.settings.client_secret.is_some());
    assert_eq!((c.keys, c.version), rotated);
    let out = rekey_cli(&store, &["send", "c", &f.provider.api_url("me")]);
    assert!(
        out.status.success(),
        "the secret from the file works: {}",
        all_output(&out)
    );

    // Requests that cannot be sent: exit 2, nothing sent.
    let calls = f.provider.stats().api_calls;
    let big = f.dir.path().join("big");
    std::fs::write(&big, vec![b'x'; 9 * 1024 * 1024]).unwrap();
    let body = format!("@{}", big.display());
    for args in [
        vec!["send", "c", "http://127.0.0.1:9/", "-X", "GET\nX"],
        vec!["send", "c", "not a url"],
        vec!["send", "c", &f.provider.api_url("me"), "-d", &body],
    ] {
        let out = rekey_cli(&store, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    let out = rekey_cli(
        &store,
        &["send", "c", &f.provider.api_url("me"), "-d", &body],
    );
    assert!(
        stderr(&out).contains("request too large"),
        "{}",
        stderr(&out)
    );
    assert_eq!(f.provider.stats().api_calls, calls, "nothing was sent");
}

/// A credential bound to API origins sends its token nowhere else: a request
/// to another origin is refused (exit 2) before anything leaves.
#[tokio::test(flavor = "multi_thread")]
async fn a_bound_credential_sends_its_token_only_to_its_origins() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    let api = f.provider.api_url("me");
    let origin = api.trim_end_matches("/api/me").to_owned();
    cli_add(&f, &f.provider.authorize(), &["--api-origin", &origin]);
    let out = rekey_cli(&f.store_path(), &["send", "c", &api]);
    assert!(out.status.success(), "{}", all_output(&out));

    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let elsewhere = format!("http://{}/steal", trap.local_addr().unwrap());
    let calls = f.provider.stats().api_calls;
    for url in [elsewhere.as_str(), "https://evil.example/me"] {
        let out = rekey_cli(&f.store_path(), &["send", "c", url]);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", all_output(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not an API origin"),
            "{}",
            all_output(&out)
        );
    }
    assert!(trap.accept().is_err(), "nothing reached the other origin");
    assert_eq!(f.provider.stats().api_calls, calls);

    // "Any origin" is explicit: stored as `*`, with a warning.
    let out = rekey_cli(
        &f.store_path(),
        &["credential", "set", "c", "--any-api-origin"],
    );
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("any https origin"),
        "{}",
        all_output(&out)
    );
    let out = rekey_cli(&f.store_path(), &["credential", "show", "c"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["settings"]["api_origins"], serde_json::json!(["*"]));

    // RFC 9207 by hand, for an issuer whose metadata is not discovered.
    for (flag, sends) in [("true", true), ("false", false)] {
        let out = rekey_cli(
            &f.store_path(),
            &[
                "credential",
                "set",
                "c",
                "--issuer-sends-iss",
                flag,
                "--authorization-url",
                "https://idp.example/authorize",
            ],
        );
        assert!(out.status.success(), "{}", all_output(&out));
        let stored: serde_json::Value = rusqlite::Connection::open(f.store_path())
            .unwrap()
            .query_row(
                "SELECT settings FROM credentials WHERE name = 'c'",
                [],
                |row| row.get::<_, String>(0),
            )
            .map(|s| serde_json::from_str(&s).unwrap())
            .unwrap();
        assert_eq!(
            stored
                .get("issuer_sends_iss")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            sends,
            "{stored}"
        );
    }
}

/// Bound by default (issue 20): `add` without an API origin, or with a
/// wildcard at a public suffix, is refused (exit 2, naming the fix) and
/// stores nothing, its keys included; `--any-api-origin` is the explicit way
/// out, with a warning; a refused `set` keeps what was stored.
#[tokio::test(flavor = "multi_thread")]
async fn an_unbound_or_too_wide_credential_is_refused_and_nothing_is_stored() {
    let f = Fixture::new(provider_with_ttl(TTL)).await;
    let store = f.store_path();
    let keys = f.dir.path().join("first.json");
    std::fs::write(&keys, f.provider.authorize().to_string()).unwrap();
    let secret = f.dir.path().join("secret");
    std::fs::write(&secret, &f.provider.config().client_secret).unwrap();
    let token_url = f.provider.token_url();
    let origin = api_origin(&f.provider);
    let add = |name: &str, binding: &[&str]| {
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
            "--keys",
            keys.to_str().unwrap(),
        ];
        args.extend_from_slice(binding);
        rekey_cli(&store, &args)
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let stored = || -> Vec<String> {
        let out = rekey_cli(&store, &["credential", "list"]);
        assert!(out.status.success(), "{}", all_output(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };

    // Unbound: the message names both ways to fix it.
    let out = add("c", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    for fix in ["--api-origin", "--any-api-origin"] {
        assert!(stderr(&out).contains(fix), "{fix}: {}", stderr(&out));
    }
    assert_eq!(stored(), Vec::<String>::new(), "nothing was stored");

    // Wildcards at a public suffix match sites of unrelated owners, as API
    // origins or as instance URL patterns, alone or beside a good origin.
    for binding in [
        &["--api-origin", "https://*.co.uk"][..],
        &["--api-origin", "https://*.com"],
        &["--api-origin", &origin, "--api-origin", "https://*.co.uk"],
        &[
            "--api-origin",
            &origin,
            "--instance-url-origin",
            "https://*.com",
        ],
    ] {
        let out = add("c", binding);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{binding:?}: {}",
            all_output(&out)
        );
        let bad = binding.iter().find(|b| b.contains('*')).unwrap();
        assert!(
            stderr(&out).contains(&format!("{bad:?}")) && stderr(&out).contains("wildcard"),
            "{binding:?}: the refusal names the pattern: {}",
            stderr(&out)
        );
        assert_eq!(
            stored(),
            Vec::<String>::new(),
            "{binding:?}: nothing stored"
        );
    }
    assert!(
        SqliteStore::open(&store)
            .unwrap()
            .list()
            .unwrap()
            .is_empty(),
        "the store holds no record"
    );

    // A wildcard under a registrable domain is fine, without a warning.
    let out = add("narrow", &["--api-origin", "https://*.example.co.uk"]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(stderr(&out), "", "no warning for a bound credential");

    // Any origin, said explicitly: accepted, warned about, and it works.
    let out = add("any", &["--any-api-origin"]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(
        stderr(&out).contains("warning") && stderr(&out).contains("any https origin"),
        "{}",
        stderr(&out)
    );
    let names: Vec<_> = stored()
        .iter()
        .map(|l| l.split('\t').next().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["any", "narrow"]);
    let out = rekey_cli(&store, &["send", "any", &f.provider.api_url("me")]);
    assert!(out.status.success(), "{}", all_output(&out));

    // `set` holds the same rules, and a refused `set` changes nothing.
    let before = SqliteStore::open(&store).unwrap().load("narrow").unwrap();
    for binding in [
        &["--api-origin", "https://*.co.uk"][..],
        &["--api-origin", "https://*.com"],
        &["--instance-url-origin", "https://*.co.uk"],
    ] {
        let mut args = vec!["credential", "set", "narrow"];
        args.extend_from_slice(binding);
        let out = rekey_cli(&store, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{binding:?}: {}",
            all_output(&out)
        );
    }
    let after = SqliteStore::open(&store).unwrap().load("narrow").unwrap();
    assert_eq!(
        (
            after.settings.api_origins,
            after.settings.instance_url_origins,
            after.version
        ),
        (
            before.settings.api_origins,
            before.settings.instance_url_origins,
            before.version
        )
    );
}

/// The README's first command: the demo runs every strategy through the
/// embedded provider and says nothing failed (it exits non-zero otherwise).
#[test]
fn the_demo_runs_clean() {
    let cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(rekey_bin())
        .arg("demo")
        .env("XDG_CACHE_HOME", cache.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", all_output(&out));
    assert!(printed.contains("(0 failed)"), "{printed}");
    assert!(printed.contains("please authenticate"), "{printed}");
}
