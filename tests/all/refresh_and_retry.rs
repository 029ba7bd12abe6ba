//! The routine end to end: real host, real guest, real HTTP on loopback, a
//! real SQLite file. Each scenario checks what the provider and the store saw.

use crate::support::*;
use rekey::{ClientAuth, Config, Error, HttpConfig, KeyStore, Request, Strategy, TransportError};
use rekey_testkit::ProviderConfig;
use serde_json::json;
use std::time::Duration;

/// Long enough that no token expires on its own during a scenario, however
/// loaded the machine: a scenario expires them with the provider's knob, at
/// the step it means to (no sleeping, no race with the clock).
const LONG: Duration = Duration::from_secs(600);

#[tokio::test(flavor = "multi_thread")]
async fn on_401_refreshes_persists_and_retries_once() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(600))).await;
    let first = f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));

    let resp = f.get("c", "me").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(f.events.take(), ["api Ok(200)"]);

    f.provider.expire_access_tokens();
    let resp = f.get("c", "me").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(
        f.events.take(),
        [
            "api Ok(401)",
            "lease",
            "token Ok(200)",
            "persisted rotated=true",
            "api Ok(200)"
        ]
    );
    let stats = f.provider.stats();
    assert_eq!(
        (stats.api_calls, stats.api_unauthorized, stats.token_calls),
        (3, 1, 1)
    );
    let stored = f.stored_keys("c");
    assert_ne!(
        str_field(&stored, "refresh_token"),
        str_field(&first, "refresh_token")
    );
    assert!(
        f.provider
            .refresh_token_is_live(str_field(&stored, "refresh_token"))
    );
    assert_eq!(f.stored_raw("c").1, WRITES_PER_REFRESH);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_refreshes_before_each_call() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
    for _ in 0..3 {
        let resp = f.get("c", "me").await.unwrap();
        assert_eq!(resp.status, 200);
    }
    let stats = f.provider.stats();
    assert_eq!(
        (stats.token_calls, stats.api_calls, stats.api_unauthorized),
        (3, 3, 0)
    );
    assert_eq!(f.stored_raw("c").1, 3 * WRITES_PER_REFRESH);
}

