//! The rule ssh applies to `~/.ssh`, for the files rekey trusts: the
//! compiled-component cache (loading an entry runs its code) and the SQLite
//! store (it holds refresh tokens and client secrets, and names the URL they
//! are sent to). A file counts only if this user (or root) alone could have
//! written it, and the directories above it; it is opened without following a
//! final link and judged through the open descriptor, never by a second
//! lookup of its path (which another process could race).

use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// The effective user id: whom trusted files must belong to.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Group- or other-writable.
pub(crate) fn writable_by_others(m: &Metadata) -> bool {
    m.mode() & 0o022 != 0
}

/// Owned by this user or by root.
pub(crate) fn ours_or_roots(m: &Metadata) -> bool {
    m.uid() == euid() || m.uid() == 0
}

/// Checks every directory above `dir` (after resolving links), not `dir`
/// itself: whoever can write one can swap the whole tree below it, so each
/// must be ours or root's, and writable by others only with the sticky bit
/// (as /tmp is), which keeps them from renaming what they do not own.
pub(crate) fn check_ancestors(dir: &Path) -> Result<(), String> {
    let absolute = dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    for ancestor in absolute.ancestors().skip(1) {
        let m = fs::metadata(ancestor).map_err(|e| format!("{}: {e}", ancestor.display()))?;
        let sticky = m.mode() & 0o1000 != 0;
        if !ours_or_roots(&m) || (writable_by_others(&m) && !sticky) {
            return Err(format!(
                "{} can be written by another user (owner uid {}, mode {:04o})",
                ancestor.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

/// Opens `path` for reading without following a final symbolic link (that
/// fails with `ELOOP`, see [`is_link_refused`]) and without blocking on a FIFO.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
}

/// Creates `path` readable and writable by this user alone (0600), failing
/// with `AlreadyExists` if anything is there, a dangling link included
/// (`O_CREAT | O_EXCL | O_NOFOLLOW`).
pub(crate) fn create_new_private(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Whether an open with `O_NOFOLLOW` failed because the path is a link.
pub(crate) fn is_link_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ELOOP)
}

/// What is wrong with a file, as its open descriptor says (`fstat`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FileProblem {
    /// A directory, FIFO, device…
    NotRegular,
    /// Belongs to another user (this uid).
    Foreign(u32),
    /// Group or others may write it (this mode).
    WritableByOthers(u32),
    /// Group or others may read it, but not write it (this mode).
    ReadableByOthers(u32),
}

/// Whether the file behind `m` is a regular file of this user's that nobody
/// else can read or write; the first problem found otherwise.
pub(crate) fn file_problem(m: &Metadata) -> Option<FileProblem> {
    let mode = m.mode() & 0o7777;
    if !m.is_file() {
        Some(FileProblem::NotRegular)
    } else if m.uid() != euid() {
        Some(FileProblem::Foreign(m.uid()))
    } else if writable_by_others(m) {
        Some(FileProblem::WritableByOthers(mode))
    } else if mode & 0o077 != 0 {
        Some(FileProblem::ReadableByOthers(mode))
    } else {
        None
    }
}
