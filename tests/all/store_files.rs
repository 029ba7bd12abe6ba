//! The store as `rekey --store` is given it. A SQLite file is used only if no
//! other user could have planted, rewritten or read it (the rule ssh applies
//! to ~/.ssh); a libpq key/value string is refused, creating nothing; no form
//! of a PostgreSQL password is ever printed; PostgreSQL connects with TLS as
//! the URL's `sslmode` asks. These run as root here (as CI does): "another
//! user" is uid 65534.

use crate::support::postgres::{TLS_HOST, TlsFiles};
use crate::support::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// The README's exit code for "refreshed keys not persisted / the store is
/// unusable" (`Category::Store`).
const STORE_UNUSABLE: i32 = 7;

/// Another user's uid (`nobody`).
const OTHER_UID: u32 = 65534;

/// `rekey [-vv] --store STORE credential list`, run in `cwd`.
fn list_in(cwd: &Path, store: &str, verbose: bool) -> Output {
    let mut cmd = Command::new(rekey_bin());
    if verbose {
        cmd.arg("-vv");
    }
    cmd.current_dir(cwd)
        .args(["--store", store, "credential", "list"])
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .env_remove("REKEY_STORE")
        .output()
        .expect("run rekey")
}

fn list(store: &Path) -> Output {
    let dir = store.parent().unwrap();
    list_in(dir, store.to_str().unwrap(), false)
}

/// Exit 7, and the message says the store cannot be used and why.
fn assert_refused(out: &Output, why: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(STORE_UNUSABLE),
        "exit code; output: {}",
        all_output(out)
    );
    assert!(
        stderr.contains("cannot be used") && stderr.contains(why),
        "the message should say {why:?}: {stderr}"
    );
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", all_output(out));
}

/// A directory only this user can use, in the (sticky) temporary directory.
fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    chmod(dir.path(), 0o700);
    dir
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), None).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_planted_symlink_is_refused_and_its_target_neither_created_nor_written() {
    let dir = private_dir();
    let store = dir.path().join("rekey.db");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    chmod(&elsewhere, 0o700);
    let target = elsewhere.join("victim.db");
    std::os::unix::fs::symlink(&target, &store).unwrap();

    // Dangling: today SQLite followed it and created the target.
    assert_refused(&list(&store), "symbolic link");
    assert!(entries(&elsewhere).is_empty(), "{:?}", entries(&elsewhere));

    // Pointing at a file of ours: refused all the same, the file untouched.
    std::fs::write(&target, b"precious").unwrap();
    chmod(&target, 0o600);
    assert_refused(&list(&store), "symbolic link");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    assert_eq!(entries(&elsewhere), ["victim.db"]);
    assert!(std::fs::symlink_metadata(&store).unwrap().is_symlink());
}

#[test]
fn a_store_another_user_owns_is_refused_and_left_as_it_was() {
    let dir = private_dir();
    let store = dir.path().join("rekey.db");
    assert_ok(&list(&store)); // a real store, made by rekey
    chown(&store, OTHER_UID);
    let before = (std::fs::read(&store).unwrap(), entries(dir.path()));
    let out = list(&store);
    assert_refused(&out, "belongs to another user (uid 65534");
    let after = (std::fs::read(&store).unwrap(), entries(dir.path()));
    assert_eq!(after, before, "nothing written, no -wal or -shm made");
}

#[test]
fn a_store_others_may_write_is_refused_until_chmod_600() {
    let dir = private_dir();
    let store = dir.path().join("rekey.db");
    std::fs::write(&store, b"").unwrap();
    chmod(&store, 0o666);
    let out = list(&store);
    assert_refused(&out, "can be written by other users (mode 0666)");
    assert_refused(&out, &format!("chmod 600 {}", store.display()));
    let m = std::fs::metadata(&store).unwrap();
    assert_eq!((m.len(), m.mode() & 0o777), (0, 0o666), "not touched");

    // Doing what the message says makes it usable.
    chmod(&store, 0o600);
    assert_ok(&list(&store));
}

