//! No grant is lost by rekey: calls that the caller abandons, credentials
//! that hang, processes that are told to stop.

use crate::fleet::report;
use crate::refresh_and_retry::sql;
use crate::support::*;
use rekey::{ClientAuth, Config, KeyStore, Request, Strategy};
use rekey_testkit::ProviderConfig;
use std::sync::Arc;
use std::time::Duration;

/// A slow token endpoint: every granted refresh is answered after this.
const SLOW: Duration = Duration::from_secs(3);

fn slow_provider() -> ProviderConfig {
    ProviderConfig {
        access_ttl: Duration::from_secs(60),
        token_delay: SLOW,
        ..ProviderConfig::default()
    }
}

/// An embedder's timeout drops the `send` future while the refresh is in
/// flight: the provider has rotated the refresh token, and the new one must
/// still reach the store.
#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_call_still_persists_its_refresh() {
    let f = Fixture::new(slow_provider()).await;
    f.add_credential("c", &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
    let abandoned = tokio::time::timeout(Duration::from_millis(300), f.get("c", "me")).await;
    assert!(
        abandoned.is_err(),
        "the call should still be waiting on the token endpoint"
    );
    assert_eq!(
        f.provider.stats().refreshes_granted,
        1,
        "the provider rotated"
    );

    // The call goes on without its caller: poll until its keys are durable.
    let deadline = std::time::Instant::now() + SLOW * 4;
    loop {
        let stored = f.stored_keys("c");
        if f.provider
            .refresh_token_is_live(str_field(&stored, "refresh_token"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated refresh token never reached the store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(f.get("c", "me").await.unwrap().status, 200);
    assert_eq!(f.provider.stats().reused_refresh_tokens, 0);
}

/// Calls stuck behind one credential's hanging refresh do not take every
/// instance slot: another credential's call goes through meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_credential_does_not_starve_the_others() {
    let config = Config {
        pooling: Some(4),
        ..Config::default()
    };
    let f = Fixture::with(slow_provider(), config, Duration::from_secs(5)).await;
    f.add_credential(
        "busy",
        &f.settings(Strategy::EveryRequest, ClientAuth::Basic),
    );
    f.add_credential(
        "idle",
        &f.settings(Strategy::OnAuthFailure, ClientAuth::Basic),
    );
    let stuck: Vec<_> = (0..8)
        .map(|_| {
            let (rekey, store, url) = (f.rekey.clone(), f.store_dyn(), f.provider.api_url("me"));
            tokio::spawn(async move { rekey.send(store, "busy", Request::get(&url)).await })
        })
        .collect();
    // Wait until the first refresh is in flight (granted, answer delayed).
    while f.provider.stats().refreshes_granted == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = f
        .get("idle", "me")
        .await
        .expect("the idle credential's call");
    assert_eq!(other.status, 200);
    assert!(
        stuck.iter().all(|t| !t.is_finished()),
        "the busy credential's calls were meant to be still waiting (token delay {SLOW:?})"
    );
    for t in stuck {
        assert_eq!(t.await.unwrap().unwrap().status, 200);
    }
}

/// What a run of signalled `rekey send` processes amounted to.
struct Kills {
    sent: usize,
    /// Processes that the signal ended (the rest finished their call first).
    ended_by_signal: usize,
    credentials: Vec<String>,
}

/// Runs `rekey send` (every-request: a refresh each time) `per_credential`
/// times for each of four new credentials, signalling each process with
/// `signo` at a random moment from start-up to after its refresh, the four
/// credentials at once.
fn kill_loop(f: &Fixture, label: &str, signo: i32, per_credential: usize) -> Kills {
    let cache = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..4).map(|i| format!("{label}{i}")).collect();
    for name in &names {
        f.add_credential(name, &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
    }
    // Compile the component into the cache once, unhurried.
    let warm = send_process(f, &names[0], cache.path())
        .wait_with_output()
        .unwrap();
    assert!(warm.status.success(), "{}", all_output(&warm));
    let ended: usize = std::thread::scope(|s| {
        let workers: Vec<_> = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let cache = cache.path();
                s.spawn(move || {
                    let mut seed = 0x9e37_79b9_7f4a_7c15_u64
                        ^ ((i as u64) << 32)
                        ^ u64::from(std::process::id());
                    let mut ended = 0;
                    for _ in 0..per_credential {
                        let mut child = send_process(f, name, cache);
                        // xorshift
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        std::thread::sleep(Duration::from_millis(seed % 450));
                        // SAFETY: signalling our own child, which has not been reaped.
                        unsafe { libc::kill(child.id() as i32, signo) };
                        let status = child.wait().unwrap();
                        if std::os::unix::process::ExitStatusExt::signal(&status).is_some() {
                            ended += 1;
                        }
                    }
                    ended
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    Kills {
        sent: per_credential * names.len(),
        ended_by_signal: ended,
        credentials: names,
    }
}

fn send_process(f: &Fixture, name: &str, cache: &std::path::Path) -> std::process::Child {
    std::process::Command::new(rekey_bin())
        .arg("--store")
        .arg(f.store_path())
        .args(["send", name, &f.provider.api_url("me")])
        .env("REKEY_CACHE_DIR", cache)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rekey send")
}

/// Whether each credential's stored refresh token still works at the provider.
fn lost_grants(f: &Fixture, credentials: &[String]) -> usize {
    credentials
        .iter()
        .filter(|name| {
            let stored = f.stored_keys(name);
            !f.provider
                .refresh_token_is_live(str_field(&stored, "refresh_token"))
        })
        .count()
}

fn delayed_refreshes() -> ProviderConfig {
    ProviderConfig {
        access_ttl: Duration::from_secs(60),
        token_delay: Duration::from_millis(150),
        ..ProviderConfig::default()
    }
}

/// SIGTERM and SIGINT at random moments of refresh loops: `rekey send`
/// finishes the call in flight first, so no rotated token is ever lost.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_and_sigint_never_lose_a_grant() {
    let f = Fixture::new(delayed_refreshes()).await;
    let (term, int) = tokio::task::block_in_place(|| {
        (
            kill_loop(&f, "term", libc::SIGTERM, 25),
            kill_loop(&f, "int", libc::SIGINT, 25),
        )
    });
    let stats = f.provider.stats();
    report(format!(
        "signals: {} SIGTERM + {} SIGINT at random moments of `rekey send` refresh loops ({} of the processes ended by the signal itself, the rest finished first); {} refreshes granted; invalid_grant {}, reused refresh tokens {}",
        term.sent,
        int.sent,
        term.ended_by_signal + int.ended_by_signal,
        stats.refreshes_granted,
        stats.invalid_grant,
        stats.reused_refresh_tokens
    ));
    assert!(term.sent + int.sent >= 200);
    assert_eq!(lost_grants(&f, &term.credentials), 0, "{stats:?}");
    assert_eq!(lost_grants(&f, &int.credentials), 0, "{stats:?}");
    assert_eq!((stats.invalid_grant, stats.reused_refresh_tokens), (0, 0));
}

/// The keys write fails for a while after the provider rotated (a locked or
/// full store): the call keeps the merged keys and retries the write, so the
/// rotated refresh token is not lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_keys_write_that_fails_for_a_while_is_retried_until_it_lands() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
    let path = f.store_path();
    sql(
        &path,
        "CREATE TRIGGER refuse BEFORE UPDATE ON credentials WHEN NEW.keys IS NOT OLD.keys BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    );
    let call = {
        let (rekey, store, url) = (f.rekey.clone(), f.store_dyn(), f.provider.api_url("me"));
        tokio::spawn(async move { rekey.send(store, "c", Request::get(&url)).await })
    };
    // The provider has rotated; the write is failing. Then the store recovers.
    while f.provider.stats().refreshes_granted == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sql(&path, "DROP TRIGGER refuse");
    let resp = call
        .await
        .unwrap()
        .expect("the call succeeds once the write lands");
    assert_eq!(resp.status, 200);
    let stored = f.stored_keys("c");
    assert!(
        f.provider
            .refresh_token_is_live(str_field(&stored, "refresh_token"))
    );
    assert!(f.events.take().iter().any(|e| e.starts_with("persisted")));
}

/// After `invalid_grant` the credential is recorded as dead: later sends
/// fail fast without touching the network, until new keys are stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_grant_is_recorded_and_not_retried() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
    f.provider.revoke_all();
    let err = f.get("c", "me").await.unwrap_err();
    assert!(
        matches!(err, rekey::Error::ReauthorizationRequired { .. }),
        "{err}"
    );
    let before = f.provider.stats();
    for _ in 0..3 {
        let err = f.get("c", "me").await.unwrap_err();
        assert!(err.needs_authorization(), "{err}");
        assert!(err.to_string().contains("invalid_grant"), "{err}");
    }
    let after = f.provider.stats();
    assert_eq!(
        (after.api_calls, after.token_calls),
        (before.api_calls, before.token_calls),
        "no request spent on a dead grant"
    );
    let c = rekey::KeyStore::load(f.store.as_ref(), "c").unwrap();
    assert_eq!(
        c.needs_authorization.map(|d| d.code).as_deref(),
        Some("invalid_grant")
    );

    // A person authorised again: new keys clear the record.
    let keys = first_token_set(&f.provider);
    rekey::KeyStore::put(f.store.as_ref(), "c", &c.settings, Some(&keys)).unwrap();
    assert_eq!(f.get("c", "me").await.unwrap().status, 200);
}

/// The provider rotates, then its answer is lost (a gateway's 502, a reset
/// connection, a timeout). With a grace period for the just-rotated token
/// the prompt retry recovers and nothing fails; at a strict provider the
/// call fails with the distinct "refresh in doubt", never a silent
/// `invalid_grant` later.
#[tokio::test(flavor = "multi_thread")]
async fn lost_token_responses_retry_once_then_report_in_doubt() {
    use rekey_testkit::LostAnswer;
    let faults = [
        ("502", LostAnswer::Status(502)),
        ("reset", LostAnswer::Reset),
        ("timeout", LostAnswer::Hang(Duration::from_secs(3))),
    ];
    for (grace, label) in [
        (Duration::from_secs(30), "grace"),
        (Duration::ZERO, "strict"),
    ] {
        for (fault_label, fault) in faults {
            let provider = ProviderConfig {
                access_ttl: Duration::from_secs(60),
                grace_period: grace,
                ..ProviderConfig::default()
            };
            let config = Config {
                http: rekey::HttpConfig {
                    total_timeout: Duration::from_secs(1),
                    ..Default::default()
                },
                ..Config::default()
            };
            let f = Fixture::with(provider, config, Duration::from_secs(5)).await;
            f.add_credential("c", &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
            f.provider.lose_answers([fault]);
            let result = f.get("c", "me").await;
            let case = format!("{label} provider, {fault_label} after rotating");
            if grace.is_zero() {
                let err = result.expect_err(&case);
                assert!(
                    matches!(err, rekey::Error::RefreshInDoubt(_)),
                    "{case}: {err}"
                );
                assert_eq!(err.category(), rekey::Category::RefreshInDoubt);
                // Later calls say the same, and spend nothing.
                let calls = f.provider.stats().token_calls;
                let again = f.get("c", "me").await.expect_err(&case);
                assert!(
                    matches!(again, rekey::Error::RefreshInDoubt(_)),
                    "{case}: {again}"
                );
                assert_eq!(f.provider.stats().token_calls, calls, "{case}");
            } else {
                assert_eq!(result.expect(&case).status, 200, "{case}");
                let stored = f.stored_keys("c");
                assert!(
                    f.provider
                        .refresh_token_is_live(str_field(&stored, "refresh_token")),
                    "{case}: the store ends on the live refresh token"
                );
                assert_eq!(f.provider.stats().reused_refresh_tokens, 0, "{case}");
            }
            let expected_calls = 2; // the lost one and one prompt retry
            assert_eq!(f.provider.stats().token_calls, expected_calls, "{case}");
        }
    }
}

/// SIGKILL at random moments of refresh loops. Nothing can save a rotated
/// token whose process dies before writing it, but rekey must never make it
/// worse: a successor never spends a refresh token that may be spent (0
/// reused at the provider, 0 `invalid_grant`), and every loss shows as
/// "refresh in doubt" on the credential. The losses are counted and printed.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_losses_stay_inside_the_rotation_window_and_say_so() {
    let f = Fixture::new(delayed_refreshes()).await;
    let names: Vec<String> = (0..4).map(|i| format!("kill{i}")).collect();
    for name in &names {
        f.add_credential(name, &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
    }
    let cache = tempfile::tempdir().unwrap();
    let counts: Vec<(usize, usize, usize)> = tokio::task::block_in_place(|| {
        let warm = send_process(&f, &names[0], cache.path())
            .wait_with_output()
            .unwrap();
        assert!(warm.status.success(), "{}", all_output(&warm));
        // How long one whole send takes here: kills land anywhere in it.
        let started = std::time::Instant::now();
        assert!(
            send_process(&f, &names[0], cache.path())
                .wait()
                .unwrap()
                .success()
        );
        let span = (started.elapsed().as_millis() as u64 * 13 / 10).max(50);
        std::thread::scope(|s| {
            let workers: Vec<_> = names
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let (f, cache) = (&f, cache.path());
                    s.spawn(move || {
                        let store = f.store_dyn();
                        let mut seed = 0x2545_f491_4f6c_dd1d_u64
                            ^ ((i as u64) << 40)
                            ^ u64::from(std::process::id());
                        let (mut kills, mut doubts, mut lost) = (0, 0, 0);
                        for round in 0..50 {
                            let mut child = send_process(f, name, cache);
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            std::thread::sleep(Duration::from_millis(seed % span));
                            child.kill().expect("SIGKILL");
                            child.wait().unwrap();
                            kills += 1;
                            // A dead holder's lease keeps the others waiting
                            // its TTL (40 s); let that time pass at once.
                            sql(
                                &f.store_path(),
                                &format!(
                                    "UPDATE credentials SET lease_until_ms = 0 WHERE name = '{name}' AND lease_holder IS NOT NULL"
                                ),
                            );
                            let c = store.load(name).unwrap();
                            let stored = f.stored_keys(name);
                            let live = f
                                .provider
                                .refresh_token_is_live(str_field(&stored, "refresh_token"));
                            doubts += usize::from(c.refresh_in_doubt());
                            if !live {
                                // Killed between the provider's rotation and
                                // the write: the credential must say so.
                                assert!(
                                    c.refresh_in_doubt(),
                                    "round {round}: {name} lost its grant silently"
                                );
                                lost += 1;
                                let keys = first_token_set(&f.provider);
                                store.put(name, &c.settings, Some(&keys)).unwrap();
                            } else if c.refresh_in_doubt() {
                                // Marked, but the stored token was never
                                // spent (the request had not arrived).
                                store.clear_refresh_in_doubt(name).unwrap();
                            }
                        }
                        (kills, doubts, lost)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        })
    });
    let (kills, doubts, lost) = counts
        .iter()
        .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
    let stats = f.provider.stats();
    report(format!(
        "SIGKILL: {kills} kills at random moments of `rekey send` refresh loops; {} refreshes granted; {doubts} left a refresh in doubt, {lost} of them had lost their rotated token (killed between the provider's rotation and the write); reused refresh tokens {}, invalid_grant {}",
        stats.refreshes_granted, stats.reused_refresh_tokens, stats.invalid_grant
    ));
    assert!(kills >= 200);
    assert!(
        stats.refreshes_granted > 20,
        "the kills must land during refreshes too"
    );
    assert_eq!(
        (stats.reused_refresh_tokens, stats.invalid_grant),
        (0, 0),
        "a spent refresh token was sent again"
    );
}

/// A store that misbehaves on the first write of new keys, the ways real
/// ones do: the write commits but its answer is lost (reported as a plain
/// failure, "nothing written"), or it stalls; or on the first refresh mark,
/// whose write commits but reports failure.
struct FaultyStore {
    inner: Arc<rekey::SqliteStore>,
    fault: Fault,
    struck: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy)]
enum Fault {
    /// Commits, then reports a failure (a connection reset after COMMIT).
    CommitThenFail,
    /// Stalls this long, then commits (a frozen connection that recovers).
    Stall(Duration),
    /// The first write of the refresh mark commits (lease renewed, mark set),
    /// then reports a failure: the server went down between its COMMIT and
    /// the reply, and the store's retry on a new connection found no server.
    MarkCommitsThenFails,
}

impl KeyStore for FaultyStore {
    fn load(&self, name: &str) -> Result<rekey::Credential, rekey::StoreError> {
        self.inner.load(name)
    }
    fn write_record(
        &self,
        name: &str,
        expected: u64,
        record: &rekey::Record,
    ) -> Result<u64, rekey::StoreError> {
        let stored_keys = self.inner.load(name)?.keys;
        let new_keys = record.keys != stored_keys;
        let marks = record.refresh_mark.is_some();
        let strikes = match self.fault {
            Fault::MarkCommitsThenFails => marks,
            Fault::CommitThenFail | Fault::Stall(_) => new_keys,
        };
        if !strikes || self.struck.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return self.inner.write_record(name, expected, record);
        }
        match self.fault {
            Fault::CommitThenFail => {
                self.inner.write_record(name, expected, record)?;
                Err(rekey::StoreError::Write("connection reset".into()))
            }
            Fault::Stall(d) => {
                std::thread::sleep(d);
                self.inner.write_record(name, expected, record)
            }
            Fault::MarkCommitsThenFails => {
                self.inner.write_record(name, expected, record)?;
                Err(rekey::StoreError::Write(
                    "connection closed; then cannot connect: Connection refused".into(),
                ))
            }
        }
    }
    fn put(
        &self,
        name: &str,
        settings: &rekey::Settings,
        keys: Option<&rekey::TokenSet>,
    ) -> Result<(), rekey::StoreError> {
        self.inner.put(name, settings, keys)
    }
    fn list(&self) -> Result<Vec<rekey::Credential>, rekey::StoreError> {
        self.inner.list()
    }
    fn remove(&self, name: &str) -> Result<bool, rekey::StoreError> {
        self.inner.remove(name)
    }
    fn clear_refresh_in_doubt(&self, name: &str) -> Result<(), rekey::StoreError> {
        self.inner.clear_refresh_in_doubt(name)
    }
}

fn faulty(f: &Fixture, fault: Fault) -> Arc<dyn KeyStore> {
    Arc::new(FaultyStore {
        inner: f.store.clone(),
        fault,
        struck: Default::default(),
    })
}

/// The write of new keys committed but its answer was lost: the retry finds
/// a conflict with *our own* keys, which is success, not a failed call.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_that_landed_although_it_reported_failure_counts() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
    let store = faulty(&f, Fault::CommitThenFail);
    let resp = f
        .rekey
        .send(store, "c", Request::get(&f.provider.api_url("me")))
        .await
        .expect("the call succeeds");
    assert_eq!(resp.status, 200);
    let stored = f.stored_keys("c");
    assert!(
        f.provider
            .refresh_token_is_live(str_field(&stored, "refresh_token"))
    );
    assert!(
        KeyStore::load(f.store.as_ref(), "c")
            .unwrap()
            .refresh_mark
            .is_none()
    );
}

/// Worker A's write stalls past its lease; worker B takes the lease over and
/// finds A's refresh in flight: B spends nothing (it waits for A's write, or
/// reports the refresh in doubt). The grant survives; no token is reused.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_write_never_lets_a_successor_spend_the_rotated_token() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
    let short_lease = || Config {
        lease_ttl: Duration::from_secs(2),
        http: rekey::HttpConfig {
            total_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..Config::default()
    };
    // Two workers: separate `Rekey`s share only the store (as processes do).
    let a = rekey::Rekey::new(short_lease()).unwrap();
    let b = rekey::Rekey::new(short_lease()).unwrap();
    let url = f.provider.api_url("me");
    let stalled = faulty(&f, Fault::Stall(Duration::from_secs(3)));
    let first = {
        let url = url.clone();
        tokio::spawn(async move { a.send(stalled, "c", Request::get(&url)).await })
    };
    while f.provider.stats().refreshes_granted == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = b.send(f.store_dyn(), "c", Request::get(&url)).await;
    let first = first.await.unwrap();
    let stats = f.provider.stats();
    assert_eq!(
        (stats.reused_refresh_tokens, stats.invalid_grant),
        (0, 0),
        "B spent A's rotated token: {first:?} / {second:?}"
    );
    assert_eq!(first.expect("A's call lands its write").status, 200);
    match second {
        Ok(r) => assert_eq!(r.status, 200),
        Err(e) => assert!(matches!(e, rekey::Error::RefreshInDoubt(_)), "{e}"),
    }
    let stored = f.stored_keys("c");
    assert!(
        f.provider
            .refresh_token_is_live(str_field(&stored, "refresh_token"))
    );
}

/// The refresh mark's write commits but reports failure (a PostgreSQL
/// restart between its COMMIT and the reply, the retry on a new connection
/// refused). The component reads the record back, finds its own mark, and
/// goes on: the refresh happens once, the keys land and lift the mark, so
/// the credential is never stranded "in doubt" by a write that did land.
#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_mark_that_reported_failure_does_not_strand_the_credential_in_doubt() {
    let f = Fixture::new(provider_with_ttl(Duration::from_secs(60))).await;
    f.add_credential("c", &f.settings(Strategy::EveryRequest, ClientAuth::Basic));
    let store = faulty(&f, Fault::MarkCommitsThenFails);
    let url = f.provider.api_url("me");
    let first = f
        .rekey
        .send(store.clone(), "c", Request::get(&url))
        .await
        .expect("the mark landed: the refresh goes on");
    assert_eq!(first.status, 200);
    assert_eq!(
        f.provider.stats().token_calls,
        1,
        "one token request, after the mark was confirmed"
    );
    let second = f.rekey.send(store, "c", Request::get(&url)).await;
    let stats = f.provider.stats();
    assert_eq!((stats.reused_refresh_tokens, stats.invalid_grant), (0, 0));
    assert_eq!(
        second
            .expect("the refresh token was never sent: the next call may spend it")
            .status,
        200
    );
    assert!(
        KeyStore::load(f.store.as_ref(), "c")
            .unwrap()
            .refresh_mark
            .is_none()
    );
}
