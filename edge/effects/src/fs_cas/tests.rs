//! The record store's logic over `std::fs` in a real temp directory: the
//! same `FileCas` the proxy runs, its `Dir` backed by the host's files. A
//! write is held between its version check and its commit by running
//! another writer inside `before_commit`: the interleaving is fixed, not
//! left to a scheduler.

use super::*;
use crate::exports::rekey::oauth2::types::{CredentialRecord, WriteError};
use crate::store;
use std::cell::RefCell;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static UNIQUE: AtomicU64 = AtomicU64::new(1);

type Hook = Box<dyn FnOnce()>;

struct StdDir {
    path: PathBuf,
    /// Runs in `before_commit`, once: what happens while the write is held.
    hook: RefCell<Option<Hook>>,
    notes: RefCell<Vec<String>>,
    fail_links: bool,
}

fn io(what: &str, file: &str, e: std::io::Error) -> String {
    format!("{what} {file}: {:?}", e.kind())
}

impl Dir for StdDir {
    fn list(&self) -> Result<Vec<String>, String> {
        fs::read_dir(&self.path)
            .map_err(|e| io("listing", ".", e))?
            .map(|e| {
                e.map(|e| e.file_name().to_string_lossy().into_owned())
                    .map_err(|e| io("listing", ".", e))
            })
            .collect()
    }

    fn read(&self, file: &str) -> Result<Option<Vec<u8>>, String> {
        let at = self.path.join(file);
        match fs::symlink_metadata(&at) {
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io("examining", file, e)),
            Ok(m) if !m.is_file() => return Err(format!("{file} is not a regular file")),
            Ok(_) => {}
        }
        match fs::read(&at) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            other => other.map(Some).map_err(|e| io("reading", file, e)),
        }
    }

    fn create(&self, file: &str, data: &[u8]) -> Result<(), String> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path.join(file))
            .map_err(|e| io("creating", file, e))?;
        f.write_all(data)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("writing", file, e))
    }

    fn link(&self, from: &str, to: &str) -> Result<(), LinkError> {
        if self.fail_links {
            return Err(LinkError::Other("linking: the disk is full".into()));
        }
        match fs::hard_link(self.path.join(from), self.path.join(to)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(LinkError::Exists),
            Err(e) => Err(LinkError::Other(io("linking", to, e))),
        }
    }

    fn remove(&self, file: &str) {
        let _ = fs::remove_file(self.path.join(file));
    }

    fn sync(&self) -> Result<(), String> {
        fs::File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("syncing", ".", e))
    }

    fn modified_ms(&self, file: &str) -> Option<u64> {
        let t = fs::metadata(self.path.join(file)).ok()?.modified().ok()?;
        Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
    }

    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn random(&self) -> u64 {
        UNIQUE.fetch_add(1, Ordering::Relaxed) ^ (u64::from(std::process::id()) << 40)
    }

    fn note(&self, msg: &str) {
        self.notes.borrow_mut().push(msg.into());
    }

    fn before_commit(&self) -> bool {
        let hook = self.hook.borrow_mut().take();
        hook.map(|h| h()).is_some()
    }
}

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "rekey-fs-cas-{}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&path).unwrap();
        TempDir(path)
    }

    /// The directory's names, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn put(&self, file: &str, data: &str) {
        fs::write(self.0.join(file), data).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn cas(path: &Path) -> FileCas<StdDir> {
    cas_with(path, None)
}

fn cas_with(path: &Path, hook: Option<Hook>) -> FileCas<StdDir> {
    let dir = StdDir {
        path: path.into(),
        hook: RefCell::new(hook),
        notes: RefCell::new(Vec::new()),
        fail_links: false,
    };
    FileCas::new(dir, "cred").unwrap_or_else(|e| panic!("{e}"))
}

fn data(who: &str) -> CredentialRecord {
    CredentialRecord {
        keys: Some(format!("{{\"who\":\"{who}\"}}")),
        lease: None,
        refresh_mark: None,
        dead_grant: None,
    }
}

/// (version, keys) as read through the store, as the guest reads it.
fn read(path: &Path) -> (u64, Option<String>) {
    let r = store::read(&cas(path)).unwrap_or_else(|e| panic!("{e}"));
    (r.version, r.data.keys)
}

fn write(path: &Path, expected: u64, who: &str) -> u64 {
    match store::write(&cas(path), expected, &data(who), 1) {
        Ok(v) => v,
        Err(e) => panic!("writing {who} on version {expected}: {e:?}"),
    }
}

fn generations(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| n.starts_with("cred@"))
        .cloned()
        .collect()
}

