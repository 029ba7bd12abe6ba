//! The store's disk fills up in the middle of a refresh, after the provider
//! rotated the refresh token: a real SQLite store on a small real tmpfs,
//! filled by a file at the moment the token request arrives (the provider's
//! `before_refresh_answer` hook), so the write of the new keys meets a real
//! ENOSPC ("database or disk is full").
//!
//! Mounting needs root (as `.ci/run` runs); where the machine does not allow
//! it the scenarios say why and pass, unless `REKEY_REQUIRE_PEERS` is set.

use crate::support::*;
use rekey::observe::Observer;
use rekey::{
    ClientAuth, Config, Credential, KeyStore, Record, Rekey, Request, Settings, SqliteStore,
    StoreError, Strategy, TokenSet,
};
use rekey_testkit::{Provider, ProviderConfig};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The tmpfs: room for the store (a few pages, its WAL and shared memory).
const SIZE: &str = "1m";

/// A tmpfs mounted on a temporary directory, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one, or says why not (a failure under `REKEY_REQUIRE_PEERS`).
    fn mount() -> Option<Tmpfs> {
        let dir = tempfile::Builder::new()
            .prefix("rekey-full")
            .tempdir()
            .expect("temp dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={SIZE},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            Ok(out) => {
                missing_peer(&format!(
                    "cannot mount a tmpfs here ({}; mounting needs root), so the full-disk scenarios did NOT run",
                    String::from_utf8_lossy(&out.stderr)
                        .trim()
                        .replace('\n', " ")
                ));
                None
            }
            Err(e) => {
                missing_peer(&format!(
                    "cannot run mount ({e}), so the full-disk scenarios did NOT run"
                ));
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |lazy: bool| {
            let mut cmd = Command::new("umount");
            if lazy {
                cmd.arg("-l");
            }
            cmd.arg(self.dir.path())
                .output()
                .is_ok_and(|o| o.status.success())
        };
        // A file still open keeps it busy: detach it then, never leave it.
        if !umount(false) && !umount(true) {
            eprintln!(
                "could not unmount the tmpfs at {}",
                self.dir.path().display()
            );
        }
    }
}

/// A file that takes every free block of the tmpfs, and gives them back.
#[derive(Clone)]
struct Filler {
    path: PathBuf,
}

impl Filler {
    fn on(fs: &Tmpfs) -> Filler {
        Filler {
            path: fs.path().join("filler"),
        }
    }

    /// Writes until the filesystem refuses (ENOSPC); returns the bytes written.
    fn fill(&self) -> u64 {
        let mut file = std::fs::File::create(&self.path).expect("create the filler");
        let mut written = 0u64;
        // Big writes first, then page by page for the remainder.
        for chunk in [64 * 1024, 4096, 512] {
            let zeros = vec![0u8; chunk];
            loop {
                match file.write(&zeros) {
                    Ok(0) => break,
                    Ok(n) => written += n as u64,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => panic!("filling the tmpfs: {e}"),
                }
            }
        }
        written
    }

    fn free(&self) {
        std::fs::remove_file(&self.path).expect("remove the filler");
    }
}

/// Free bytes on the filesystem holding `path`, for unprivileged users.
fn available(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a buffer of the right type.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail as u64 * s.f_frsize as u64
}

/// The SQLite store, passed through; failed `save_keys` are counted (with
/// their messages) and `after_failed_save(n)` runs after the n-th. Nothing
/// is injected: every failure is SQLite's own.
struct Watched {
    inner: Arc<SqliteStore>,
    failed_saves: AtomicU32,
    messages: Mutex<Vec<String>>,
    after_failed_save: Box<dyn Fn(u32) + Send + Sync>,
}

impl KeyStore for Watched {
    fn load(&self, name: &str) -> Result<Credential, StoreError> {
        self.inner.load(name)
    }
    fn write_record(&self, name: &str, expected: u64, record: &Record) -> Result<u64, StoreError> {
        let saved = self.inner.write_record(name, expected, record);
        // Counted: the write that ends a refresh (the keys, no lease, no mark).
        let ends_refresh = record.lease.is_none() && record.refresh_mark.is_none();
        if let (true, Err(e)) = (ends_refresh, &saved) {
            self.messages.lock().unwrap().push(e.to_string());
            let n = self.failed_saves.fetch_add(1, Ordering::SeqCst) + 1;
            (self.after_failed_save)(n);
        }
        saved
    }
    fn put(
        &self,
        name: &str,
        settings: &Settings,
        keys: Option<&TokenSet>,
    ) -> Result<(), StoreError> {
        self.inner.put(name, settings, keys)
    }
    fn list(&self) -> Result<Vec<Credential>, StoreError> {
        self.inner.list()
    }
    fn remove(&self, name: &str) -> Result<bool, StoreError> {
        self.inner.remove(name)
    }
    fn clear_refresh_in_doubt(&self, name: &str) -> Result<(), StoreError> {
        self.inner.clear_refresh_in_doubt(name)
    }
}

