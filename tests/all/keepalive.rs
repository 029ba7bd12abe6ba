//! keepalive (contract 0.4.0): the component's refresh of a token set that
//! would die from disuse, through the library (`Rekey::keepalive`,
//! `CredentialHandle::keepalive`) and the CLI (`rekey credential
//! keepalive`), against the test kit's provider with rotation and reuse
//! detection on. A set obtained long ago (or at an unknown time: imported)
//! is refreshed once, with no API request, and the rotated refresh token is
//! stored and live; a young one is left alone; grants that keep no refresh
//! token have nothing to keep; a revoked grant needs authorisation once and
//! then sends nothing; and a fleet of processes running it at once on one
//! credential (SQLite, PostgreSQL) spends the refresh token once.

use crate::support::*;
use rekey::settings::Grant;
use rekey::{
    ClientAuth, ClientSecret, Error, KeepaliveOutcome, KeyStore, Settings, Strategy, TokenSet,
};
use rekey_testkit::{Provider, ProviderConfig};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: u64 = 86_400;
const EXIT_NEEDS_AUTHORIZATION: i32 = 3;
/// Processes of a fleet run.
const FLEET: usize = 6;

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn stored_refresh_token(f: &Fixture, name: &str) -> String {
    str_field(&f.stored_keys(name), "refresh_token").to_owned()
}

/// (1) and (2): an imported set (obtained when, unknown) is refreshed: one
/// token request, no API request, the rotated refresh token stored and live
/// at the provider, the spent one dead. Right after, older-than an hour
/// finds it fresh and sends nothing; older-than 0 refreshes again.
#[tokio::test(flavor = "multi_thread")]
async fn an_old_set_is_refreshed_once_and_a_young_one_is_left_alone() {
    let f = Fixture::new(provider_with_ttl(HOUR)).await;
    let s = f.settings(Strategy::OnAuthFailure, ClientAuth::Basic);
    let first = f.add_credential("app", &s);
    let spent = str_field(&first, "refresh_token").to_owned();
    let app = f.rekey.credential(f.store_dyn(), "app");

    assert_eq!(
        app.keepalive(HOUR).await.unwrap(),
        KeepaliveOutcome::Refreshed
    );
    let stats = f.provider.stats();
    assert_eq!(
        (stats.token_calls, stats.refreshes_granted, stats.api_calls),
        (1, 1, 0)
    );
    let rotated = stored_refresh_token(&f, "app");
    assert_ne!(rotated, spent, "the rotated refresh token is stored");
    assert!(f.provider.refresh_token_is_live(&rotated));
    assert!(!f.provider.refresh_token_is_live(&spent));
    let stored = f.stored_keys("app");
    let at = stored["rekey_refreshed_at"].as_u64().expect("dated now");
    assert!(at.abs_diff(now_unix()) <= 60, "{stored}");
    let c = f.store.load("app").unwrap();
    assert!(c.lease.is_none() && c.refresh_mark.is_none());

    // Young: nothing to do, nothing sent.
    assert_eq!(app.keepalive(HOUR).await.unwrap(), KeepaliveOutcome::Fresh);
    assert_eq!(f.provider.stats().token_calls, 1);
    assert_eq!(stored_refresh_token(&f, "app"), rotated);
    // Older than 0 s: any set is old enough.
    assert_eq!(
        f.rekey
            .keepalive(f.store_dyn(), "app", Duration::ZERO)
            .await
            .unwrap(),
        KeepaliveOutcome::Refreshed
    );
    let stats = f.provider.stats();
    assert_eq!(
        (
            stats.token_calls,
            stats.refreshes_granted,
            stats.api_calls,
            stats.invalid_grant,
            stats.reused_refresh_tokens
        ),
        (2, 2, 0, 0, 0)
    );
    assert!(
        f.provider
            .refresh_token_is_live(&stored_refresh_token(&f, "app"))
    );
    // The credential still works, with the kept-alive token set.
    assert_eq!(f.get("app", "me").await.unwrap().status, 200);
    assert_eq!(f.provider.stats().token_calls, 2);
}

