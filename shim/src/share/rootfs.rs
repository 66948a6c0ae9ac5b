// SPDX-License-Identifier: Apache-2.0
//! containerd's mounts of a container's root file system (an overlay of the
//! snapshot's layers, a bind of a directory, or a file system on a device)
//! made into detached mounts, to be attached by descriptor in the share.
//! Each is `nosuid,nodev` on the host, and read-only where the mount or the
//! spec's `root.readonly` asks.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use containerd_shim::protos::types::mount::Mount as ContainerdMount;
use vmpod_sys::mount::{
    clone_tree, set_attributes, FsContext, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID,
    MOUNT_ATTR_RDONLY,
};

/// Where a mount of the container's spec goes in its root, and whether
/// it is a directory (else a file: a bind of a file, e.g. CRI's
/// `/etc/resolv.conf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPoint {
    /// The mount's destination, absolute in the container.
    pub destination: PathBuf,
    /// A directory, or a file.
    pub is_dir: bool,
}

/// The attributes every host mount into the share has.
pub(super) const ALWAYS: u64 = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;

/// Mount options that are the mount's attributes or the kernel's
/// defaults, not the file system's: they never reach fsconfig(2).
/// (`suid` and `dev` are not honoured: the share is always nosuid,nodev.)
const NOT_FS_OPTIONS: [&str; 12] = [
    "rw", "ro", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "async", "defaults",
    "relatime", "bind",
];

/// Whether a mount with this type and these options is a bind mount.
pub(crate) fn is_bind(fs_type: &str, options: &[String]) -> bool {
    fs_type == "bind"
        || options
            .iter()
            .any(|option| option == "bind" || option == "rbind")
}

/// A detached bind of the host path `source` (with the mounts below it for
/// `rbind`), read-only if `readonly` or an `ro` option says so.
///
/// # Errors
/// open_tree(2)'s or mount_setattr(2)'s.
pub(super) fn bind(source: &Path, options: &[String], readonly: bool) -> std::io::Result<OwnedFd> {
    let recursive = options.iter().any(|option| option == "rbind");
    let mut attributes = ALWAYS;
    if readonly || options.iter().any(|option| option == "ro") {
        attributes |= MOUNT_ATTR_RDONLY;
    }
    let tree = clone_tree(source, recursive)?;
    set_attributes(tree.as_fd(), attributes, 0, 0, recursive)?;
    Ok(tree)
}

/// containerd's `mount` as a detached mount, read-only if `readonly`.
///
/// # Errors
/// The file system's refusal of its type or an option, or the bind's.
pub(super) fn detached(mount: &ContainerdMount, readonly: bool) -> std::io::Result<OwnedFd> {
    if is_bind(&mount.type_, &mount.options) {
        return bind(Path::new(&mount.source), &mount.options, readonly);
    }
    let context = FsContext::new(&mount.type_)?;
    if !mount.source.is_empty() {
        context.set("source", mount.source.as_bytes())?;
    }
    let mut attributes = ALWAYS;
    if readonly {
        attributes |= MOUNT_ATTR_RDONLY;
    }
    for option in &mount.options {
        match option.as_str() {
            "ro" => attributes |= MOUNT_ATTR_RDONLY,
            "noexec" => attributes |= MOUNT_ATTR_NOEXEC,
            known if NOT_FS_OPTIONS.contains(&known) => {}
            _ => configure(&context, &mount.type_, option)?,
        }
    }
    context.mount(attributes)
}

/// Passes one file system option on: `key=value` or a flag. An overlay's
/// `lowerdir` goes layer by layer (`lowerdir+`), so that no length limit of
/// one option caps an image's layers.
fn configure(context: &FsContext, fs_type: &str, option: &str) -> std::io::Result<()> {
    match option.split_once('=') {
        Some(("lowerdir", layers)) if fs_type == "overlay" => layers
            .split(':')
            .try_for_each(|layer| context.set("lowerdir+", layer.as_bytes())),
        Some((key, value)) => context.set(key, value.as_bytes()),
        None => context.set_flag(option),
    }
}

/// Makes the root at `root` (a detached mount) read-only, after making the
/// `points` its spec's mounts need and it lacks: the guest cannot make them
/// in a read-only root (runc makes them before it turns the root
/// read-only). A point whose path crosses a symlink or a mount is left to
/// the agent, which resolves it within the root as runc does.
///
/// # Errors
/// mount_setattr(2)'s.
pub(super) fn seal_read_only(root: BorrowedFd<'_>, points: &[MountPoint]) -> std::io::Result<()> {
    for point in points {
        if let Err(err) = make_mount_point(root, point) {
            tracing::debug!(
                "mount point {} left to the agent: {err}",
                point.destination.display()
            );
        }
    }
    set_attributes(root, MOUNT_ATTR_RDONLY, 0, 0, true)
}

/// Makes `point` below `root` and the directories above it where they
/// are missing; what exists stays as it is.
fn make_mount_point(root: BorrowedFd<'_>, point: &MountPoint) -> std::io::Result<()> {
    let mut path = PathBuf::new();
    for component in point.destination.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => path.push(name),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a path with ..",
                ))
            }
        }
    }
    let mut above = PathBuf::new();
    if let Some(parent) = path.parent() {
        for name in parent.iter() {
            above.push(name);
            exists_ok(vmpod_sys::openat::mkdir_beneath(root, &above, 0o755))?;
        }
    }
    if point.is_dir {
        exists_ok(vmpod_sys::openat::mkdir_beneath(root, &path, 0o755))
    } else {
        exists_ok(vmpod_sys::openat::create_file_beneath(root, &path, 0o644))
    }
}

/// Success, or EEXIST.
fn exists_ok(result: std::io::Result<OwnedFd>) -> std::io::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_bind_mounts_are_told_by_type_or_option() {
        assert!(is_bind("bind", &[]));
        assert!(is_bind("none", &["rbind".into(), "ro".into()]));
        assert!(is_bind("", &["bind".into()]));
        assert!(!is_bind("overlay", &["lowerdir=/a".into()]));
        assert!(!is_bind("tmpfs", &["nosuid".into()]));
    }

    #[test]
    fn test_an_unknown_file_system_option_is_refused() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: fsopen needs root");
            return;
        }
        let mount = ContainerdMount {
            type_: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["no-such-option=1".into()],
            ..Default::default()
        };
        assert!(detached(&mount, false).is_err());
        let mount = ContainerdMount {
            type_: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["size=64k".into(), "ro".into(), "nosuid".into()],
            ..Default::default()
        };
        detached(&mount, false).unwrap();
    }
}