/// One scenario's world: a strict provider (rotation, reuse detection), a
/// store on the tmpfs with one credential (every-request: each call
/// refreshes), and a `Rekey` whose lease lasts 6 s (the component retries a
/// failed keys write for as long as its lease lasts).
struct World {
    provider: Arc<Provider>,
    sqlite: Arc<SqliteStore>,
    store: Arc<Watched>,
    rekey: Rekey,
    events: Arc<Recorder>,
}

impl World {
    async fn new(fs: &Tmpfs, after_failed_save: impl Fn(u32) + Send + Sync + 'static) -> World {
        let provider = Provider::start(ProviderConfig {
            access_ttl: Duration::from_secs(60),
            ..ProviderConfig::default()
        })
        .await
        .expect("provider");
        let sqlite = Arc::new(SqliteStore::open(fs.path().join("rekey.db")).expect("store"));
        let settings = client_settings(&provider, Strategy::EveryRequest, ClientAuth::Basic);
        sqlite
            .put("c", &settings, Some(&first_token_set(&provider)))
            .expect("credential");
        let events = Arc::new(Recorder::default());
        let rekey = Rekey::new(Config {
            // Generous for a token exchange on loopback, so that a loaded
            // machine cannot turn the answer into a timeout (whose prompt
            // retry would present the spent token).
            http: rekey::HttpConfig {
                total_timeout: Duration::from_secs(5),
                ..Default::default()
            },
            // A lease left behind (its release failed on the full disk) runs
            // out this long after the refresh began.
            lease_ttl: Duration::from_secs(6),
            observer: events.clone() as Arc<dyn Observer>,
            ..Config::default()
        })
        .expect("rekey");
        let store = Arc::new(Watched {
            inner: sqlite.clone(),
            failed_saves: AtomicU32::new(0),
            messages: Mutex::default(),
            after_failed_save: Box::new(after_failed_save),
        });
        World {
            provider,
            sqlite,
            store,
            rekey,
            events,
        }
    }

    async fn call(&self) -> Result<rekey::Response, rekey::Error> {
        self.rekey
            .send(
                self.store.clone(),
                "c",
                Request::get(&self.provider.api_url("me")),
            )
            .await
    }

    fn stored_refresh_token_is_live(&self) -> bool {
        let keys = self.sqlite.load("c").unwrap().keys.expect("keys stored");
        let keys: serde_json::Value = serde_json::from_str(keys.expose()).unwrap();
        self.provider
            .refresh_token_is_live(str_field(&keys, "refresh_token"))
    }

    fn failed_saves(&self) -> (u32, Vec<String>) {
        (
            self.store.failed_saves.load(Ordering::SeqCst),
            self.store.messages.lock().unwrap().clone(),
        )
    }
}

/// Fills the disk when the first refresh is granted (the provider has
/// rotated, its answer not yet sent); returns how much the filler took.
fn fill_at_first_refresh(world: &World, filler: &Filler, fs: &Tmpfs) -> Arc<AtomicU32> {
    let took = Arc::new(AtomicU32::new(0));
    let (filler, took2, root) = (filler.clone(), took.clone(), fs.path().to_owned());
    world.provider.before_refresh_answer(move |n| {
        if n == 1 {
            let bytes = filler.fill();
            assert_eq!(available(&root), 0, "the tmpfs is full");
            took2.store((bytes / 1024) as u32, Ordering::SeqCst);
        }
    });
    took
}

