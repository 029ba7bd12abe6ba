//! `Cas` over a preopened directory (`wasmtime serve --dir`), safe for the
//! concurrent requests of one server and for several servers sharing the
//! directory:
//!
//! - `<name>.json` holds the record. Readers take no lock: it is only ever
//!   replaced by a rename, so a reader sees the old or the new file whole.
//! - An update holds `<name>.lock`, created exclusively: read the current
//!   file, write a temp file, sync it, check the lock is still ours, rename
//!   it over `<name>.json`, sync the directory, remove the lock.
//! - A lock older than `LOCK_STALE_MS` belongs to a writer that died (an
//!   update holds it for a few syncs): it is moved aside under a private
//!   name and removed, and put back if what moved was a fresh lock after all.

use crate::exports::rekey::oauth2::types::RefreshMark;
use crate::record::{self, Decoded};
use crate::store::{Cas, CasError, Next};
use crate::wasi::filesystem::preopens;
use crate::wasi::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
};
use crate::wasi::random::random::get_random_u64;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use rekey_edge_rt::time;

/// A lock this old (by its modification time) was left by a writer that died.
const LOCK_STALE_MS: u64 = 10_000;
/// How long an update waits for the lock: past the stale age, so a lock left
/// behind is broken rather than reported.
const LOCK_WAIT_MS: u64 = 15_000;

pub struct FileCas {
    dir: Descriptor,
    file: String,
    lock: String,
    /// 0.2's files, read only to migrate: `<name>.inflight`, `<name>.lease`.
    inflight: String,
    lease: String,
}

fn err(what: &str, file: &str, code: ErrorCode) -> String {
    format!("{what} {file}: {code:?}")
}

impl FileCas {
    /// Opens the credential `name` in the preopened directory `dir_path`.
    pub fn open(dir_path: &str, name: &str) -> Result<FileCas, String> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err("REKEY_CREDENTIAL must be letters, digits, '.', '_' or '-'".into());
        }
        let wanted = dir_path.trim_end_matches('/');
        let dir = preopens::get_directories()
            .into_iter()
            .find(|(_, path)| path.trim_end_matches('/') == wanted)
            .map(|(d, _)| d)
            .ok_or_else(|| {
                format!("no preopened directory {dir_path} (serve with --dir HOST_DIR::{dir_path})")
            })?;
        Ok(FileCas {
            dir,
            file: format!("{name}.json"),
            lock: format!("{name}.lock"),
            inflight: format!("{name}.inflight"),
            lease: format!("{name}.lease"),
        })
    }

    /// The whole file, none if it does not exist. Symlinks are not followed.
    fn read(&self, file: &str) -> Result<Option<Vec<u8>>, String> {
        let fd = match self.dir.open_at(
            PathFlags::empty(),
            file,
            OpenFlags::empty(),
            DescriptorFlags::READ,
        ) {
            Ok(fd) => fd,
            Err(ErrorCode::NoEntry) => return Ok(None),
            Err(e) => return Err(err("opening", file, e)),
        };
        // Only a regular file is read: a directory or device in its place is
        // an error (and jco's shim crashes the server reading a directory).
        match fd.get_type() {
            Ok(DescriptorType::RegularFile) => {}
            Ok(other) => return Err(format!("{file} is not a regular file ({other:?})")),
            Err(e) => return Err(err("examining", file, e)),
        }
        let mut out = Vec::new();
        loop {
            let (chunk, eof) = fd
                .read(64 * 1024, out.len() as u64)
                .map_err(|e| err("reading", file, e))?;
            out.extend_from_slice(&chunk);
            if eof || chunk.is_empty() {
                return Ok(Some(out));
            }
        }
    }

    /// Creates `file` (it must not exist) holding `data`; synced if `sync`.
    /// A file it created but could not fill is removed again.
    fn create(&self, file: &str, data: &[u8], sync: bool) -> Result<(), ErrorCode> {
        let fd = self.dir.open_at(
            PathFlags::empty(),
            file,
            OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
            DescriptorFlags::WRITE,
        )?;
        let filled = (|| {
            let mut done = 0;
            while done < data.len() {
                done += fd.write(&data[done..], done as u64)? as usize;
            }
            if sync { fd.sync() } else { Ok(()) }
        })();
        if filled.is_err() {
            drop(fd);
            let _ = self.dir.unlink_file_at(file);
        }
        filled
    }

    /// When `file` was last modified (Unix ms); none if it is gone or the
    /// filesystem keeps no time.
    fn modified_ms(&self, file: &str) -> Option<u64> {
        let stat = self.dir.stat_at(PathFlags::empty(), file).ok()?;
        let t = stat.data_modification_timestamp?;
        Some(t.seconds * 1000 + u64::from(t.nanoseconds / 1_000_000))
    }

    fn age_ms(&self, file: &str) -> Option<u64> {
        Some(time::unix_ms().saturating_sub(self.modified_ms(file)?))
    }

    /// Takes the lock, waiting (bounded) for another writer.
    fn lock(&self) -> Result<Lock<'_>, String> {
        let token = format!("{:016x}{:016x}\n", get_random_u64(), get_random_u64());
        let deadline = time::mono_ms() + LOCK_WAIT_MS;
        let mut pause = 1;
        loop {
            match self.create(&self.lock, token.as_bytes(), false) {
                Ok(()) => return Ok(Lock { cas: self, token }),
                Err(ErrorCode::Exist) => {}
                Err(e) => return Err(err("creating", &self.lock, e)),
            }
            self.break_if_stale();
            if time::mono_ms() >= deadline {
                return Err(format!("{} stayed taken for {LOCK_WAIT_MS} ms", self.lock));
            }
            // Jitter, so that waiting writers do not retry in lockstep.
            time::sleep_ms(pause + get_random_u64() % (pause + 1));
            pause = (pause * 2).min(16);
        }
    }

    /// Removes a lock its writer left behind. Moving it aside is atomic, so
    /// only one of several breakers moves it; what moved is checked to be
    /// the stale lock (same content, still old) and otherwise linked back.
    fn break_if_stale(&self) {
        if self
            .age_ms(&self.lock)
            .is_none_or(|age| age <= LOCK_STALE_MS)
        {
            return;
        }
        let Ok(Some(seen)) = self.read(&self.lock) else {
            return;
        };
        let aside = format!(".{}.{:016x}.stale", self.lock, get_random_u64());
        if self.dir.rename_at(&self.lock, &self.dir, &aside).is_err() {
            return;
        }
        let stale = self.age_ms(&aside).is_some_and(|age| age > LOCK_STALE_MS)
            && self.read(&aside).ok().flatten().as_ref() == Some(&seen);
        if !stale {
            // A fresh lock: put it back (fails if a newer one exists; its
            // writer then finds its lock gone and writes nothing).
            let _ = self
                .dir
                .link_at(PathFlags::empty(), &aside, &self.dir, &self.lock);
        }
        let _ = self.dir.unlink_file_at(&aside);
        if stale {
            crate::log(&format!(
                "removed {}, left behind by a writer that stopped",
                self.lock
            ));
        }
    }

    /// Writes `data` to a temp file, synced, and renames it over the record
    /// while `lock` is still held.
    fn replace(&self, data: &[u8], lock: &Lock<'_>) -> Result<(), CasError> {
        let tmp = format!(".{}.{:016x}.tmp", self.file, get_random_u64());
        let failed = |what: &str, e: ErrorCode| CasError::Failed(err(what, &self.file, e));
        if let Err(e) = self.create(&tmp, data, true) {
            return Err(failed("writing", e));
        }
        if !lock.held() {
            let _ = self.dir.unlink_file_at(&tmp);
            return Err(CasError::Failed(format!(
                "{} was taken over while writing",
                self.lock
            )));
        }
        if let Err(e) = self.dir.rename_at(&tmp, &self.dir, &self.file) {
            let _ = self.dir.unlink_file_at(&tmp);
            return Err(failed("renaming over", e));
        }
        // The rename is durable once the directory is. A filesystem that
        // cannot sync a directory says so; any other failure leaves the new
        // record visible with its durability unknown.
        match self.dir.sync() {
            Ok(()) | Err(ErrorCode::Unsupported | ErrorCode::Invalid) => Ok(()),
            Err(e) => Err(CasError::Unknown(err(
                "syncing the directory of",
                &self.file,
                e,
            ))),
        }
    }
}

