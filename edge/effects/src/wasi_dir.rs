//! The record's directory over `wasi:filesystem` 0.2: a directory the
//! runtime preopened (`wasmtime serve --dir HOST::GUEST`), with the scenarios'
//! test hook.

use crate::fs_cas::{Dir, FileCas, LinkError};
use crate::wasi::filesystem::preopens;
use crate::wasi::filesystem::types::{
    Descriptor, DescriptorFlags, DescriptorType, ErrorCode, OpenFlags, PathFlags,
};
use crate::wasi::random::random::get_random_u64;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::Cell;
use rekey_edge_rt::time;

/// How long the test hook holds a write at most.
const HOLD_MAX_MS: u64 = 60_000;

pub struct WasiDir {
    dir: Descriptor,
    /// `REKEY_TEST_HOLD_WRITES=1`: the credential whose writes the hook may hold.
    hold: Option<String>,
    /// The warning that the directory cannot be synced was given.
    warned_sync: Cell<bool>,
}

fn err(what: &str, file: &str, code: ErrorCode) -> String {
    format!("{what} {file}: {code:?}")
}

/// The credential `name`'s record in the preopened directory `dir_path`.
pub fn open(dir_path: &str, name: &str, test_hold: bool) -> Result<FileCas<WasiDir>, String> {
    let wanted = dir_path.trim_end_matches('/');
    let dir = preopens::get_directories()
        .into_iter()
        .find(|(_, path)| path.trim_end_matches('/') == wanted)
        .map(|(d, _)| d)
        .ok_or_else(|| {
            format!("no preopened directory {dir_path} (serve with --dir HOST_DIR::{dir_path})")
        })?;
    let hold = test_hold.then(|| name.into());
    let dir = WasiDir {
        dir,
        hold,
        warned_sync: Cell::new(false),
    };
    FileCas::new(dir, name)
}

impl WasiDir {
    /// The directory opened again as ".": jco's shim (0.26) answers
    /// `bad-descriptor` when asked to list a preopen itself and `invalid`
    /// when asked to sync one.
    fn reopened(&self) -> Result<Descriptor, ErrorCode> {
        self.dir.open_at(
            PathFlags::empty(),
            ".",
            OpenFlags::DIRECTORY,
            DescriptorFlags::READ,
        )
    }
}

/// Entries skipped in one listing before it counts as broken (a runtime
/// that answered the same error again and again would loop forever).
const SKIPPED_MAX: usize = 100_000;

impl Dir for WasiDir {
    fn list(&self) -> Result<Vec<String>, String> {
        let listing = |e| err("listing", "the keys directory", e);
        let entries = self
            .reopened()
            .and_then(|dir| dir.read_directory())
            .map_err(listing)?;
        let mut names = Vec::new();
        let mut skipped = 0;
        loop {
            match entries.read_directory_entry() {
                Ok(Some(entry)) => names.push(entry.name),
                Ok(None) => return Ok(names),
                // wasmtime examines each entry as it lists: one removed in
                // between (another writer's temp file or old generation,
                // another credential's file) is `no-entry`, a name that is
                // not UTF-8 `illegal-byte-sequence`. Neither can be a record
                // (ours are named in ASCII and found again when read): skip.
                Err(ErrorCode::NoEntry | ErrorCode::IllegalByteSequence)
                    if skipped < SKIPPED_MAX =>
                {
                    skipped += 1;
                }
                Err(e) => return Err(listing(e)),
            }
        }
    }

    fn read(&self, file: &str) -> Result<Option<Vec<u8>>, String> {
        // Only a regular file is opened: opening a FIFO blocks until a writer
        // comes (wasi:filesystem 0.2 has no non-blocking open), and jco's
        // shim crashes the server reading a directory. Looked at by name
        // (a symlink is not followed), then again once open.
        match self.dir.stat_at(PathFlags::empty(), file) {
            Ok(stat) if stat.type_ == DescriptorType::RegularFile => {}
            Ok(stat) => return Err(format!("{file} is not a regular file ({:?})", stat.type_)),
            Err(ErrorCode::NoEntry) => return Ok(None),
            Err(e) => return Err(err("examining", file, e)),
        }
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

    /// A file it created but could not fill and sync is removed again.
    fn create(&self, file: &str, data: &[u8]) -> Result<(), String> {
        let fd = self
            .dir
            .open_at(
                PathFlags::empty(),
                file,
                OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                DescriptorFlags::WRITE,
            )
            .map_err(|e| err("creating", file, e))?;
        let filled = (|| {
            let mut done = 0;
            while done < data.len() {
                done += fd.write(&data[done..], done as u64)? as usize;
            }
            fd.sync()
        })();
        if let Err(e) = filled {
            drop(fd);
            let _ = self.dir.unlink_file_at(file);
            return Err(err("writing", file, e));
        }
        Ok(())
    }

    fn link(&self, from: &str, to: &str) -> Result<(), LinkError> {
        match self.dir.link_at(PathFlags::empty(), from, &self.dir, to) {
            Ok(()) => Ok(()),
            Err(ErrorCode::Exist) => Err(LinkError::Exists),
            Err(e) => Err(LinkError::Other(err("linking", to, e))),
        }
    }

    fn remove(&self, file: &str) {
        let _ = self.dir.unlink_file_at(file);
    }

    /// Synced through the directory opened again (`reopened`). A runtime or
    /// filesystem that cannot sync a directory at all (`unsupported`)
    /// counts as done, with a warning (README, "Not guaranteed").
    fn sync(&self) -> Result<(), String> {
        match self.reopened().and_then(|dir| dir.sync()) {
            Ok(()) => Ok(()),
            Err(ErrorCode::Unsupported) => {
                if !self.warned_sync.replace(true) {
                    self.note(
                        "WARNING: the keys directory cannot be synced here (unsupported): \
                         a new record may not survive a power loss",
                    );
                }
                Ok(())
            }
            Err(e) => Err(err("syncing", "the keys directory", e)),
        }
    }

    fn modified_ms(&self, file: &str) -> Option<u64> {
        let stat = self.dir.stat_at(PathFlags::empty(), file).ok()?;
        let t = stat.data_modification_timestamp?;
        Some(t.seconds * 1000 + u64::from(t.nanoseconds / 1_000_000))
    }

    fn now_ms(&self) -> u64 {
        time::unix_ms()
    }

    fn random(&self) -> u64 {
        get_random_u64()
    }

    fn note(&self, msg: &str) {
        crate::log(msg);
    }

    /// The scenarios' hook, on only with `REKEY_TEST_HOLD_WRITES=1`: a write
    /// that finds `<name>.hold` renames it to `<name>.held` (one writer
    /// alone can) and waits until the test removes `<name>.held`, at most
    /// `HOLD_MAX_MS`, so the test decides what happens meanwhile.
    fn before_commit(&self) -> bool {
        let Some(name) = &self.hold else {
            return false;
        };
        let (hold, held) = (format!("{name}.hold"), format!("{name}.held"));
        if self.dir.rename_at(&hold, &self.dir, &held).is_err() {
            return false;
        }
        self.note("test hook: holding a write before its commit");
        let deadline = time::mono_ms() + HOLD_MAX_MS;
        while self.dir.stat_at(PathFlags::empty(), &held).is_ok() {
            if time::mono_ms() >= deadline {
                self.remove(&held);
                self.note("test hook: released by its timeout");
                break;
            }
            time::sleep_ms(5);
        }
        true
    }
}