#[tokio::test(flavor = "multi_thread")]
async fn before_expiry_refreshes_inside_the_margin_without_a_401() {
    let ttl = Duration::from_secs(3);
    let f = Fixture::new(provider_with_ttl(ttl)).await;
    let mut settings = f.settings(Strategy::BeforeExpiry, ClientAuth::Basic);
    settings.expiry_margin_secs = 2;
    f.add_credential("c", &settings);

    f.get("c", "me").await.unwrap();
    assert_eq!(f.provider.stats().token_calls, 0, "fresh token: no refresh");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    f.get("c", "me").await.unwrap();
    let stats = f.provider.stats();
    assert_eq!(
        (stats.token_calls, stats.api_calls, stats.api_unauthorized),
        (1, 2, 0)
    );
    assert!(f.stored_keys("c")["expires_at"].as_u64().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_leaves_the_last_refresh_token_in_the_store() {
    let f = Fixture::new(provider_with_ttl(LONG)).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Post));
    for _ in 0..4 {
        f.provider.expire_access_tokens();
        f.get("c", "me").await.unwrap();
    }
    let stats = f.provider.stats();
    assert_eq!(stats.refreshes_granted, 4);
    assert_eq!((stats.reused_refresh_tokens, stats.invalid_grant), (0, 0));
    assert!(
        f.provider
            .refresh_token_is_live(str_field(&f.stored_keys("c"), "refresh_token"))
    );
    assert_eq!(f.stored_raw("c").1, 4 * WRITES_PER_REFRESH);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_without_refresh_token_keeps_the_old_one_and_every_other_field() {
    let mut config = provider_with_ttl(LONG);
    config.rotate_refresh_tokens = false;
    config
        .extra_token_fields
        .insert("instance_url".into(), json!("https://eu42.example"));
    let f = Fixture::new(config).await;
    let first = f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    f.provider.omit_refresh_token(true);

    f.provider.expire_access_tokens();
    f.get("c", "me").await.unwrap();
    let stored = f.stored_keys("c");
    assert_ne!(stored["access_token"], first["access_token"]);
    assert_eq!(stored["refresh_token"], first["refresh_token"]);
    assert_eq!(
        stored["id_token"], first["id_token"],
        "fields the response lacks are kept"
    );
    assert_eq!(stored["instance_url"], "https://eu42.example");
    assert_eq!(stored["scope"], "api");
    assert_eq!(
        f.events.take().last().map(String::as_str),
        Some("api Ok(200)")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_again_after_a_fresh_token_fails_without_looping() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let err = f.get("c", "reject").await.unwrap_err();
    match &err {
        Error::RejectedAfterRefresh(resp) => assert_eq!(resp.status, 401),
        other => panic!("expected rejected-after-refresh, got {other}"),
    }
    assert_eq!(err.category(), rekey::Category::RejectedByApi);
    let stats = f.provider.stats();
    assert_eq!((stats.api_calls, stats.token_calls), (2, 1));
}

/// A URL that always answers 401 costs one refresh, not one per call: a
/// token minted moments ago is not refreshed again (no refresh storm).
#[tokio::test(flavor = "multi_thread")]
async fn a_url_that_always_answers_401_costs_at_most_one_refresh() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    for _ in 0..5 {
        let err = f.get("c", "reject").await.unwrap_err();
        assert!(matches!(err, Error::RejectedAfterRefresh(_)), "{err}");
    }
    let stats = f.provider.stats();
    assert_eq!((stats.api_calls, stats.token_calls), (6, 1));
    // The token is still good where it is allowed.
    assert_eq!(f.get("c", "me").await.unwrap().status, 200);
}

/// A token that lacks scope is not an expired one: no refresh, a typed error
/// naming the scope the API wants.
#[tokio::test(flavor = "multi_thread")]
async fn insufficient_scope_is_reported_without_a_refresh() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let err = f.get("c", "scoped").await.unwrap_err();
    match &err {
        Error::InsufficientScope { scope, response } => {
            assert_eq!(scope.as_deref(), Some("api admin"));
            assert_eq!(response.status, 401);
        }
        other => panic!("expected insufficient scope, got {other}"),
    }
    assert_eq!(err.category(), rekey::Category::RejectedByApi);
    let stats = f.provider.stats();
    assert_eq!((stats.api_calls, stats.token_calls), (1, 0));
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_grant_asks_for_reauthorisation_and_keeps_the_keys() {
    let f = Fixture::new(provider_with_ttl(LONG)).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let before = f.stored_raw("c");
    f.provider.force_token_responses([(
        400,
        r#"{"error":"invalid_grant","error_description":"grant revoked"}"#.into(),
    )]);

    f.provider.expire_access_tokens();
    let err = f.get("c", "me").await.unwrap_err();
    assert!(
        matches!(&err, Error::ReauthorizationRequired { status: 400, code } if code == "invalid_grant"),
        "{err}"
    );
    assert!(err.needs_authorization());
    assert!(err.to_string().contains("re-authorisation needed"));
    assert!(
        !err.to_string().contains("grant revoked"),
        "provider text is not carried"
    );
    let stats = f.provider.stats();
    assert_eq!(
        (stats.token_calls, stats.api_calls),
        (1, 1),
        "no retry of a 4xx, no resend"
    );
    assert_eq!(f.stored_raw("c").0, before.0, "the keys are untouched");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_endpoint_5xx_is_retried_and_4xx_is_not() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::EveryRequest, ClientAuth::Basic));

    f.provider.force_token_responses([(503, String::new())]);
    let resp = f.get("c", "me").await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(f.provider.stats().token_calls, 2);

    f.provider
        .force_token_responses([(400, "bad request".into())]);
    let err = f.get("c", "me").await.unwrap_err();
    assert!(matches!(err, Error::TokenEndpoint(_)), "{err}");
    assert_eq!(f.provider.stats().token_calls, 3);

    // 503 and 429 say the request was not processed: backoff, 3 attempts.
    f.provider.force_token_responses([
        (503, String::new()),
        (429, String::new()),
        (503, String::new()),
    ]);
    let err = f.get("c", "me").await.unwrap_err();
    assert!(err.to_string().contains("3 attempts"), "{err}");
    assert_eq!(f.provider.stats().token_calls, 6);

    // A 500 may have rotated the token: one prompt retry, then in doubt.
    f.provider
        .force_token_responses([(500, String::new()), (502, String::new())]);
    let err = f.get("c", "me").await.unwrap_err();
    assert!(matches!(err, Error::RefreshInDoubt(_)), "{err}");
    assert_eq!(f.provider.stats().token_calls, 8);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_provider_checks_each_client_authentication_method() {
    use rekey_testkit::ClientAuth as Required;
    for (required, method, other) in [
        (Required::Basic, ClientAuth::Basic, ClientAuth::Post),
        (Required::Post, ClientAuth::Post, ClientAuth::Basic),
    ] {
        let mut config = provider_with_ttl(Duration::from_secs(60));
        config.client_auth = Some(required);
        let f = Fixture::new(config).await;
        f.add_credential("right", &f.settings(Strategy::EveryRequest, method));
        f.add_credential("wrong", &f.settings(Strategy::EveryRequest, other));

        f.get("right", "me").await.unwrap();
        let err = f.get("wrong", "me").await.unwrap_err();
        assert!(
            matches!(&err, Error::SettingsRejected { code, .. } if code == "invalid_client"),
            "{err}"
        );
        let stats = f.provider.stats();
        assert_eq!((stats.basic_auth_calls, stats.post_auth_calls), (1, 1));
        assert_eq!(stats.refreshes_granted, 1, "{method:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_and_extra_parameters_reach_the_token_endpoint() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    let mut settings = f.settings(Strategy::EveryRequest, ClientAuth::Basic);
    settings.scope = Some("api offline_access".into());
    settings.extra_params = vec![("format".into(), "json".into())];
    f.add_credential("c", &settings);
    f.get("c", "me").await.unwrap();
    let form = f.provider.last_token_form();
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("grant_type"), Some("refresh_token"));
    assert_eq!(get("scope"), Some("api offline_access"));
    assert_eq!(get("format"), Some("json"));
    assert_eq!(
        get("client_secret"),
        None,
        "basic auth keeps the secret out of the body"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_body_arrives_byte_identical_on_the_retry() {
    let f = Fixture::new(provider_with_ttl(LONG)).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let body: Vec<u8> = (0..65_536u32).map(|i| (i * 31 % 256) as u8).collect();
    f.provider.expire_access_tokens();
    let req = Request::new("POST", &f.provider.api_url("upload"))
        .header("content-type", "application/octet-stream")
        .body(body.clone());
    f.rekey.send(f.store_dyn(), "c", req).await.unwrap();
    let log = f.provider.api_log();
    assert_eq!(log.len(), 2);
    assert!(!log[0].authorized && log[1].authorized);
    assert!(log.iter().all(|r| r.method == "POST" && r.body == body));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_keys_write_stops_before_the_retry_and_keeps_the_old_keys() {
    let f = Fixture::with(
        provider_with_ttl(LONG),
        Config::default(),
        Duration::from_secs(5),
    )
    .await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let before = f.stored_raw("c");
    // The store refuses exactly the write of new keys (leases still work),
    // the way a full disk or a revoked grant on the database would.
    sql(
        &f.store_path(),
        "CREATE TRIGGER refuse BEFORE UPDATE ON credentials WHEN NEW.keys IS NOT OLD.keys BEGIN SELECT RAISE(ABORT, 'disk quota exceeded'); END",
    );

    f.provider.expire_access_tokens();
    let err = f.get("c", "me").await.unwrap_err();
    assert!(matches!(err, Error::KeysNotPersisted(_)), "{err}");
    assert!(
        err.to_string().contains("not retried") && err.to_string().contains("disk quota exceeded"),
        "{err}"
    );
    let stats = f.provider.stats();
    assert_eq!(
        (stats.api_calls, stats.token_calls),
        (1, 1),
        "the request was not resent"
    );
    assert_eq!(f.stored_raw("c").0, before.0, "the keys are untouched");
    assert!(f.events.take().contains(&"not persisted".to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_another_process_has_locked_spends_nothing() {
    let f = Fixture::with(
        provider_with_ttl(LONG),
        Config::default(),
        Duration::from_millis(200),
    )
    .await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let before = f.stored_raw("c");

    // Another process holds the write lock for the whole call: no lease can
    // be taken, so the refresh token is not spent at all.
    let blocker = hold_write_lock(&f.store_path());
    f.provider.expire_access_tokens();
    let err = f.get("c", "me").await.unwrap_err();
    drop(blocker);

    assert!(matches!(err, Error::StoreUnavailable(_)), "{err}");
    assert!(err.to_string().contains("locked"), "{err}");
    let stats = f.provider.stats();
    assert_eq!((stats.api_calls, stats.token_calls), (1, 0));
    assert_eq!(f.stored_raw("c").0, before.0, "the keys are untouched");
}

/// Runs SQL on the store from another process (python's sqlite3).
pub(crate) fn sql(path: &std::path::Path, statement: &str) {
    let status = std::process::Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()"])
        .arg(path)
        .arg(statement)
        .status()
        .expect("python3");
    assert!(status.success());
}

/// Holds SQLite's write lock on `path` from a second connection until dropped.
fn hold_write_lock(path: &std::path::Path) -> impl Drop + use<> {
    struct Held(std::process::Child);
    impl Drop for Held {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    // A second process, as in production: `sqlite3`-free, via python's stdlib.
    let child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,time\n\
             c=sqlite3.connect(sys.argv[1],isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked',flush=True)\n\
             time.sleep(60)",
        ])
        .arg(path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 holds the lock");
    let mut child = Held(child);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.0.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

#[tokio::test(flavor = "multi_thread")]
async fn no_keys_means_please_authenticate() {
    let f = Fixture::new(provider_with_ttl(LONG)).await;
    f.store
        .put(
            "c",
            &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic),
            None,
        )
        .unwrap();
    let err = f.get("c", "me").await.unwrap_err();
    assert!(matches!(err, Error::NotAuthenticated(_)));
    assert!(err.to_string().contains("please authenticate"));
    assert_eq!(f.provider.stats().api_calls, 0);

    let err = f.get("nobody", "me").await.unwrap_err();
    assert!(
        err.to_string().contains("no credential named \"nobody\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unusable_token_responses_are_clear_errors_that_change_nothing() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    let huge = format!(r#"{{"access_token":"a","pad":"{}"}}"#, "x".repeat(100_000));
    let cases = [
        ("<html>oops</html>", "not a JSON object"),
        (r#"{"token_type":"Bearer"}"#, "no access_token"),
        (r#"{"access_token": "at_truncated"#, "not a JSON object"),
        (huge.as_str(), "exceeds"),
    ];
    for (i, (body, expected)) in cases.into_iter().enumerate() {
        let name = format!("c{i}");
        f.add_credential(
            &name,
            &f.settings(Strategy::EveryRequest, ClientAuth::Basic),
        );
        let before = f.stored_raw(&name);
        f.provider.force_token_responses([(200, body.to_string())]);
        let err = f.get(&name, "me").await.unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
        assert!(!err.to_string().contains("at_truncated"));
        assert_eq!(f.stored_raw(&name).0, before.0, "the keys are untouched");
        // A 200 may have rotated the refresh token: it is not spent again.
        let c = f.store.load(&name).unwrap();
        assert!(c.refresh_in_doubt(), "{name}");
    }
    assert_eq!(f.provider.stats().api_calls, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_api_responses_are_cut_off_by_the_host() {
    let config = Config {
        http: HttpConfig {
            max_response_bytes: 1024 * 1024,
            ..HttpConfig::default()
        },
        ..Config::default()
    };
    let f = Fixture::with(
        provider_with_ttl(Duration::from_secs(60)),
        config,
        Duration::from_secs(5),
    )
    .await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let err = f.get("c", "big").await.unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::TooLarge(1_048_576))),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_stored_keys_are_a_clear_error() {
    let f = Fixture::new(provider_with_ttl(LONG)).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    // Written behind the host's back, as a broken migration might.
    sql(
        &f.store_path(),
        r#"UPDATE credentials SET keys = '{"access_token": "tok_partial'"#,
    );
    let err = f.get("c", "me").await.unwrap_err();
    assert!(matches!(err, Error::InvalidKeys(_)), "{err}");
    assert!(err.to_string().contains("not valid JSON"), "{err}");
    assert!(!err.to_string().contains("tok_partial"));
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_returned_not_followed() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let resp = f.get("c", "redirect").await.unwrap();
    assert_eq!(resp.status, 302);
    assert!(
        resp.headers
            .iter()
            .any(|(k, v)| k == "location" && v == "/api/me")
    );
    assert_eq!(
        f.provider.stats().api_calls,
        1,
        "the bearer token was not carried to another URL"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_api_hits_the_total_timeout() {
    let config = Config {
        http: HttpConfig {
            total_timeout: Duration::from_millis(300),
            ..HttpConfig::default()
        },
        ..Config::default()
    };
    let f = Fixture::with(
        provider_with_ttl(Duration::from_secs(60)),
        config,
        Duration::from_secs(5),
    )
    .await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let started = std::time::Instant::now();
    let err = f.get("c", "slow").await.unwrap_err();
    assert!(
        matches!(err, Error::Transport(TransportError::Timeout)),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(err.category(), rekey::Category::Transport);
}

/// Bodies cross the component as handles: a 1 MiB request body reaches the
/// API byte for byte on both sends (the first is refused, the resend after a
/// refresh carries the same body), and the 1 MiB answer comes back whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_mebibyte_body_goes_out_twice_and_comes_back_whole_through_a_refresh() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    f.provider.expire_access_tokens();
    let body: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
    let req = Request::new("POST", &f.provider.api_url("echo")).body(body.clone());
    let resp = f.rekey.send(f.store_dyn(), "c", req).await.unwrap();
    assert_eq!(resp.status, 200);
    assert!(
        resp.body == body,
        "the answer is the request body, byte for byte"
    );
    let log = f.provider.api_log();
    assert_eq!(log.len(), 2, "refused, then resent after the refresh");
    assert!(!log[0].authorized && log[1].authorized);
    assert!(
        log.iter().all(|r| r.body == body),
        "both sends carried the whole body"
    );
    assert_eq!(f.provider.stats().token_calls, 1);
}

/// A provider that never says how long a token lives (Salesforce, GitHub,
/// Slack) and ends sessions at its own time: every call succeeds across
/// three session ends, one refresh each, while a URL that always answers
/// 401 costs one refresh for its token set and never blocks the others.
#[tokio::test(flavor = "multi_thread")]
async fn a_provider_without_expires_in_is_refreshed_on_401_and_a_bad_url_costs_one_refresh() {
    let f = Fixture::new(ProviderConfig {
        omit_expires_in: true,
        ..provider_with_ttl(Duration::from_secs(3600))
    })
    .await;
    f.add_credential("c", &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic));
    let mut ok = 0;
    for call in 0..10 {
        if call % 3 == 1 {
            // The session ends (an administrator, a short session policy).
            f.provider.expire_access_tokens();
        }
        ok += usize::from(f.get("c", "me").await.unwrap().status == 200);
    }
    assert_eq!(ok, 10, "10 of 10 calls across 3 session ends");
    assert_eq!(f.provider.stats().token_calls, 3);

    // A URL that always answers 401: one refresh, then no more for it.
    for _ in 0..3 {
        let err = f.get("c", "reject").await.unwrap_err();
        assert!(matches!(err, Error::RejectedAfterRefresh(_)), "{err}");
    }
    assert_eq!(
        f.provider.stats().token_calls,
        4,
        "one refresh for the bad URL"
    );
    // Its evidence does not stop the next session end's refresh elsewhere.
    f.provider.expire_access_tokens();
    assert_eq!(f.get("c", "me").await.unwrap().status, 200);
    assert_eq!(f.provider.stats().token_calls, 5);
    assert!(
        !f.stored_keys("c")
            .as_object()
            .unwrap()
            .contains_key("expires_at"),
        "no lifetime was invented"
    );
}