#[test]
fn a_store_others_may_only_read_is_made_private_with_a_warning() {
    let dir = private_dir();
    let store = dir.path().join("rekey.db");
    assert_ok(&list(&store));
    chmod(&store, 0o644);
    let out = list(&store);
    assert_ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could be read by other users"),
        "{}",
        all_output(&out)
    );
    assert_eq!(std::fs::metadata(&store).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn a_directory_others_may_write_or_own_is_refused_and_nothing_is_made_there() {
    let dir = private_dir();
    let cases: [(&str, u32, Option<u32>, &str); 4] = [
        (
            "group",
            0o770,
            None,
            "can be written by other users (mode 0770)",
        ),
        (
            "world",
            0o777,
            None,
            "can be written by other users (mode 0777)",
        ),
        // Sticky stops renames, not SQLite's -wal and -shm planted by name.
        ("sticky", 0o1777, None, "is shared (mode 1777)"),
        (
            "theirs",
            0o755,
            Some(OTHER_UID),
            "belongs to another user (uid 65534)",
        ),
    ];
    for (name, mode, owner, why) in cases {
        let sub = dir.path().join(name);
        std::fs::create_dir(&sub).unwrap();
        chmod(&sub, mode);
        if let Some(uid) = owner {
            chown(&sub, uid);
        }
        let out = list(&sub.join("rekey.db"));
        assert_refused(&out, &format!("its directory {}", sub.display()));
        assert_refused(&out, why);
        assert!(entries(&sub).is_empty(), "{name}: {:?}", entries(&sub));
    }
}

#[test]
fn an_ancestor_others_may_write_is_refused_unless_sticky() {
    let dir = private_dir();
    let open = dir.path().join("open");
    let mine = open.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    chmod(&mine, 0o700);
    chmod(&open, 0o777);
    let store = mine.join("rekey.db");
    let out = list(&store);
    assert_refused(
        &out,
        &format!("{} can be written by another user", open.display()),
    );
    assert!(entries(&mine).is_empty());
    // With the sticky bit (as /tmp has), others cannot swap `mine`.
    chmod(&open, 0o1777);
    assert_ok(&list(&store));
    assert_eq!(std::fs::metadata(&store).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn a_libpq_key_value_string_is_refused_and_creates_no_file() {
    let dir = private_dir();
    for conninfo in [
        "host=db.internal user=rekey password=hunter2 dbname=rekey",
        "dbname=rekey password=hunter2",
    ] {
        let out = list_in(dir.path(), conninfo, false);
        assert_refused(&out, "libpq key/value connection string");
        assert!(
            !all_output(&out).contains("hunter2"),
            "{}",
            all_output(&out)
        );
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }
}

#[test]
fn no_form_of_a_postgres_password_is_printed() {
    let dir = private_dir();
    // Nothing listens on port 1: each fails at once, with its URL in the message.
    for (url, secrets) in [
        (
            "postgres://rekey:hunter2@127.0.0.1:1/rekey",
            &["hunter2"][..],
        ),
        (
            "postgres://rekey@127.0.0.1:1/rekey?password=hunter2",
            &["hunter2"],
        ),
        (
            "postgresql://rekey@127.0.0.1:1/rekey?application_name=w&password=hunter2",
            &["hunter2"],
        ),
        (
            "postgres://rekey@127.0.0.1:1/rekey?PASSWORD=hunter2",
            &["hunter2"],
        ),
        (
            "postgres://rekey@127.0.0.1:1/rekey?%70assword=hunter2",
            &["hunter2"],
        ),
        (
            "postgres://rekey@127.0.0.1:1/rekey?password%3Dhunter2",
            &["hunter2"],
        ),
        (
            "postgres://rekey@127.0.0.1:1/rekey?password=hunter%32",
            &["hunter%32", "hunter2"],
        ),
        (
            "postgres://rekey:hunter%32@127.0.0.1:1/rekey",
            &["hunter%32", "hunter2"],
        ),
    ] {
        // The most verbose level: the postgres crate's own logs count too.
        let out = list_in(dir.path(), url, true);
        assert_refused(&out, "postgres");
        let all = all_output(&out);
        for secret in secrets {
            assert!(!all.contains(secret), "{url}: {all}");
        }
    }
}

/// Whether the server says the session whose `application_name` is `app`
/// is encrypted (`pg_stat_ssl`), asked over a connection of its own.
fn encrypted(server_url: &str, app: &str) -> Vec<bool> {
    let mut admin = ::postgres::Client::connect(server_url, ::postgres::NoTls).unwrap();
    admin
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = $1",
            &[&app],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The server's URL with these query parameters added.
fn with_params(pg: &crate::support::postgres::Postgres, host: &str, params: &str) -> String {
    format!("postgres://postgres@{host}:{}/postgres?{params}", pg.port)
}

fn rootcert(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

#[test]
fn postgres_sslmode_require_and_prefer_encrypt_the_session() {
    let Some((pg, _tls)) = crate::support::postgres::start_with_tls() else {
        return;
    };
    // Each store keeps its connection open while it lives: the server's view
    // of it is read while it does.
    for (params, app, ssl) in [
        ("sslmode=require", "rekey-require", true),
        ("sslmode=prefer", "rekey-prefer", true),
        // No sslmode: plain, as before TLS existed (rekey's documented default).
        ("", "rekey-default", false),
    ] {
        let url = with_params(
            &pg,
            "127.0.0.1",
            &format!("application_name={app}&{params}"),
        );
        let store = rekey::store::open(&url).unwrap_or_else(|e| panic!("{params}: {e}"));
        assert!(store.list().unwrap().is_empty());
        assert_eq!(encrypted(&pg.url, app), [ssl], "{params}");
    }
}

#[test]
fn postgres_verify_full_checks_the_ca_and_the_host_name() {
    let Some((pg, tls)) = crate::support::postgres::start_with_tls() else {
        return;
    };
    let TlsFiles { ca, other_ca, .. } = &tls;
    // Connect to 127.0.0.1, but verify (and name in SNI) the URL's host.
    let named = "hostaddr=127.0.0.1&";
    let connects = [
        // The certificate names 127.0.0.1 and db.rekey.test.
        ("127.0.0.1", format!("sslmode=verify-full&{}", rootcert(ca))),
        (
            TLS_HOST,
            format!("{named}sslmode=verify-full&{}", rootcert(ca)),
        ),
        // verify-ca checks the chain only; require with a CA does the same.
        (
            "wrong.rekey.test",
            format!("{named}sslmode=verify-ca&{}", rootcert(ca)),
        ),
        (
            "wrong.rekey.test",
            format!("{named}sslmode=require&{}", rootcert(ca)),
        ),
    ];
    for (i, (host, params)) in connects.iter().enumerate() {
        let app = format!("rekey-verify-{i}");
        let url = with_params(&pg, host, &format!("application_name={app}&{params}"));
        let store = rekey::store::open(&url).unwrap_or_else(|e| panic!("{host} {params}: {e}"));
        assert!(store.list().unwrap().is_empty());
        assert_eq!(encrypted(&pg.url, &app), [true], "{host} {params}");
    }

    let refused = [
        (
            "127.0.0.1",
            format!("sslmode=verify-full&{}", rootcert(other_ca)),
            "UnknownIssuer",
        ),
        (
            "127.0.0.1",
            format!("sslmode=verify-ca&{}", rootcert(other_ca)),
            "UnknownIssuer",
        ),
        (
            "127.0.0.1",
            format!("sslmode=require&{}", rootcert(other_ca)),
            "UnknownIssuer",
        ),
        (
            "wrong.rekey.test",
            format!("{named}sslmode=verify-full&{}", rootcert(ca)),
            "not valid for name",
        ),
    ];
    for (host, params, why) in &refused {
        let url = with_params(&pg, host, params);
        let err = rekey::store::open(&url).err().expect("refused");
        let message = err.to_string();
        assert!(
            message.contains("invalid peer certificate") && message.contains(why),
            "{host} {params}: {message}"
        );
    }

    // Through the binary: the store-unusable exit code and the reason.
    let url = with_params(
        &pg,
        "127.0.0.1",
        &format!("sslmode=verify-full&{}", rootcert(other_ca)),
    );
    let out = list_in(tls.ca.parent().unwrap(), &url, false);
    assert_refused(&out, "invalid peer certificate");
}

/// Processes that create one new store at once all open it (a fleet's
/// first start; `credential add` run in parallel, as the oidc-provider
/// scenarios do): none is told "database is locked". SQLite calls no busy
/// handler for the lock upgrade of a new store's switch to WAL, so under
/// load one of them failed at once before the store waited for it itself
/// (the deterministic case is the unit test
/// `a_new_stores_switch_to_wal_waits_for_another_openers_lock`).
#[test]
fn processes_creating_one_new_store_at_once_all_open_it() {
    const PROCESSES: usize = 8;
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("new.db");
        let children: Vec<_> = (0..PROCESSES)
            .map(|i| {
                Command::new(rekey_bin())
                    .arg("--store")
                    .arg(&store)
                    .args(["credential", "add", &format!("c{i}")])
                    .args(["--token-url", "http://127.0.0.1:9/token"])
                    .args(["--client-id", "app", "--public-client"])
                    .args(["--api-origin", "http://127.0.0.1:9"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .env_remove("RUST_LOG")
                    .spawn()
                    .expect("run rekey")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", all_output(&out));
        }
        let listed = list(&store);
        assert_eq!(
            String::from_utf8_lossy(&listed.stdout).lines().count(),
            PROCESSES,
            "{}",
            all_output(&listed)
        );
    }
}
