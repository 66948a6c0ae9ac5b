// SPDX-License-Identifier: Apache-2.0
//! Mounting by file descriptor: a mount is made detached (a clone of a
//! tree with open_tree(2), or a new file system with fsopen(2)/fsmount(2)),
//! given its attributes with mount_setattr(2) while nobody else can reach
//! it, and attached with move_mount(2) onto a directory descriptor that was
//! opened without following anything. Unmounting never follows a symlink
//! (`UMOUNT_NOFOLLOW`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use libc::{
    MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MS_SHARED, MS_SLAVE,
};

/// A descriptor a system call returned (as its `c_long`), or its error.
fn owned_fd(rc: libc::c_long) -> std::io::Result<OwnedFd> {
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(rc).map_err(std::io::Error::other)?;
    // SAFETY: the system call returned a new descriptor this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// 0 from a system call, or its error.
fn done(rc: libc::c_long) -> std::io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn c_string(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))
}

/// A detached clone of the mount at `path` (absolute, or relative to the
/// working directory) — with the mounts below it when `recursive` — for
/// [`set_attributes`] and [`move_mount_onto`].
///
/// # Errors
/// open_tree(2)'s.
pub fn clone_tree(path: &Path, recursive: bool) -> std::io::Result<OwnedFd> {
    let c_path = c_string(path.as_os_str().as_bytes())?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE.cast_unsigned();
    }
    // SAFETY: a NUL-terminated path that outlives the call; the result is
    // checked.
    owned_fd(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_path.as_ptr(), flags) })
}

/// Sets the `MOUNT_ATTR_*` bits `set` and clears `clear` on the mount open
/// at `mount` (and every mount below it when `recursive`); a non-zero
/// `propagation` (`MS_SHARED`, `MS_SLAVE`, `MS_PRIVATE`) changes that too.
///
/// # Errors
/// mount_setattr(2)'s.
pub fn set_attributes(
    mount: BorrowedFd<'_>,
    set: u64,
    clear: u64,
    propagation: u64,
    recursive: bool,
) -> std::io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: clear,
        propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: an empty NUL-terminated path, a mount_attr that outlives the
    // call and its size.
    done(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &raw const attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    })
}

/// Attaches the detached mount open at `mount` onto the directory (or
/// file) open at `target` — that very inode, whatever its path has become.
///
/// # Errors
/// move_mount(2)'s.
pub fn move_mount_onto(mount: BorrowedFd<'_>, target: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: descriptors and empty NUL-terminated paths that outlive the
    // call.
    done(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mount.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
}

/// A file system being configured (fsopen(2)), to become a detached mount.
#[derive(Debug)]
pub struct FsContext {
    fd: OwnedFd,
}

impl FsContext {
    /// A new file system of type `fs_type` (`overlay`, `tmpfs`, `ext4`...).
    ///
    /// # Errors
    /// fsopen(2)'s: ENODEV for a type the kernel does not know.
    pub fn new(fs_type: &str) -> std::io::Result<Self> {
        let c_type = c_string(fs_type.as_bytes())?;
        // SAFETY: a NUL-terminated name that outlives the call.
        let fd = owned_fd(unsafe {
            libc::syscall(libc::SYS_fsopen, c_type.as_ptr(), libc::FSOPEN_CLOEXEC)
        })?;
        Ok(FsContext { fd })
    }

    /// Sets the option `key` to `value` (`lowerdir+`, `upperdir`, `size`...).
    ///
    /// # Errors
    /// fsconfig(2)'s: EINVAL for an option the file system refuses.
    pub fn set(&self, key: &str, value: &[u8]) -> std::io::Result<()> {
        let c_key = c_string(key.as_bytes())?;
        let c_value = c_string(value)?;
        self.configure(libc::FSCONFIG_SET_STRING, Some(&c_key), c_value.as_ptr())
    }

    /// Sets the option `key` that takes no value (`userxattr`...).
    ///
    /// # Errors
    /// As [`FsContext::set`].
    pub fn set_flag(&self, key: &str) -> std::io::Result<()> {
        let c_key = c_string(key.as_bytes())?;
        self.configure(libc::FSCONFIG_SET_FLAG, Some(&c_key), std::ptr::null())
    }

    /// Creates the file system and a detached mount of it with the
    /// `MOUNT_ATTR_*` bits `attributes`.
    ///
    /// # Errors
    /// fsconfig(2)'s create (the file system's refusal of its options) or
    /// fsmount(2)'s.
    pub fn mount(self, attributes: u64) -> std::io::Result<OwnedFd> {
        self.configure(libc::FSCONFIG_CMD_CREATE, None, std::ptr::null())?;
        // SAFETY: a file system context this value owns.
        owned_fd(unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.fd.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                attributes,
            )
        })
    }

    fn configure(
        &self,
        command: libc::c_uint,
        key: Option<&CString>,
        value: *const libc::c_char,
    ) -> std::io::Result<()> {
        let key = key.map_or(std::ptr::null(), |key| key.as_ptr());
        // SAFETY: the context's descriptor, a NUL-terminated key and value
        // (or null where the command takes none) that outlive the call.
        done(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                command,
                key,
                value,
                0 as libc::c_int,
            )
        })
    }
}

