// SPDX-License-Identifier: Apache-2.0
//! Paths resolved below a trusted directory file descriptor with
//! openat2(2), so that nothing another party placed there — a symlink, a
//! magic link, `..`, a mount — can send the host elsewhere. The shim makes
//! and removes the pod share's mount points with these.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Resolution stays below the directory, follows no symlink (nor magic
/// link) in any component.
pub const BENEATH: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
/// [`BENEATH`], and no component may cross into another mount: what is
/// found lies on the directory's own file system.
pub const BENEATH_SAME_MOUNT: u64 = BENEATH | libc::RESOLVE_NO_XDEV;

/// openat2(`dir`, `path`, {`flags` | O_CLOEXEC, `mode`, `resolve`}).
///
/// # Errors
/// The system's: ELOOP for a symlink, EXDEV for a `..` or a mount crossing
/// that `resolve` forbids, ENOENT, EEXIST with O_CREAT|O_EXCL...
pub fn openat2(
    dir: BorrowedFd<'_>,
    path: &Path,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> std::io::Result<OwnedFd> {
    let c_path = c_path(path.as_os_str())?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::from((flags | libc::O_CLOEXEC).cast_unsigned());
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = resolve;
    loop {
        // SAFETY: a NUL-terminated path and an open_how that outlive the
        // call, with its size; the result is checked below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c_path.as_ptr(),
                &raw const how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            let fd = libc::c_int::try_from(fd).map_err(std::io::Error::other)?;
            // SAFETY: openat2 returned a new descriptor this process owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = std::io::Error::last_os_error();
        // EAGAIN: a rename raced the lookup (the kernel asks for a retry).
        if !matches!(err.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
            return Err(err);
        }
    }
}

/// An O_PATH descriptor of the directory at `path` below `dir`
/// (`.` for `dir` itself), resolved with `resolve`.
///
/// # Errors
/// As [`openat2`]; ENOTDIR if it is no directory.
pub fn open_dir(dir: BorrowedFd<'_>, path: &Path, resolve: u64) -> std::io::Result<OwnedFd> {
    openat2(
        dir,
        path,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        resolve,
    )
}

/// An O_PATH descriptor of the directory at the absolute, trusted `path`
/// (the caller's own state directory), its last component not a symlink.
///
/// # Errors
/// open(2)'s.
pub fn open_trusted_dir(path: &Path) -> std::io::Result<OwnedFd> {
    let c_path = c_path(path.as_os_str())?;
    // SAFETY: a NUL-terminated path that outlives the call; the result is
    // checked below.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The parent directory of `path` below `dir` (resolved on `dir`'s own
/// mount, following no symlink) and `path`'s last component.
fn parent_of<'a>(dir: BorrowedFd<'_>, path: &'a Path) -> std::io::Result<(OwnedFd, &'a OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok((open_dir(dir, parent, BENEATH_SAME_MOUNT)?, name))
}

/// Makes the directory `path` below `dir` with `mode` (its parent reached
/// without a symlink or a mount crossing) and returns an O_PATH descriptor
/// of it.
///
/// # Errors
/// mkdirat(2)'s (EEXIST if anything is there), or the parent's lookup's.
pub fn mkdir_beneath(dir: BorrowedFd<'_>, path: &Path, mode: u32) -> std::io::Result<OwnedFd> {
    let (parent, name) = parent_of(dir, path)?;
    let c_name = c_path(name)?;
    // SAFETY: a descriptor and a NUL-terminated name that outlive the call.
    if unsafe { libc::mkdirat(parent.as_raw_fd(), c_name.as_ptr(), mode) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    open_dir(parent.as_fd(), Path::new(name), BENEATH_SAME_MOUNT)
}

/// Creates the empty regular file `path` below `dir` with `mode`:
/// O_CREAT|O_EXCL|O_NOFOLLOW, so that nothing in place is opened or
/// truncated.
///
/// # Errors
/// EEXIST if anything is there; openat2's otherwise.
pub fn create_file_beneath(
    dir: BorrowedFd<'_>,
    path: &Path,
    mode: u32,
) -> std::io::Result<OwnedFd> {
    let (parent, name) = parent_of(dir, path)?;
    openat2(
        parent.as_fd(),
        Path::new(name),
        libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY,
        mode,
        BENEATH_SAME_MOUNT,
    )
}

/// Removes the directory (`dir_entry`) or other entry at `path` below
/// `dir` without following anything; an entry already gone is success.
///
/// # Errors
/// unlinkat(2)'s: ENOTEMPTY, EBUSY for a mount point, EISDIR/ENOTDIR when
/// the entry is not of the kind named.
pub fn remove_beneath(dir: BorrowedFd<'_>, path: &Path, dir_entry: bool) -> std::io::Result<()> {
    let (parent, name) = match parent_of(dir, path) {
        Ok(found) => found,
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(err) => return Err(err),
    };
    unlink(parent.as_fd(), &c_path(name)?, dir_entry)
}

/// unlinkat(`dir`, `name`), AT_REMOVEDIR for a directory; ENOENT is success.
fn unlink(dir: BorrowedFd<'_>, name: &CStr, dir_entry: bool) -> std::io::Result<()> {
    let flags = if dir_entry { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: a descriptor and a NUL-terminated name that outlive the call.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        _ => Err(err),
    }
}

/// Removes `name` below `dir` and everything in it, never crossing into
/// another mount and never following a symlink: a mount still in the tree
/// stops the removal (EXDEV) before anything on it is touched. Gone
/// already is success.
///
/// # Errors
/// EXDEV for a mount in the tree; the lookups' or unlinkat(2)'s.
pub fn remove_tree_on_one_mount(dir: BorrowedFd<'_>, name: &Path) -> std::io::Result<()> {
    remove_tree_at(dir, name, 0)
}

/// Deeper than this, [`remove_tree_on_one_mount`] gives up (ELOOP).
const MAX_TREE_DEPTH: usize = 64;

fn remove_tree_at(dir: BorrowedFd<'_>, name: &Path, depth: usize) -> std::io::Result<()> {
    let c_name = c_path(name.as_os_str())?;
    let opened = openat2(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
        BENEATH_SAME_MOUNT,
    );
    let sub = match opened {
        Ok(sub) => sub,
        // Not a directory (or a symlink): an entry of its own.
        Err(err) if matches!(err.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
            return unlink(dir, &c_name, false);
        }
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(err) => return Err(err),
    };
    if depth >= MAX_TREE_DEPTH {
        return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
    }
    for entry in entries(&sub)? {
        remove_tree_at(sub.as_fd(), Path::new(OsStr::from_bytes(&entry)), depth + 1)?;
    }
    unlink(dir, &c_name, true)
}

/// The names in the directory open at `dir` (no `.` or `..`).
fn entries(dir: &OwnedFd) -> std::io::Result<Vec<Vec<u8>>> {
    // fdopendir takes the descriptor it is given: hand it a duplicate.
    let own = dir.try_clone()?;
    // SAFETY: fdopendir on a descriptor this function owns; on success
    // the stream owns it (closedir below closes it).
    let stream = unsafe { libc::fdopendir(own.as_raw_fd()) };
    if stream.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    std::mem::forget(own);
    let mut names = Vec::new();
    loop {
        // SAFETY: a stream fdopendir returned and not yet closed.
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry whose d_name is
        // NUL-terminated; it stays valid until the next readdir.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    // SAFETY: the stream is closed once, here.
    unsafe { libc::closedir(stream) };
    Ok(names)
}

/// `name` as a C string; a NUL in it is InvalidInput.
fn c_path(name: &OsStr) -> std::io::Result<CString> {
    CString::new(name.as_bytes())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// A fresh directory for one test, and its descriptor.
    fn scratch(name: &str) -> (std::path::PathBuf, OwnedFd) {
        let dir =
            std::env::temp_dir().join(format!("vmpod-sys-openat-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let fd = open_trusted_dir(&dir).unwrap();
        (dir, fd)
    }

    #[test]
    fn test_a_symlink_anywhere_on_the_path_is_refused() {
        let (dir, fd) = scratch("symlink");
        let outside = dir.with_extension("outside");
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();
        for path in ["link/new", "link"] {
            let err = mkdir_beneath(fd.as_fd(), Path::new(path), 0o755).unwrap_err();
            assert!(
                matches!(
                    err.raw_os_error(),
                    Some(libc::ELOOP | libc::ENOTDIR | libc::EEXIST)
                ),
                "{path}: {err}"
            );
        }
        let err = create_file_beneath(fd.as_fd(), Path::new("link/file"), 0o600).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)),
            "{err}"
        );
        // A symlink to a file at the file's own place is not opened.
        std::os::unix::fs::symlink(outside.join("target"), dir.join("file")).unwrap();
        let err = create_file_beneath(fd.as_fd(), Path::new("file"), 0o600).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        assert!(!outside.join("target").exists());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        let err = open_dir(fd.as_fd(), Path::new("../"), BENEATH).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EXDEV));
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn test_made_entries_have_their_mode_and_go_again() {
        let (dir, fd) = scratch("make");
        mkdir_beneath(fd.as_fd(), Path::new("a"), 0o700).unwrap();
        mkdir_beneath(fd.as_fd(), Path::new("a/b"), 0o755).unwrap();
        create_file_beneath(fd.as_fd(), Path::new("a/f"), 0o600).unwrap();
        let mode = |path: &str| {
            std::fs::symlink_metadata(dir.join(path))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        // The umask may clear bits, never set them.
        assert_eq!(mode("a") & !0o700, 0);
        assert!(dir.join("a/b").is_dir());
        assert!(dir.join("a/f").is_file());
        assert_eq!(
            mkdir_beneath(fd.as_fd(), Path::new("a"), 0o700)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EEXIST)
        );
        remove_beneath(fd.as_fd(), Path::new("a/f"), false).unwrap();
        remove_beneath(fd.as_fd(), Path::new("a/f"), false).unwrap();
        remove_beneath(fd.as_fd(), Path::new("a/b"), true).unwrap();
        remove_beneath(fd.as_fd(), Path::new("gone/x"), true).unwrap();
        assert_eq!(std::fs::read_dir(dir.join("a")).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_a_tree_goes_without_following_its_symlinks() {
        let (dir, fd) = scratch("tree");
        let outside = dir.with_extension("kept");
        std::fs::create_dir_all(outside.join("sub")).unwrap();
        std::fs::write(outside.join("sub/file"), "kept").unwrap();
        std::fs::create_dir_all(dir.join("t/a/b")).unwrap();
        std::fs::write(dir.join("t/a/b/f"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("t/a/link")).unwrap();
        std::fs::write(dir.join(std::ffi::OsStr::from_bytes(b"t/\xff")), "x").unwrap();
        remove_tree_on_one_mount(fd.as_fd(), Path::new("t")).unwrap();
        assert!(!dir.join("t").exists());
        remove_tree_on_one_mount(fd.as_fd(), Path::new("t")).unwrap();
        assert_eq!(
            std::fs::read_to_string(outside.join("sub/file")).unwrap(),
            "kept"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }
}