/// The CLI with its default (7 days): a set refreshed 8 days ago is
/// refreshed, one refreshed 6 days ago is fresh, and one whose refresh
/// token the provider said expires within the 7 days, half its stated life
/// gone, is refreshed too. One
/// line per credential, every credential of the store when none is named.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_keeps_every_credential_older_than_seven_days_alive() {
    let f = Fixture::new(provider_with_ttl(HOUR)).await;
    let s = f.settings(Strategy::OnAuthFailure, ClientAuth::Basic);
    let now = now_unix();
    let dated = |refreshed_days_ago: u64, refresh_expires_in_days: Option<u64>| {
        let mut keys = f.provider.authorize();
        keys["rekey_refreshed_at"] = (now - refreshed_days_ago * DAY).into();
        if let Some(days) = refresh_expires_in_days {
            keys["refresh_expires_at"] = (now + days * DAY).into();
        }
        TokenSet::stored(keys.to_string())
    };
    f.store.put("idle", &s, Some(&dated(8, None))).unwrap();
    f.store.put("young", &s, Some(&dated(6, None))).unwrap();
    // Refreshed 4 days ago, its refresh token ends in 2: half its stated
    // life gone (a just-refreshed one would be left alone).
    f.store.put("dying", &s, Some(&dated(4, Some(2)))).unwrap();
    f.store
        .put("lasting", &s, Some(&dated(1, Some(30))))
        .unwrap();

    let out = rekey_cli(&f.store_path(), &["credential", "keepalive"]);
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "dying: refreshed\nidle: refreshed\nlasting: fresh\nyoung: fresh\n"
    );
    let stats = f.provider.stats();
    assert_eq!(
        (stats.token_calls, stats.refreshes_granted, stats.api_calls),
        (2, 2, 0)
    );
    for name in ["idle", "dying"] {
        assert!(
            f.provider
                .refresh_token_is_live(&stored_refresh_token(&f, name))
        );
    }
    // Named, and again: all young now.
    let out = rekey_cli(
        &f.store_path(),
        &["credential", "keepalive", "idle", "young"],
    );
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "idle: fresh\nyoung: fresh\n"
    );
    assert_eq!(f.provider.stats().token_calls, 2);
    // A shorter --older-than takes "young" too.
    let out = rekey_cli(
        &f.store_path(),
        &["credential", "keepalive", "young", "--older-than", "5d"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "young: refreshed\n");
    let out = rekey_cli(
        &f.store_path(),
        &["credential", "keepalive", "--older-than", "7 days"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", all_output(&out));
    assert_eq!(f.provider.stats().reused_refresh_tokens, 0);
}

/// (4): grants that keep no refresh token have nothing to keep, and
/// nothing is sent (a client secret in a variable this process lacks is not
/// even read).
#[tokio::test(flavor = "multi_thread")]
async fn grants_without_a_refresh_token_have_nothing_to_keep() {
    let f = Fixture::new(provider_with_ttl(HOUR)).await;
    let mut m2m = f.settings(Strategy::OnAuthFailure, ClientAuth::Post);
    m2m.grant = Grant::ClientCredentials;
    f.store.put("m2m", &m2m, None).unwrap();
    let mut unset = m2m.clone();
    unset.client_secret = Some(ClientSecret::Env("REKEY_TEST_KEEPALIVE_NEVER_SET".into()));
    f.store.put("m2m-env", &unset, None).unwrap();
    for name in ["m2m", "m2m-env"] {
        assert_eq!(
            f.rekey
                .keepalive(f.store_dyn(), name, Duration::ZERO)
                .await
                .unwrap(),
            KeepaliveOutcome::NothingToKeep,
            "{name}"
        );
    }
    // With a token stored too.
    assert_eq!(f.get("m2m", "me").await.unwrap().status, 200);
    let calls = f.provider.stats().token_calls;
    let out = rekey_cli(
        &f.store_path(),
        &["credential", "keepalive", "--older-than", "0"],
    );
    assert!(out.status.success(), "{}", all_output(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "m2m: nothing to keep\nm2m-env: nothing to keep\n"
    );
    assert_eq!(f.provider.stats().token_calls, calls, "nothing sent");
    assert_eq!(f.provider.stats().client_credentials_granted, 1);
}

/// (5): a revoked grant: the first keepalive learns it (invalid_grant
/// once) and says authorisation is needed; the next sends nothing. The CLI
/// goes on to the other credentials and exits with the first failure's code.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_grant_needs_authorization_and_the_next_keepalive_sends_nothing() {
    let f = Fixture::new(provider_with_ttl(HOUR)).await;
    let s = f.settings(Strategy::OnAuthFailure, ClientAuth::Basic);
    f.add_credential("revoked", &s);
    f.provider.revoke_all();
    f.add_credential("zlive", &s);
    f.store.put("empty", &s, None).unwrap();

    let err = f
        .rekey
        .keepalive(f.store_dyn(), "revoked", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ReauthorizationRequired { code, .. } if code == "invalid_grant"),
        "{err}"
    );
    let stats = f.provider.stats();
    assert_eq!((stats.token_calls, stats.invalid_grant), (1, 1));
    assert!(
        f.store
            .load("revoked")
            .unwrap()
            .needs_authorization
            .is_some()
    );
    let err = f
        .rekey
        .keepalive(f.store_dyn(), "revoked", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(err.needs_authorization(), "{err}");
    assert_eq!(f.provider.stats().token_calls, 1, "nothing sent");
    // No keys at all: authorisation needed, nothing sent.
    let err = f
        .rekey
        .keepalive(f.store_dyn(), "empty", Duration::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotAuthenticated(_)), "{err}");
    assert_eq!(f.provider.stats().token_calls, 1);

    let out = rekey_cli(&f.store_path(), &["credential", "keepalive"]);
    assert_eq!(
        out.status.code(),
        Some(EXIT_NEEDS_AUTHORIZATION),
        "{}",
        all_output(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "zlive: refreshed\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("empty: "), "{stderr}");
    assert!(lines[1].starts_with("revoked: "), "{stderr}");
    let stats = f.provider.stats();
    assert_eq!(
        (
            stats.token_calls,
            stats.invalid_grant,
            stats.refreshes_granted
        ),
        (2, 1, 1)
    );
}

/// A provider whose token endpoint answers after 300 ms, so that processes
/// started together overlap on the lease.
async fn slow_provider() -> Arc<Provider> {
    Provider::start(ProviderConfig {
        access_ttl: HOUR,
        token_delay: Duration::from_millis(300),
        ..ProviderConfig::default()
    })
    .await
    .expect("provider")
}

/// `rekey credential keepalive` run by FLEET processes at once; their outputs.
fn keepalive_fleet(store: &str, cache: &Path, args: &[&str]) -> Vec<Output> {
    let start = || {
        let mut cmd = Command::new(rekey_bin());
        cmd.arg("--store")
            .arg(store)
            .arg("--cache-dir")
            .arg(cache)
            .args(["credential", "keepalive"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    // Compiled once into the cache (a store with nothing to keep), so the
    // fleet's processes all start from it.
    let warm = start().arg("no-such-credential").output().unwrap();
    assert!(
        String::from_utf8_lossy(&warm.stderr).contains("no-such-credential"),
        "{}",
        all_output(&warm)
    );
    let children: Vec<_> = (0..FLEET)
        .map(|_| start().args(args).spawn().unwrap())
        .collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

/// (3): a fleet's processes keep one credential alive at once: exactly one
/// refresh (one process says refreshed, the others fresh, having waited on
/// the lease and adopted the set, or come after it), no reused refresh
/// token, no invalid_grant, no API request; the stored refresh token is live.
fn one_refresh_for_the_fleet(provider: &Provider, outputs: &[Output], store: &str) -> String {
    let mut said: HashMap<String, usize> = HashMap::new();
    for out in outputs {
        assert!(out.status.success(), "{}", all_output(out));
        *said
            .entry(String::from_utf8_lossy(&out.stdout).into_owned())
            .or_default() += 1;
    }
    assert_eq!(
        said,
        HashMap::from([
            ("app: refreshed\n".to_owned(), 1),
            ("app: fresh\n".to_owned(), FLEET - 1)
        ]),
        "{store}"
    );
    let stats = provider.stats();
    assert_eq!(
        (
            stats.token_calls,
            stats.refreshes_granted,
            stats.reused_refresh_tokens,
            stats.invalid_grant,
            stats.api_calls
        ),
        (1, 1, 0, 0, 0),
        "{store}"
    );
    format!(
        "keepalive fleet on {store}: {FLEET} processes at once: {} refreshed, {} fresh, token-endpoint calls {}, reused refresh tokens 0",
        said["app: refreshed\n"], said["app: fresh\n"], stats.token_calls
    )
}

fn fleet_settings(provider: &Provider) -> Settings {
    client_settings(provider, Strategy::OnAuthFailure, ClientAuth::Basic)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_on_sqlite_spends_the_refresh_token_once() {
    let provider = slow_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let store = dir.path().join("rekey.db").display().to_string();
    let keys = first_token_set(&provider);
    rekey::store::open(&store)
        .unwrap()
        .put("app", &fleet_settings(&provider), Some(&keys))
        .unwrap();
    let (p, s, c) = (provider.clone(), store.clone(), cache.path().to_owned());
    let outputs = tokio::task::spawn_blocking(move || keepalive_fleet(&s, &c, &["app"]))
        .await
        .unwrap();
    let line = one_refresh_for_the_fleet(&p, &outputs, "SQLite");
    let kept = rekey::store::open(&store).unwrap().load("app").unwrap();
    let kept: serde_json::Value = serde_json::from_str(kept.keys.unwrap().expose()).unwrap();
    assert!(provider.refresh_token_is_live(str_field(&kept, "refresh_token")));
    crate::fleet::report(line);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_on_postgres_spends_the_refresh_token_once() {
    let Some(pg) = crate::support::postgres::start() else {
        return;
    };
    let provider = slow_provider().await;
    let cache = tempfile::tempdir().unwrap();
    let keys = first_token_set(&provider);
    let (url, settings) = (pg.url.clone(), fleet_settings(&provider));
    tokio::task::spawn_blocking(move || {
        rekey::store::open(&url)
            .unwrap()
            .put("app", &settings, Some(&keys))
            .unwrap()
    })
    .await
    .unwrap();
    let (url, c) = (pg.url.clone(), cache.path().to_owned());
    let outputs = tokio::task::spawn_blocking(move || keepalive_fleet(&url, &c, &["app"]))
        .await
        .unwrap();
    let line = one_refresh_for_the_fleet(&provider, &outputs, "PostgreSQL");
    let url = pg.url.clone();
    let kept = tokio::task::spawn_blocking(move || rekey::store::open(&url).unwrap().load("app"))
        .await
        .unwrap()
        .unwrap();
    let kept: serde_json::Value = serde_json::from_str(kept.keys.unwrap().expose()).unwrap();
    assert!(provider.refresh_token_is_live(str_field(&kept, "refresh_token")));
    crate::fleet::report(line);
}
