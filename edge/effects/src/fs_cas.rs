//! `Cas` over the files of one directory, without a lock: a write never
//! replaces a file, it creates the record's next generation under a new
//! name, exclusively, so no writer, however long it stalls, can overwrite
//! what another wrote.
//!
//! - `<name>@<G>.json` is generation `G` of the record (decimal, no leading
//!   zero). The newest generation present is the record. `G` is the
//!   store's own counter; the record's `version` inside is the guest's.
//! - A write reads the newest generation `G`, computes the new bytes, writes
//!   them to a temp file, syncs it, and links it as `<name>@<G+1>.json`. A
//!   link fails if the name exists, so one writer alone succeeds `G`; the
//!   others learn that a write landed first (a conflict).
//! - A write lands only on the record this instance last read or wrote
//!   (same generation, same bytes), not on any record of the expected
//!   version: versions repeat (an operator's re-keyed token set reads as
//!   version 0; `<name>.json` can be edited where it is).
//! - The newest `KEEP` generations stay; each write removes older ones. A
//!   name is removed only once a generation `KEEP` newer exists, so a
//!   writer that stalled through more than `KEEP` later writes may link a
//!   removed name: it then sees that newer generation, and its file, never
//!   the newest, was never read; it is removed and the write is `unknown`
//!   (the guest reads the record to find out). A write that landed and was
//!   built on `KEEP` times before it looked sees the same: `unknown` too.
//! - `<name>.json`, the record of the single-file layout before issue #22
//!   (or 0.2's token set, or the seed of a new directory), is generation 0:
//!   read only while no generation exists, removed by the write that
//!   creates one (with that layout's `<name>.lock`).

use crate::exports::rekey::oauth2::types::RefreshMark;
use crate::record::{self, Decoded};
use crate::store::{Cas, CasError, Next};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::RefCell;

/// Generations kept: a writer that stalls through up to this many later
/// writes learns of the conflict from its link. A refresh writes three.
pub const KEEP: u64 = 4;
/// A temp file this old was left by a writer that died. Removing a live
/// writer's temp file is safe anyway: its link then fails, nothing written.
pub const TEMP_STALE_MS: u64 = 3_600_000;
/// Reads retried when the newest generation is removed while being read
/// (`KEEP` writes landed in between).
const READ_TRIES: usize = 16;

/// What the store needs of a directory: `wasi_dir.rs` over
/// `wasi:filesystem`, the unit tests over `std::fs`.
pub trait Dir {
    /// The names in the directory.
    fn list(&self) -> Result<Vec<String>, String>;
    /// The whole file, none if it does not exist. Symlinks are not followed;
    /// anything but a regular file is an error.
    fn read(&self, file: &str) -> Result<Option<Vec<u8>>, String>;
    /// Creates `file` (it must not exist) holding `data`, synced.
    fn create(&self, file: &str, data: &[u8]) -> Result<(), String>;
    /// Gives the file `from` the second name `to`, which must not exist.
    fn link(&self, from: &str, to: &str) -> Result<(), LinkError>;
    /// Removes `file` if it is there.
    fn remove(&self, file: &str);
    /// Makes new names durable; ok where the directory cannot be synced.
    fn sync(&self) -> Result<(), String>;
    /// When `file` was last modified (Unix ms), if known.
    fn modified_ms(&self, file: &str) -> Option<u64>;
    fn now_ms(&self) -> u64;
    fn random(&self) -> u64;
    /// A line for the server's log (never a token).
    fn note(&self, msg: &str);
    /// Runs between a write's check of the version and its commit: the
    /// test hook that holds one write there (`wasi_dir.rs`). True if it held.
    fn before_commit(&self) -> bool {
        false
    }
}

pub enum LinkError {
    /// The name exists: another writer linked it first.
    Exists,
    Other(String),
}

pub struct FileCas<D> {
    dir: D,
    name: String,
    /// `<name>.json`: generation 0.
    legacy: String,
    /// The record this instance last read or wrote: a write lands only on
    /// it (`update`). The proxy opens one store per component instance.
    seen: RefCell<Option<Current>>,
}

