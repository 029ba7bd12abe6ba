//! The client-credentials grant (RFC 6749 §4.4) end to end: nothing stored
//! before the first call, a token fetched and renewed by the component, no
//! refresh token anywhere, and the CLI path.

use crate::support::*;
use rekey::settings::Grant;
use rekey::{ClientAuth, Error, KeyStore, Settings, SqliteStore, Strategy};
use std::time::Duration;

fn m2m(f: &Fixture) -> Settings {
    let mut s = f.settings(Strategy::OnAuthFailure, ClientAuth::Post);
    s.grant = Grant::ClientCredentials;
    s
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_is_fetched_when_none_is_stored_and_renewed_on_401() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(3600))).await;
    f.store.put("m2m", &m2m(&f), None).unwrap();

    assert_eq!(f.get("m2m", "me").await.unwrap().status, 200);
    assert_eq!(f.provider.stats().client_credentials_granted, 1);
    let stored = f.stored_keys("m2m");
    assert!(stored["access_token"].is_string());
    assert!(stored.get("refresh_token").is_none());
    let form = f.provider.last_token_form();
    assert!(form.contains(&("grant_type".into(), "client_credentials".into())));

    assert_eq!(f.get("m2m", "me").await.unwrap().status, 200);
    assert_eq!(f.provider.stats().client_credentials_granted, 1, "reused");

    f.provider.expire_access_tokens();
    assert_eq!(f.get("m2m", "me").await.unwrap().status, 200);
    let stats = f.provider.stats();
    assert_eq!(
        (stats.client_credentials_granted, stats.refreshes_granted),
        (2, 0)
    );
    let c = f.store.load("m2m").unwrap();
    assert!(c.refresh_mark.is_none() && c.lease.is_none());
}

/// RFC 6749 §4.4.3 says no refresh token comes with this grant; some
/// servers send one anyway. It is not kept (this grant never spends it),
/// and the credential goes on working: kept, it made every later call
/// refuse the record as the refresh-token grant's.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_token_in_the_answer_is_not_kept_and_later_calls_work() {
    let mut config = provider_with_ttl(Duration::from_secs(3600));
    config
        .extra_token_fields
        .insert("refresh_token".into(), "unasked-for".into());
    let f = Fixture::new(config).await;
    f.store.put("m2m", &m2m(&f), None).unwrap();
    assert_eq!(f.get("m2m", "me").await.unwrap().status, 200);
    assert!(f.stored_keys("m2m").get("refresh_token").is_none());
    f.provider.expire_access_tokens();
    assert_eq!(f.get("m2m", "me").await.unwrap().status, 200);
    assert_eq!(f.get("m2m", "me").await.unwrap().status, 200);
    assert_eq!(f.provider.stats().client_credentials_granted, 2);
}

/// A wrong client secret: the token endpoint refuses the client, rekey says
/// the settings are wrong, and stores no token, only the component's
/// memory of the refusal (its code, when, a fingerprint of the settings: no
/// secret), so the same settings are not asked again within the minute;
/// the right secret asks at once, and its token set drops the memory.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_client_is_a_settings_problem_stores_no_token_and_is_not_asked_again() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(3600))).await;
    let mut s = m2m(&f);
    let right = s.clone();
    s.client_secret = Some(rekey::ClientSecret::Literal(rekey::Secret::new(
        "wrong-secret",
    )));
    f.store.put("m2m", &s, None).unwrap();
    let err = f.get("m2m", "me").await.unwrap_err();
    assert!(matches!(err, Error::SettingsRejected { .. }), "{err}");
    assert!(err.is_settings_problem());
    let c = f.store.load("m2m").unwrap();
    assert!(c.needs_authorization.is_none() && c.refresh_mark.is_none() && c.lease.is_none());
    let kept = f.stored_keys("m2m");
    assert_eq!(
        kept.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["rekey_refused"],
        "no token, only the refusal: {kept}"
    );
    assert_eq!(kept["rekey_refused"]["code"], "invalid_client");
    assert!(!kept.to_string().contains("wrong-secret"));
    assert_eq!(f.provider.stats().token_calls, 1);

    // `credential list` says so rather than "keys stored".
    let out = rekey_cli(&f.store_path(), &["credential", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("settings refused by the token endpoint (invalid_client;"),
        "{listed}"
    );
    // The same settings within the minute: refused without a request.
    let again = f.get("m2m", "me").await.unwrap_err();
    assert!(matches!(again, Error::SettingsRejected { .. }), "{again}");
    assert_eq!(f.provider.stats().token_calls, 1);
    // The right secret asks at once; its token set drops the memory.
    f.store.put("m2m", &right, None).unwrap();
    assert_eq!(f.get("m2m", "me").await.unwrap().status, 200);
    let kept = f.stored_keys("m2m");
    assert!(kept["access_token"].is_string() && kept.get("rekey_refused").is_none());
    assert_eq!(f.provider.stats().token_calls, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_adds_and_sends_without_authorising() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(3600))).await;
    let (url, id) = (
        f.provider.token_url(),
        f.provider.config().client_id.clone(),
    );
    let store = f.store_path();
    let add = [
        "credential",
        "add",
        "m2m",
        "--grant",
        "client-credentials",
        "--token-url",
        &url,
        "--client-id",
        &id,
        "--client-secret-env",
        "REKEY_TEST_M2M_SECRET",
        "--any-api-origin",
    ];
    let secret = f.provider.config().client_secret.clone();
    let env = [("REKEY_TEST_M2M_SECRET", secret.as_str())];
    let out = rekey_cli_env(&store, &add, &env);
    assert!(out.status.success(), "{}", all_output(&out));
    let api = f.provider.api_url("me");
    let out = rekey_cli_env(&store, &["send", "m2m", &api], &env);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(f.provider.stats().client_credentials_granted, 1);
    // Nobody authorises it; a public client cannot use it.
    let out = rekey_cli_env(&store, &["authorize", "m2m"], &env);
    assert!(!out.status.success() && all_output(&out).contains("client-credentials"));
    let out = rekey_cli_env(
        &store,
        &[
            "credential",
            "add",
            "pub",
            "--grant",
            "client-credentials",
            "--token-url",
            &url,
            "--client-id",
            &id,
            "--public-client",
        ],
        &env,
    );
    assert!(!out.status.success() && all_output(&out).contains("needs a client secret"));
    // A refresh-token credential is not switched in place (its record is
    // the old grant's); `add --replace` starts it over, keys and all.
    let rt = f.provider.authorize();
    let keys = f.dir.path().join("rt.json");
    std::fs::write(&keys, rt.to_string()).unwrap();
    let add_rt = [
        "credential",
        "add",
        "both",
        "--token-url",
        &url,
        "--client-id",
        &id,
        "--client-secret-env",
        "REKEY_TEST_M2M_SECRET",
        "--any-api-origin",
        "--keys",
        keys.to_str().unwrap(),
    ];
    assert!(rekey_cli_env(&store, &add_rt, &env).status.success());
    let out = rekey_cli_env(
        &store,
        &["credential", "set", "both", "--grant", "client-credentials"],
        &env,
    );
    assert!(!out.status.success() && all_output(&out).contains("--replace"));
    let mut replace = add.to_vec();
    replace[2] = "both";
    replace.push("--replace");
    assert!(rekey_cli_env(&store, &replace, &env).status.success());
    assert!(
        SqliteStore::open(&store)
            .unwrap()
            .load("both")
            .unwrap()
            .keys
            .is_none()
    );
    let out = rekey_cli_env(&store, &["send", "both", &api], &env);
    assert!(out.status.success(), "{}", all_output(&out));
}
