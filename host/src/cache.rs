//! Precompiled-component cache: compiling the guest takes hundreds of
//! milliseconds, loading native code we compiled earlier takes about one.
//!
//! Loading a `.cwasm` runs its machine code, so a file is used only if this
//! process could have written it: the key covers the wasm bytes and the
//! engine's compatibility hash, and the directory and file must belong to
//! our user and be writable by nobody else (the rule ssh applies to ~/.ssh).
//! Anything else is ignored and the component compiled afresh.

use crate::private_fs;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How the component was obtained, for diagnostics and benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now; no cache directory was given.
    Compiled,
    /// Compiled now and written to the cache.
    CompiledAndCached,
    /// Loaded precompiled from the cache.
    LoadedFromCache,
}

/// The component for `engine`: from `cache_dir` when a trustworthy entry for
/// these exact bytes and this engine exists, else compiled (and cached).
pub fn load_or_compile(
    engine: &Engine,
    wasm: &[u8],
    dir: Option<&Path>,
) -> anyhow::Result<(Component, Origin)> {
    let Some(dir) = dir else {
        return Ok((Component::new(engine, wasm)?, Origin::Compiled));
    };
    let path = dir.join(format!("rekey-{}.cwasm", cache_key(engine, wasm)));
    if let Err(why) = ensure_private_dir(dir) {
        tracing::warn!(dir = %dir.display(), why, "component cache unusable; compiling");
        return Ok((Component::new(engine, wasm)?, Origin::Compiled));
    }
    if let Some(native) = read_ours(&path) {
        // SAFETY: the bytes come from a regular file, opened without
        // following links and checked through that same descriptor: owned by
        // us, readable by nobody else, in a directory tree only we (or root)
        // can write, under a name derived from these exact wasm bytes and
        // this engine's configuration; wasmtime re-checks its header.
        match unsafe { Component::deserialize(engine, &native) } {
            Ok(c) => return Ok((c, Origin::LoadedFromCache)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "stale component cache entry; recompiling")
            }
        }
    }
    let native = engine.precompile_component(wasm)?;
    // SAFETY: `native` was produced just now by this engine.
    let component = unsafe { Component::deserialize(engine, &native)? };
    match write_atomically(&path, &native) {
        Ok(()) => Ok((component, Origin::CompiledAndCached)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not write the component cache");
            Ok((component, Origin::Compiled))
        }
    }
}

/// The default cache directory: `$XDG_CACHE_HOME/rekey` or `~/.cache/rekey`.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("rekey"))
}

/// The SHA-256 of `bytes` in lower-case hex (how other hosts check they run
/// the very component this crate embeds).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn cache_key(engine: &Engine, wasm: &[u8]) -> String {
    struct ShaHasher(Sha256);
    impl std::hash::Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            unreachable!("only written to")
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    h.0.update(Sha256::digest(wasm));
    h.0.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ensure_private_dir(dir: &Path) -> Result<(), String> {
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("not a directory".into());
    }
    if meta.uid() != private_fs::euid() || private_fs::writable_by_others(&meta) {
        return Err("not owned by this user, or writable by others".into());
    }
    // Whoever can write an ancestor can swap the whole directory.
    private_fs::check_ancestors(dir)
}

/// The entry's bytes, if it is one we could have written: opened without
/// following a link, then checked through the open descriptor (no second
/// lookup of the path that another process could race).
fn read_ours(path: &Path) -> Option<Vec<u8>> {
    let mut file = private_fs::open_nofollow(path).ok()?;
    let m = file.metadata().ok()?;
    if private_fs::file_problem(&m).is_some() {
        return None;
    }
    let mut bytes = Vec::with_capacity(m.len() as usize);
    std::io::Read::read_to_end(&mut file, &mut bytes).ok()?;
    Some(bytes)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        Engine::default()
    }

    /// The one file in the cache directory.
    fn only_entry(cache: &Path) -> PathBuf {
        let mut entries = fs::read_dir(cache).unwrap().map(|e| e.unwrap().path());
        let entry = entries.next().expect("a cache entry");
        assert!(entries.next().is_none(), "one entry only");
        entry
    }

    #[test]
    fn second_load_comes_from_the_cache_and_foreign_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let engine = engine();
        let (_, first) = load_or_compile(&engine, crate::GUEST_WASM, Some(&cache)).unwrap();
        assert_eq!(first, Origin::CompiledAndCached);
        let (_, second) = load_or_compile(&engine, crate::GUEST_WASM, Some(&cache)).unwrap();
        assert_eq!(second, Origin::LoadedFromCache);

        // A file others could have written is never loaded.
        let entry = only_entry(&cache);
        fs::set_permissions(&entry, fs::Permissions::from_mode(0o666)).unwrap();
        let (_, third) = load_or_compile(&engine, crate::GUEST_WASM, Some(&cache)).unwrap();
        assert_eq!(
            third,
            Origin::CompiledAndCached,
            "rewritten with safe permissions"
        );

        // Garbage under the right name is detected and replaced.
        fs::write(&entry, b"not native code").unwrap();
        let (_, fourth) = load_or_compile(&engine, crate::GUEST_WASM, Some(&cache)).unwrap();
        assert_eq!(fourth, Origin::CompiledAndCached);
    }

    #[test]
    fn a_planted_link_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let engine = engine();
        load_or_compile(&engine, crate::GUEST_WASM, Some(&cache)).unwrap();
        let entry = only_entry(&cache);
        // Our own valid entry, moved away and linked back: a link is refused
        // even when what it points to would pass.
        let elsewhere = dir.path().join("elsewhere.cwasm");
        fs::rename(&entry, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &entry).unwrap();
        let (_, origin) = load_or_compile(&engine, crate::GUEST_WASM, Some(&cache)).unwrap();
        assert_eq!(origin, Origin::CompiledAndCached);
        assert!(
            fs::symlink_metadata(&entry).unwrap().is_file(),
            "the link was replaced"
        );
    }

    #[test]
    fn a_parent_others_can_write_makes_the_cache_unusable() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let cache = open.join("rekey");
        let (_, origin) = load_or_compile(&engine(), crate::GUEST_WASM, Some(&cache)).unwrap();
        assert_eq!(origin, Origin::Compiled);
        // With the sticky bit (as /tmp has), others cannot swap our entries.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o1777)).unwrap();
        let (_, origin) = load_or_compile(&engine(), crate::GUEST_WASM, Some(&cache)).unwrap();
        assert_eq!(origin, Origin::CompiledAndCached);
    }

    #[test]
    fn a_directory_others_can_write_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let (_, origin) = load_or_compile(&engine(), crate::GUEST_WASM, Some(dir.path())).unwrap();
        assert_eq!(origin, Origin::Compiled);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