/// The newest record: its generation and bytes (none: nothing stored).
#[derive(PartialEq)]
struct Current {
    generation: u64,
    bytes: Option<Vec<u8>>,
}

impl<D: Dir> FileCas<D> {
    /// The credential `name`'s record in `dir`.
    pub fn new(dir: D, name: &str) -> Result<FileCas<D>, String> {
        // No '@' and no leading '.': one credential's names never parse as
        // another's generations or temp files.
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err("REKEY_CREDENTIAL must be letters, digits, '.', '_' or '-'".into());
        }
        Ok(FileCas {
            dir,
            legacy: format!("{name}.json"),
            name: name.into(),
            seen: RefCell::new(None),
        })
    }

    fn generation_file(&self, generation: u64) -> String {
        format!("{}@{generation}.json", self.name)
    }

    /// The generation a file name holds, if it is one of ours.
    fn generation_of(&self, file: &str) -> Option<u64> {
        let digits = file
            .strip_prefix(self.name.as_str())?
            .strip_prefix('@')?
            .strip_suffix(".json")?;
        canonical_number(digits)
    }

    /// A temp file of ours: `.<name>@<G>.<16 hex>.tmp`.
    fn is_temp(&self, file: &str) -> bool {
        let Some(rest) = file
            .strip_prefix('.')
            .and_then(|f| f.strip_prefix(self.name.as_str()))
            .and_then(|f| f.strip_prefix('@'))
            .and_then(|f| f.strip_suffix(".tmp"))
        else {
            return false;
        };
        rest.split_once('.').is_some_and(|(g, hex)| {
            canonical_number(g).is_some()
                && hex.len() == 16
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        })
    }

    fn newest_in(&self, names: &[String]) -> Option<u64> {
        names.iter().filter_map(|n| self.generation_of(n)).max()
    }

    /// The newest record. A generation removed between listing and reading
    /// (`KEEP` writes landed meanwhile) is looked for again.
    fn current(&self) -> Result<Current, String> {
        for _ in 0..READ_TRIES {
            let newest = self.newest_in(&self.dir.list()?);
            let file = newest.map_or_else(|| self.legacy.clone(), |g| self.generation_file(g));
            let found = match (self.dir.read(&file)?, newest) {
                (Some(bytes), _) => Some(Some(bytes)),
                // Nothing stored, unless the first generation was linked
                // (and the old file removed) since the listing.
                (None, None) if self.newest_in(&self.dir.list()?).is_none() => Some(None),
                // Removed since the listing: look again.
                (None, _) => None,
            };
            if let Some(bytes) = found {
                return Ok(Current {
                    generation: newest.unwrap_or(0),
                    bytes,
                });
            }
        }
        Err(format!(
            "the record {}@… kept changing while being read",
            self.name
        ))
    }

    /// Removes generations `KEEP` or more below `newest`, the old layout's
    /// file and lock, and temp files left by writers that died.
    fn clean(&self, names: &[String], newest: u64) {
        let now = self.dir.now_ms();
        for file in names {
            let old = match self.generation_of(file) {
                Some(g) => g.saturating_add(KEEP) <= newest,
                None if self.is_temp(file) => self
                    .dir
                    .modified_ms(file)
                    .is_some_and(|t| now.saturating_sub(t) > TEMP_STALE_MS),
                None => *file == self.legacy || *file == format!("{}.lock", self.name),
            };
            if old {
                self.dir.remove(file);
            }
        }
    }

    /// Links the synced temp file `tmp` as generation `generation`, then
    /// checks it is the newest or a predecessor of it (see the module's
    /// comment) and cleans up.
    fn commit(&self, tmp: &str, generation: u64) -> Result<(), CasError> {
        let linked = self.dir.link(tmp, &self.generation_file(generation));
        self.dir.remove(tmp);
        match linked {
            Ok(()) => {}
            Err(LinkError::Exists) => return Err(CasError::Refused),
            Err(LinkError::Other(m)) => return Err(CasError::Failed(m)),
        }
        // The link is durable once the directory is; a failure leaves the
        // new generation visible with its durability unknown.
        let synced = self.dir.sync();
        let then = |e| CasError::Unknown(format!("generation {generation} linked, then {e}"));
        let names = self.dir.list().map_err(then)?;
        let newest = self.newest_in(&names).unwrap_or(0);
        self.clean(&names, newest);
        if newest >= generation.saturating_add(KEEP) {
            // Linked after its name was removed: shadowed, never read, and
            // removed again by `clean` just now.
            return Err(CasError::Unknown(format!(
                "a stalled write linked generation {generation} of {} after generation {newest} \
                 (never read; removed)",
                self.name
            )));
        }
        synced.map_err(then)
    }
}