/// Detaches the mount at `path` (umount2 MNT_DETACH|UMOUNT_NOFOLLOW: a
/// symlink there is not followed). Whether something was unmounted: a
/// path that is no mount point (EINVAL) or is gone (ENOENT) is `false`.
///
/// # Errors
/// umount2(2)'s other errors.
pub fn detach(path: &Path) -> std::io::Result<bool> {
    let c_path = c_string(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOENT) => Ok(false),
        _ => Err(err),
    }
}

/// The `ST_*` flags (`ST_RDONLY`, `ST_NOSUID`, `ST_NODEV`, `ST_NOEXEC`...)
/// of the mount the descriptor is on.
///
/// # Errors
/// fstatvfs(2)'s.
pub fn flags_of(fd: BorrowedFd<'_>) -> std::io::Result<libc::c_ulong> {
    // SAFETY: statvfs is plain data; zeroed is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor and a statvfs that outlive the call.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &raw mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_flag)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::openat::{mkdir_beneath, open_dir, open_trusted_dir, BENEATH};

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn test_a_tmpfs_bound_read_only_shows_later_mounts() {
        if !is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vmpod-sys-mount-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = open_trusted_dir(&dir).unwrap();
        let private = mkdir_beneath(base.as_fd(), Path::new("private"), 0o700).unwrap();
        let shared = mkdir_beneath(base.as_fd(), Path::new("shared"), 0o700).unwrap();
        let tmpfs = FsContext::new("tmpfs").unwrap();
        tmpfs.set("size", b"64k").unwrap();
        tmpfs.set("nr_inodes", b"16").unwrap();
        let tmpfs = tmpfs
            .mount(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC)
            .unwrap();
        move_mount_onto(tmpfs.as_fd(), private.as_fd()).unwrap();
        set_attributes(tmpfs.as_fd(), 0, 0, MS_SHARED, false).unwrap();
        let view = clone_tree(&dir.join("private"), false).unwrap();
        set_attributes(
            view.as_fd(),
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
            0,
            0,
            false,
        )
        .unwrap();
        move_mount_onto(view.as_fd(), shared.as_fd()).unwrap();
        set_attributes(view.as_fd(), 0, 0, MS_SLAVE, false).unwrap();

        let root = open_dir(base.as_fd(), Path::new("private"), BENEATH).unwrap();
        let flags = flags_of(root.as_fd()).unwrap();
        assert_eq!(flags & libc::ST_RDONLY, 0);
        assert_ne!(flags & libc::ST_NOSUID, 0);
        assert_ne!(flags & libc::ST_NODEV, 0);
        let point = mkdir_beneath(root.as_fd(), Path::new("point"), 0o755).unwrap();
        let seen = open_dir(base.as_fd(), Path::new("shared"), BENEATH).unwrap();
        assert_ne!(flags_of(seen.as_fd()).unwrap() & libc::ST_RDONLY, 0);
        assert!(std::fs::create_dir(dir.join("shared/x")).is_err());
        // A later mount below private/ appears below shared/.
        let inner = FsContext::new("tmpfs").unwrap().mount(0).unwrap();
        move_mount_onto(inner.as_fd(), point.as_fd()).unwrap();
        std::fs::write(dir.join("private/point/file"), "x").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("shared/point/file")).unwrap(),
            "x"
        );
        // The tmpfs's inode limit holds.
        let err = (0..32)
            .try_for_each(|n| std::fs::create_dir(dir.join(format!("private/{n}"))))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        // A symlink at a mount point is not followed by detach.
        std::os::unix::fs::symlink(dir.join("private"), dir.join("link")).unwrap();
        assert!(!detach(&dir.join("link")).unwrap());
        assert!(detach(&dir.join("private/point")).unwrap());
        assert!(!dir.join("shared/point/file").exists());
        assert!(detach(&dir.join("shared")).unwrap());
        assert!(detach(&dir.join("private")).unwrap());
        assert!(!detach(&dir.join("private")).unwrap());
        assert!(!detach(&dir.join("nonexistent")).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_a_read_only_clone_is_read_only_on_the_host() {
        if !is_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("vmpod-sys-clone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("source")).unwrap();
        std::fs::create_dir_all(dir.join("target")).unwrap();
        std::fs::write(dir.join("source/file"), "x").unwrap();
        let clone = clone_tree(&dir.join("source"), true).unwrap();
        set_attributes(clone.as_fd(), MOUNT_ATTR_RDONLY, 0, 0, true).unwrap();
        let target = open_trusted_dir(&dir.join("target")).unwrap();
        move_mount_onto(clone.as_fd(), target.as_fd()).unwrap();
        let err = std::fs::write(dir.join("target/file"), "y").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EROFS));
        std::fs::write(dir.join("source/file"), "z").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("target/file")).unwrap(),
            "z"
        );
        assert!(detach(&dir.join("target")).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_an_unknown_file_system_or_option_is_refused() {
        if !is_root() {
            eprintln!("skipped: fsopen needs root");
            return;
        }
        assert_eq!(
            FsContext::new("no-such-fs").unwrap_err().raw_os_error(),
            Some(libc::ENODEV)
        );
        let tmpfs = FsContext::new("tmpfs").unwrap();
        assert!(tmpfs.set("no-such-option", b"1").is_err());
    }
}