/// The disk fills after the provider rotated the refresh token and is freed
/// while the call still retries its write (after the second failed
/// attempt): the keys land, the call succeeds, and the stored refresh token
/// is the live one, which the next call spends without any reuse.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_that_fills_during_a_refresh_and_frees_within_the_retries_keeps_the_grant() {
    let Some(fs) = Tmpfs::mount() else { return };
    let filler = Filler::on(&fs);
    let freer = filler.clone();
    let world = World::new(&fs, move |n| {
        if n == 2 {
            freer.free();
        }
    })
    .await;
    let took = fill_at_first_refresh(&world, &filler, &fs);

    let started = Instant::now();
    let result = world.call().await;
    let elapsed = started.elapsed();
    let (failed, messages) = world.failed_saves();
    let stats = world.provider.stats();
    crate::fleet::report(format!(
        "full disk, freed within the retries: filler {} KiB, {failed} keys writes failed ({:?}), then the write landed; call {:?} in {:.2} s; refreshes {}, reused refresh tokens {}, invalid_grant {}",
        took.load(Ordering::SeqCst),
        messages.first(),
        result
            .as_ref()
            .map(|r| r.status)
            .map_err(ToString::to_string),
        elapsed.as_secs_f64(),
        stats.refreshes_granted,
        stats.reused_refresh_tokens,
        stats.invalid_grant
    ));
    assert_eq!(
        stats.refreshes_granted, 1,
        "the provider rotated: {stats:?}"
    );
    assert_eq!(
        failed, 2,
        "the full disk failed the keys write twice, then it landed: {messages:?}"
    );
    assert!(
        messages.iter().all(|m| m.contains("disk is full")),
        "{messages:?}"
    );
    assert_eq!(
        result
            .expect("the call succeeds once its write lands")
            .status,
        200
    );
    let stored = world.sqlite.load("c").unwrap();
    assert!(!stored.refresh_in_doubt(), "the saved keys lift the mark");
    assert!(
        world.stored_refresh_token_is_live(),
        "the rotated refresh token reached the store"
    );
    assert!(
        world
            .events
            .take()
            .iter()
            .any(|e| e == "persisted rotated=true")
    );

    // The next call spends the stored (rotated) refresh token: it works.
    assert_eq!(world.call().await.expect("the next call").status, 200);
    let stats = world.provider.stats();
    assert_eq!(stats.refreshes_granted, 2);
    assert_eq!((stats.reused_refresh_tokens, stats.invalid_grant), (0, 0));
    assert!(world.stored_refresh_token_is_live());
    drop(world);
}

/// The disk stays full for longer than the call retries its write: the call
/// fails with an error that names the failed write and the refresh in doubt
/// (the rotated token is lost; nothing can save it), and the store keeps the
/// refresh mark. Once space returns, the next call spends nothing: it
/// reports the refresh in doubt instead of presenting the spent refresh
/// token (which would make the provider revoke the grant and answer
/// invalid_grant). Authorising again clears it.
#[tokio::test(flavor = "multi_thread")]
async fn a_disk_full_for_longer_than_the_retries_says_refresh_in_doubt_and_spends_nothing_later() {
    let Some(fs) = Tmpfs::mount() else { return };
    let filler = Filler::on(&fs);
    let world = World::new(&fs, |_| {}).await;
    let took = fill_at_first_refresh(&world, &filler, &fs);

    let started = Instant::now();
    let err = world
        .call()
        .await
        .expect_err("the keys cannot be written while the disk is full");
    let elapsed = started.elapsed();
    let (failed, messages) = world.failed_saves();
    let message = err.to_string();
    assert_eq!(world.provider.stats().refreshes_granted, 1);
    assert!(matches!(err, rekey::Error::KeysNotPersisted(_)), "{err:?}");
    assert_eq!(err.category(), rekey::Category::Store);
    assert!(
        message.contains("database or disk is full"),
        "the error names the failed write: {message}"
    );
    assert!(
        message.contains("refresh-in-doubt") && message.contains("may have rotated"),
        "the error says the refresh is in doubt: {message}"
    );
    assert!(failed >= 2, "the write was retried: {messages:?}");
    assert!(
        world.sqlite.load("c").unwrap().refresh_mark.is_some(),
        "the mark set before the token request stays"
    );

    // Space returns. The stored refresh token was spent at the provider;
    // the next call must not present it.
    filler.free();
    let token_calls = world.provider.stats().token_calls;
    let next_started = Instant::now();
    let next = world
        .call()
        .await
        .expect_err("the next call reports the doubt");
    let next_elapsed = next_started.elapsed();
    let stats = world.provider.stats();
    crate::fleet::report(format!(
        "full disk for longer than the retries: filler {} KiB, {failed} keys writes failed in {:.2} s, then: {message}; after space returned the next call took {:.2} s (the lease whose release failed on the full disk runs out 6 s after the refresh began; then 2 s for a late write) and said: {next}; token-endpoint calls {} -> {}, reused refresh tokens {}, invalid_grant {}",
        took.load(Ordering::SeqCst),
        elapsed.as_secs_f64(),
        next_elapsed.as_secs_f64(),
        token_calls,
        stats.token_calls,
        stats.reused_refresh_tokens,
        stats.invalid_grant
    ));
    assert!(matches!(next, rekey::Error::RefreshInDoubt(_)), "{next:?}");
    assert_eq!(next.category(), rekey::Category::RefreshInDoubt);
    assert_eq!(
        stats.token_calls, token_calls,
        "nothing was sent to the token endpoint"
    );
    assert_eq!((stats.reused_refresh_tokens, stats.invalid_grant), (0, 0));

    // A person authorises again: new keys clear the mark, calls work.
    let settings = world.sqlite.load("c").unwrap().settings;
    world
        .sqlite
        .put("c", &settings, Some(&first_token_set(&world.provider)))
        .unwrap();
    assert_eq!(world.call().await.expect("after new keys").status, 200);
    let stats = world.provider.stats();
    assert_eq!((stats.reused_refresh_tokens, stats.invalid_grant), (0, 0));
    drop(world);
}