/// A decimal number as the store writes it: digits, no leading zero.
fn canonical_number(digits: &str) -> Option<u64> {
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

impl<D: Dir> Cas for FileCas<D> {
    fn get(&self) -> Result<Option<Vec<u8>>, String> {
        let current = self.current()?;
        let bytes = current.bytes.clone();
        *self.seen.borrow_mut() = Some(current);
        Ok(bytes)
    }

    fn update(&self, next: &mut Next<'_>) -> Result<(), CasError> {
        let current = self.current().map_err(CasError::Failed)?;
        let data = next(current.bytes.as_deref()).ok_or(CasError::Refused)?;
        // The expected version alone does not say the record is the one this
        // instance read: versions repeat (an operator's re-keyed token set
        // reads as version 0, as the one before it did; `<name>.json` can be
        // edited where it is). So the newest record must also be the very
        // one this instance last read or wrote, when it has seen one.
        if self
            .seen
            .borrow()
            .as_ref()
            .is_some_and(|seen| *seen != current)
        {
            return Err(CasError::Refused);
        }
        let generation = current
            .generation
            .checked_add(1)
            .ok_or_else(|| CasError::Failed("the record's generation is at its maximum".into()))?;
        let tmp = format!(".{}@{generation}.{:016x}.tmp", self.name, self.dir.random());
        self.dir
            .create(&tmp, &data)
            .map_err(|e| CasError::Failed(format!("writing {tmp}: {e}")))?;
        let held = self.dir.before_commit();
        let committed = self.commit(&tmp, generation);
        if held {
            let outcome = match &committed {
                Ok(()) => "ok".to_string(),
                Err(CasError::Refused) => "conflict".to_string(),
                Err(CasError::Failed(m)) => format!("failed: {m}"),
                Err(CasError::Unknown(m)) => format!("unknown: {m}"),
            };
            self.dir
                .note(&format!("test hook: the held write ended: {outcome}"));
        }
        committed?;
        *self.seen.borrow_mut() = Some(Current {
            generation,
            bytes: Some(data),
        });
        // The first record replaces 0.2's lease and marker files.
        let was_record = matches!(
            current.bytes.as_deref().map(record::decode),
            Some(Ok(Decoded::Record(_)))
        );
        if !was_record {
            for old in ["inflight", "lease"] {
                self.dir.remove(&format!("{}.{old}", self.name));
            }
        }
        Ok(())
    }

    /// The 0.2 edge wrote `<name>.inflight`, naming the fingerprint of the
    /// keys it spent, before a token request, and removed it once the result
    /// was stored: one that names the stored keys is a refresh in doubt.
    fn legacy_mark(&self, keys: &str) -> Option<RefreshMark> {
        let inflight = format!("{}.inflight", self.name);
        let marker = self.dir.read(&inflight).ok()??;
        (marker.trim_ascii() == fingerprint_02(keys).as_bytes()).then(|| RefreshMark {
            holder: "migrated-0.2".into(),
            at_ms: self
                .dir
                .modified_ms(&inflight)
                .unwrap_or_else(|| self.dir.now_ms()),
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

#[cfg(test)]
mod tests;
