//! The `Store` over a preopened directory (`wasmtime serve --dir`):
//! `<name>.json` the keys (temp file, sync, rename, directory sync),
//! `<name>.lease` the refresh lease (exclusive create; holds its owner and
//! expiry; stolen only once expired), `<name>.inflight` the marker.

use crate::store::{Store, StoreError};
use crate::wasi::filesystem::preopens;
use crate::wasi::filesystem::types::{
    Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags,
};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

pub struct FileStore {
    dir: Descriptor,
    keys: String,
    lease: String,
    inflight: String,
}

fn err(what: &str, file: &str, code: ErrorCode) -> StoreError {
    StoreError(format!("{what} {file}: {code:?}"))
}

impl FileStore {
    /// Opens the credential `name` in the preopened directory `dir_path`.
    pub fn open(dir_path: &str, name: &str) -> Result<FileStore, StoreError> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(StoreError(
                "REKEY_CREDENTIAL must be letters, digits, '.', '_' or '-'".into(),
            ));
        }
        let wanted = dir_path.trim_end_matches('/');
        let dir = preopens::get_directories()
            .into_iter()
            .find(|(_, path)| path.trim_end_matches('/') == wanted)
            .map(|(d, _)| d)
            .ok_or_else(|| {
                StoreError(format!(
                    "no preopened directory {dir_path} (serve with --dir HOST_DIR::{dir_path})"
                ))
            })?;
        Ok(FileStore {
            dir,
            keys: format!("{name}.json"),
            lease: format!("{name}.lease"),
            inflight: format!("{name}.inflight"),
        })
    }

    /// The whole file, none if it does not exist. Symlinks are not followed.
    fn read(&self, file: &str) -> Result<Option<Vec<u8>>, StoreError> {
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

    fn read_text(&self, file: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .read(file)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// Writes `data` to `file` in `open` mode and syncs it.
    fn write_synced(&self, file: &str, flags: OpenFlags, data: &[u8]) -> Result<(), ErrorCode> {
        let fd = self
            .dir
            .open_at(PathFlags::empty(), file, flags, DescriptorFlags::WRITE)?;
        let mut done = 0;
        while done < data.len() {
            done += fd.write(&data[done..], done as u64)? as usize;
        }
        fd.sync()
    }

    /// Replaces `file` atomically and durably.
    fn replace(&self, file: &str, data: &[u8]) -> Result<(), StoreError> {
        let tmp = format!(
            ".{file}.{:016x}.tmp",
            crate::wasi::random::random::get_random_u64()
        );
        let written = self
            .write_synced(&tmp, OpenFlags::CREATE | OpenFlags::EXCLUSIVE, data)
            .and_then(|()| self.dir.rename_at(&tmp, &self.dir, file));
        if let Err(e) = written {
            let _ = self.dir.unlink_file_at(&tmp);
            return Err(err("writing", file, e));
        }
        // The rename is durable once the directory is; some filesystems
        // refuse to sync a directory, and the file itself is synced.
        let _ = self.dir.sync();
        Ok(())
    }

    fn remove(&self, file: &str) -> Result<(), StoreError> {
        match self.dir.unlink_file_at(file) {
            Ok(()) | Err(ErrorCode::NoEntry) => {
                let _ = self.dir.sync();
                Ok(())
            }
            Err(e) => Err(err("removing", file, e)),
        }
    }

    /// (owner, expiry) of the lease file, if it exists.
    fn lease_state(&self, ttl_ms: u64) -> Result<Option<(String, u64)>, StoreError> {
        match self.read_text(&self.lease)? {
            None => Ok(None),
            Some(text) => Ok(Some(self.parse_lease(&text, ttl_ms))),
        }
    }

    /// A lease file being written right now (empty or partial) has no
    /// expiry yet: its modification time plus the TTL stands in, so a holder
    /// that died mid-write cannot keep the lease forever.
    fn parse_lease(&self, text: &str, ttl_ms: u64) -> (String, u64) {
        let mut parts = text.split_whitespace();
        let owner = parts.next().unwrap_or("").to_string();
        let expires = parts
            .next()
            .filter(|_| text.ends_with('\n'))
            .and_then(|e| e.parse().ok())
            .unwrap_or_else(|| {
                self.dir
                    .stat_at(PathFlags::empty(), &self.lease)
                    .ok()
                    .and_then(|st| st.data_modification_timestamp)
                    .map(|t| t.seconds * 1000 + u64::from(t.nanoseconds / 1_000_000) + ttl_ms)
                    .unwrap_or(0)
            });
        (owner, expires)
    }

    fn lease_line(owner: &str, now_ms: u64, ttl_ms: u64) -> String {
        format!("{owner} {}\n", now_ms + ttl_ms)
    }
}

impl Store for FileStore {
    fn load(&self) -> Result<Option<String>, StoreError> {
        match self.read(&self.keys)? {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| StoreError(format!("{} is not UTF-8", self.keys))),
        }
    }

    fn save(&self, keys: &str) -> Result<(), StoreError> {
        self.replace(&self.keys, keys.as_bytes())
    }

    fn try_lease(&self, owner: &str, now_ms: u64, ttl_ms: u64) -> Result<bool, StoreError> {
        let line = Self::lease_line(owner, now_ms, ttl_ms);
        match self.write_synced(
            &self.lease,
            OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
            line.as_bytes(),
        ) {
            Ok(()) => return Ok(true),
            Err(ErrorCode::Exist) => {}
            Err(e) => return Err(err("creating", &self.lease, e)),
        }
        let Some(seen) = self.read_text(&self.lease)? else {
            return Ok(false); // released meanwhile: the next attempt takes it
        };
        let (_, until) = self.parse_lease(&seen, ttl_ms);
        if until > now_ms {
            return Ok(false);
        }
        // Steal an expired lease: move it aside under a name only we use,
        // then check that what we moved is the expired lease we read. If a
        // new holder's lease was moved instead, link it back (link fails if
        // a third took the name meanwhile; that holder's renewal then fails
        // and it sends nothing).
        let aside = format!(".{}.{owner}.stale", self.lease);
        match self.dir.rename_at(&self.lease, &self.dir, &aside) {
            Ok(()) => {}
            Err(ErrorCode::NoEntry) => return Ok(false),
            Err(e) => return Err(err("moving aside", &self.lease, e)),
        }
        let moved = self.read_text(&aside)?.unwrap_or_default();
        if moved != seen {
            let _ = self
                .dir
                .link_at(PathFlags::empty(), &aside, &self.dir, &self.lease);
        }
        self.remove(&aside)?;
        if moved != seen {
            return Ok(false);
        }
        crate::log("took over a refresh lease whose holder let it expire");
        match self.write_synced(
            &self.lease,
            OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
            line.as_bytes(),
        ) {
            Ok(()) => Ok(true),
            Err(ErrorCode::Exist) => Ok(false),
            Err(e) => Err(err("creating", &self.lease, e)),
        }
    }

    fn renew_lease(&self, owner: &str, now_ms: u64, ttl_ms: u64) -> Result<bool, StoreError> {
        match self.lease_state(ttl_ms)? {
            Some((holder, until)) if holder == owner && until > now_ms => {
                let line = Self::lease_line(owner, now_ms, ttl_ms);
                self.write_synced(&self.lease, OpenFlags::TRUNCATE, line.as_bytes())
                    .map_err(|e| err("renewing", &self.lease, e))?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn release_lease(&self, owner: &str) -> Result<(), StoreError> {
        match self.lease_state(0)? {
            Some((holder, _)) if holder == owner => self.remove(&self.lease),
            _ => Ok(()),
        }
    }

    fn in_flight(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .read_text(&self.inflight)?
            .map(|t| t.trim().to_string()))
    }

    fn mark_in_flight(&self, fingerprint: &str) -> Result<(), StoreError> {
        self.replace(&self.inflight, fingerprint.as_bytes())
    }

    fn clear_in_flight(&self) -> Result<(), StoreError> {
        self.remove(&self.inflight)
    }
}