#[test]
fn a_write_held_past_newer_writes_never_lands_over_them() {
    // Writer A checks version 1, is held; B writes `n` versions meanwhile;
    // then A commits. A conflict while its generation's name is kept (n <=
    // KEEP), unknown after (its link took a removed name: shadowed).
    for n in 1..=KEEP + 2 {
        let d = TempDir::new();
        write(&d.0, 0, "first");
        let other = d.0.clone();
        let meanwhile: Hook = Box::new(move || {
            for v in 1..=n {
                write(&other, v, &format!("b{v}"));
            }
        });
        let a = cas_with(&d.0, Some(meanwhile));
        let outcome = store::write(&a, 1, &data("held"), 1);
        let expected_conflict = n <= KEEP;
        match &outcome {
            Err(WriteError::Conflict) if expected_conflict => {}
            Err(WriteError::Unknown(m)) if !expected_conflict => {
                assert!(m.contains("stalled write"), "{m}");
            }
            other => panic!("held through {n} writes: {other:?}"),
        }
        let notes = a.dir.notes.borrow();
        let ended = if expected_conflict {
            "conflict"
        } else {
            "unknown"
        };
        assert!(
            notes[0].starts_with(&format!("test hook: the held write ended: {ended}")),
            "{notes:?}"
        );
        // The record is B's last write; A's bytes are nowhere.
        let bs = format!("{{\"who\":\"b{n}\"}}");
        assert_eq!(read(&d.0), (n + 1, Some(bs)), "held through {n} writes");
        let names = d.names();
        for file in &names {
            let bytes = fs::read(d.0.join(file)).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("held"),
                "{file} holds the held write (through {n} writes)"
            );
        }
        let mut kept: Vec<String> = ((n + 1).saturating_sub(KEEP) + 1..=n + 1)
            .map(|g| format!("cred@{g}.json"))
            .collect();
        kept.sort();
        assert_eq!(names, kept, "held through {n} writes");
    }
}

#[test]
fn a_write_on_an_old_version_is_a_conflict_and_writes_nothing() {
    let d = TempDir::new();
    write(&d.0, 0, "one");
    write(&d.0, 1, "two");
    let before = d.names();
    assert!(matches!(
        store::write(&cas(&d.0), 1, &data("late"), 1),
        Err(WriteError::Conflict)
    ));
    assert_eq!(d.names(), before);
    assert_eq!(read(&d.0), (2, Some("{\"who\":\"two\"}".into())));
}

#[test]
fn nothing_stored_reads_as_version_0_and_the_first_write_is_generation_1() {
    let d = TempDir::new();
    assert_eq!(read(&d.0), (0, None));
    assert_eq!(write(&d.0, 0, "first"), 1);
    assert_eq!(d.names(), ["cred@1.json"]);
}

#[test]
fn the_single_file_layout_is_generation_0_until_the_first_write_removes_it() {
    let d = TempDir::new();
    let old = String::from_utf8(record::encode(7, &data("old"), 1).into_bytes()).unwrap();
    d.put("cred.json", &old);
    d.put("cred.lock", "0123456789abcdef0123456789abcdef\n");
    assert_eq!(read(&d.0), (7, Some("{\"who\":\"old\"}".into())));
    assert!(matches!(
        store::write(&cas(&d.0), 6, &data("x"), 1),
        Err(WriteError::Conflict)
    ));
    assert_eq!(write(&d.0, 7, "new"), 8);
    assert_eq!(d.names(), ["cred@1.json"]);
    assert_eq!(read(&d.0), (8, Some("{\"who\":\"new\"}".into())));
}

#[test]
fn a_0_2_token_set_is_version_0_and_its_files_go_with_the_first_write() {
    let d = TempDir::new();
    d.put(
        "cred.json",
        "{\"access_token\":\"a\",\"refresh_token\":\"r\"}",
    );
    d.put("cred.inflight", "0000000000000000");
    d.put("cred.lease", "x");
    assert_eq!(
        read(&d.0),
        (
            0,
            Some("{\"access_token\":\"a\",\"refresh_token\":\"r\"}".into())
        )
    );
    assert_eq!(write(&d.0, 0, "new"), 1);
    assert_eq!(d.names(), ["cred@1.json"]);
}

#[test]
fn a_single_file_beside_generations_is_not_read_and_goes_with_the_next_write() {
    let d = TempDir::new();
    write(&d.0, 0, "gen");
    let planted = String::from_utf8(record::encode(50, &data("planted"), 1).into_bytes()).unwrap();
    d.put("cred.json", &planted);
    assert_eq!(read(&d.0), (1, Some("{\"who\":\"gen\"}".into())));
    write(&d.0, 1, "next");
    assert_eq!(d.names(), ["cred@1.json", "cred@2.json"]);
}