/// The lock, held; removed when dropped (if it is still ours).
struct Lock<'a> {
    cas: &'a FileCas,
    token: String,
}

impl Lock<'_> {
    fn held(&self) -> bool {
        matches!(self.cas.read(&self.cas.lock), Ok(Some(t)) if t == self.token.as_bytes())
    }
}

impl Drop for Lock<'_> {
    fn drop(&mut self) {
        if self.held() && self.cas.dir.unlink_file_at(&self.cas.lock).is_err() {
            crate::log("could not remove the record's lock: it goes stale in 10 s");
        }
    }
}

impl Cas for FileCas {
    fn get(&self) -> Result<Option<Vec<u8>>, String> {
        self.read(&self.file)
    }

    fn update(&self, next: &mut Next<'_>) -> Result<(), CasError> {
        let lock = self.lock().map_err(CasError::Failed)?;
        let current = self.read(&self.file).map_err(CasError::Failed)?;
        let data = next(current.as_deref()).ok_or(CasError::Refused)?;
        self.replace(&data, &lock)?;
        drop(lock);
        // The first record replaces 0.2's lease and marker files.
        let was_record = matches!(
            current.as_deref().map(record::decode),
            Some(Ok(Decoded::Record(_)))
        );
        if !was_record {
            for old in [&self.inflight, &self.lease] {
                let _ = self.dir.unlink_file_at(old);
            }
        }
        Ok(())
    }

    /// The 0.2 edge wrote `<name>.inflight`, naming the fingerprint of the
    /// keys it spent, before a token request, and removed it once the result
    /// was stored: one that names the stored keys is a refresh in doubt.
    fn legacy_mark(&self, keys: &str) -> Option<RefreshMark> {
        let marker = self.read(&self.inflight).ok()??;
        (marker.trim_ascii() == fingerprint_02(keys).as_bytes()).then(|| RefreshMark {
            holder: "migrated-0.2".into(),
            at_ms: self
                .modified_ms(&self.inflight)
                .unwrap_or_else(time::unix_ms),
        })
    }
}

/// The 0.2 edge's fingerprint of stored keys (FNV-1a 64, hex).
fn fingerprint_02(keys: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in keys.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}