#[test]
fn the_newest_generation_is_the_record_and_leftovers_are_cleaned() {
    // A writer killed between its link and its cleanup leaves old
    // generations; one killed before its link, a temp file.
    let d = TempDir::new();
    for v in 0..10 {
        write(&d.0, v, &format!("w{v}"));
    }
    let old_gen = d.0.join("cred@3.json");
    fs::copy(d.0.join("cred@10.json"), &old_gen).unwrap();
    d.put(".cred@4.00000000000000aa.tmp", "stale");
    d.put(".cred@4.00000000000000bb.tmp", "fresh");
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    fs::File::options()
        .write(true)
        .open(d.0.join(".cred@4.00000000000000aa.tmp"))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    // Not this credential's, or not a name the store writes: left alone.
    let foreign = [
        ".other@4.00000000000000cc.tmp",
        "cred@011.json",
        "cred.x@99.json",
        "other@99.json",
    ];
    for f in foreign {
        d.put(f, "{}");
        fs::File::options()
            .write(true)
            .open(d.0.join(f))
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    assert_eq!(read(&d.0), (10, Some("{\"who\":\"w9\"}".into())));
    write(&d.0, 10, "w10");
    let mut expected: Vec<String> = (8..=11).map(|g| format!("cred@{g}.json")).collect();
    expected.push(".cred@4.00000000000000bb.tmp".into());
    expected.extend(foreign.iter().map(|f| f.to_string()));
    expected.sort();
    assert_eq!(d.names(), expected);
}

#[test]
fn a_failed_link_writes_nothing_and_leaves_no_temp_file() {
    let d = TempDir::new();
    write(&d.0, 0, "one");
    let mut failing = cas(&d.0);
    failing.dir.fail_links = true;
    match store::write(&failing, 1, &data("two"), 1) {
        Err(WriteError::Failed(m)) => assert!(m.contains("disk is full"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(d.names(), ["cred@1.json"]);
}

#[test]
fn names_are_parsed_exactly() {
    let c = cas(&std::env::temp_dir());
    assert_eq!(c.generation_of("cred@0.json"), Some(0));
    assert_eq!(c.generation_of("cred@17.json"), Some(17));
    for not in [
        "cred@017.json",
        "cred@.json",
        "cred@1.json.tmp",
        "cred@1x.json",
        "cred@+1.json",
        "cred.json",
        "credx@1.json",
        "cred.x@1.json",
        "cred@99999999999999999999.json",
    ] {
        assert_eq!(c.generation_of(not), None, "{not}");
    }
    assert!(c.is_temp(".cred@3.0123456789abcdef.tmp"));
    for not in [
        ".cred@3.0123456789abcde.tmp",
        ".cred@3.0123456789abcdeg.tmp",
        ".cred@03.0123456789abcdef.tmp",
        ".cred.json.0123456789abcdef.tmp",
        ".credx@3.0123456789abcdef.tmp",
        "cred@3.0123456789abcdef.tmp",
    ] {
        assert!(!c.is_temp(not), "{not}");
    }
    for bad in ["", ".hidden", "a@b", "a/b", "a b"] {
        assert!(FileCas::new(cas(Path::new(".")).dir, bad).is_err(), "{bad}");
    }
}

#[test]
fn concurrent_writers_lose_no_update() {
    // Threads add 1 to a counter in the record, each on its own `FileCas`
    // over the one directory, until 25 of their writes each were ok,
    // retrying on conflicts. A lost update would leave the counter below
    // the writes answered ok. A write answered `unknown` (it linked, then
    // saw four newer generations: built on, or shadowed) may or may not
    // count, so the counter lies between the oks and the oks plus unknowns.
    const THREADS: u64 = 4;
    const EACH: u64 = 25;
    let d = TempDir::new();
    let count = |keys: &Option<String>| -> u64 {
        keys.as_deref().map_or(0, |k| {
            let v: serde_json::Value = serde_json::from_str(k).unwrap();
            v["n"].as_u64().unwrap()
        })
    };
    let unknowns = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let path = d.0.clone();
            let (count, unknowns) = (&count, &unknowns);
            s.spawn(move || {
                let c = cas(&path);
                let mut oks = 0;
                while oks < EACH {
                    let now = store::read(&c).unwrap_or_else(|e| panic!("{e}"));
                    let mut next = data("");
                    next.keys = Some(format!(
                        "{{\"n\":{},\"by\":\"{t}-{oks}\"}}",
                        count(&now.data.keys) + 1
                    ));
                    match store::write(&c, now.version, &next, 1) {
                        Ok(_) => oks += 1,
                        Err(WriteError::Conflict) => {}
                        Err(WriteError::Unknown(_)) => {
                            unknowns.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(WriteError::Failed(m)) => panic!("{m}"),
                    }
                }
            });
        }
    });
    let (version, keys) = read(&d.0);
    let (n, oks, unknowns) = (count(&keys), THREADS * EACH, unknowns.into_inner());
    assert!(
        oks <= n && n <= oks + unknowns,
        "counter {n} for {oks} writes answered ok and {unknowns} unknown"
    );
    assert_eq!(version, n);
    assert!(
        generations(&d.names()).len() <= KEEP as usize,
        "{:?}",
        d.names()
    );
}

#[test]
fn a_record_linked_after_a_read_is_never_written_over_even_at_the_same_version() {
    // The README's re-keying: an operator links a plain token set as the
    // next generation, and a plain token set reads as version 0. A request
    // reads K2 (version 0); the operator re-keys again with K3 (version 0
    // too); the request's write on what it read, expecting version 0, would
    // bring K2 back and lose K3: it is a conflict, and writes nothing.
    let d = TempDir::new();
    write(&d.0, 0, "first");
    d.put(
        "cred@2.json",
        "{\"access_token\":\"k2\",\"refresh_token\":\"r2\"}",
    );
    let request = cas(&d.0);
    let seen = store::read(&request).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen.version, 0);
    d.put(
        "cred@3.json",
        "{\"access_token\":\"k3\",\"refresh_token\":\"r3\"}",
    );
    let before = d.names();
    assert!(matches!(
        store::write(&request, 0, &seen.data, 1),
        Err(WriteError::Conflict)
    ));
    assert_eq!(d.names(), before);
    let k3 = "{\"access_token\":\"k3\",\"refresh_token\":\"r3\"}";
    assert_eq!(read(&d.0), (0, Some(k3.into())));
    // Read again, the request writes on K3.
    let now = store::read(&request).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(now.data.keys.as_deref(), Some(k3));
    assert_eq!(store::write(&request, 0, &now.data, 1).ok(), Some(1));
    assert_eq!(read(&d.0), (1, Some(k3.into())));
}

#[test]
fn the_single_file_edited_in_place_after_a_read_is_a_conflict() {
    // Before the first generation, `<name>.json` is the record, and an
    // operator may rewrite it where it is.
    let d = TempDir::new();
    d.put(
        "cred.json",
        "{\"access_token\":\"k1\",\"refresh_token\":\"r1\"}",
    );
    let request = cas(&d.0);
    let seen = store::read(&request).unwrap_or_else(|e| panic!("{e}"));
    d.put(
        "cred.json",
        "{\"access_token\":\"k2\",\"refresh_token\":\"r2\"}",
    );
    assert!(matches!(
        store::write(&request, 0, &seen.data, 1),
        Err(WriteError::Conflict)
    ));
    assert_eq!(d.names(), ["cred.json"]);
    // Nothing stored when read, a seed placed since: a conflict too.
    let empty = TempDir::new();
    let request = cas(&empty.0);
    assert_eq!(store::read(&request).map(|r| r.version).ok(), Some(0));
    empty.put(
        "cred.json",
        "{\"access_token\":\"k\",\"refresh_token\":\"r\"}",
    );
    assert!(matches!(
        store::write(&request, 0, &data("blind"), 1),
        Err(WriteError::Conflict)
    ));
    assert_eq!(empty.names(), ["cred.json"]);
}

#[test]
fn a_request_writes_on_its_own_writes_without_reading_again() {
    // A refresh: read, then lease, mark and keys, each on the version the
    // last write returned. Another instance's write in between is a
    // conflict for the next.
    let d = TempDir::new();
    write(&d.0, 0, "first");
    let request = cas(&d.0);
    let v = store::read(&request)
        .unwrap_or_else(|e| panic!("{e}"))
        .version;
    let mut version = v;
    for step in ["lease", "mark", "keys"] {
        version = store::write(&request, version, &data(step), 1)
            .unwrap_or_else(|e| panic!("{step}: {e:?}"));
    }
    assert_eq!(read(&d.0), (v + 3, Some("{\"who\":\"keys\"}".into())));
    write(&d.0, version, "other");
    assert!(matches!(
        store::write(&request, version + 1, &data("late"), 1),
        Err(WriteError::Conflict)
    ));
    assert_eq!(read(&d.0), (v + 4, Some("{\"who\":\"other\"}".into())));
}
