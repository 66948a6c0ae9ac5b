// SPDX-License-Identifier: Apache-2.0
//! The pod directory's share: `mounts/`, a small tmpfs only the host sees,
//! where the shim makes mount points and mounts; `shared/`, a read-only
//! bind of it with slave propagation (later mounts below `mounts/` appear
//! there), which is what `vmpod-vm` serves to the guest; `containers/`, the
//! records of what was mounted. The guest can write only inside the
//! containers' own mounts, never where mount points are made.

use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use vmpod_sys::mount::{
    clone_tree, detach, move_mount_onto, set_attributes, FsContext, MOUNT_ATTR_NODEV,
    MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY, MS_SHARED, MS_SLAVE,
};
use vmpod_sys::openat::{
    mkdir_beneath, open_trusted_dir, openat2, remove_tree_on_one_mount, BENEATH_SAME_MOUNT,
};

use super::ShareError;

/// Below the pod directory: where the shim mounts (host-private).
pub const MOUNTS_DIR: &str = "mounts";
/// Below the pod directory: the guest's read-only view of `mounts/`.
pub const SHARED_DIR: &str = "shared";
/// Below the pod directory: one record of mounts per container.
pub const RECORDS_DIR: &str = "containers";
/// How many mounts may be stacked on one point before teardown gives up.
const MAX_STACKED: usize = 16;

/// The bounds of a pod's `mounts/` tmpfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareLimits {
    /// Its size, MiB.
    pub size_mib: u32,
    /// Its number of inodes (directories and files).
    pub inodes: u32,
}

/// Makes the pod directory `root` (0700, its missing parents too) with its
/// share. On failure, what was made is removed again.
///
/// # Errors
/// [`ShareError::Create`] or [`ShareError::Mount`] naming the step.
pub fn create(root: &Path, limits: ShareLimits) -> Result<(), ShareError> {
    let created = |path: &Path| {
        let path = path.display().to_string();
        move |source| ShareError::Create { path, source }
    };
    if let Some(parent) = root.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(created(parent))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(root)
        .map_err(created(root))?;
    let result = make_share(root, limits);
    if result.is_err() {
        if let Err(err) = remove(root) {
            tracing::warn!(
                "rolling back {}: {}",
                root.display(),
                vmpod_sys::error::chain(&err)
            );
        }
    }
    result
}

/// The share's directories and mounts in the new pod directory `root`.
fn make_share(root: &Path, limits: ShareLimits) -> Result<(), ShareError> {
    let created = |name: &str| {
        let path = root.join(name).display().to_string();
        move |source| ShareError::Create { path, source }
    };
    let pod = open_trusted_dir(root).map_err(created("."))?;
    mkdir_beneath(pod.as_fd(), Path::new(RECORDS_DIR), 0o700).map_err(created(RECORDS_DIR))?;
    let mounts =
        mkdir_beneath(pod.as_fd(), Path::new(MOUNTS_DIR), 0o700).map_err(created(MOUNTS_DIR))?;
    let shared =
        mkdir_beneath(pod.as_fd(), Path::new(SHARED_DIR), 0o700).map_err(created(SHARED_DIR))?;
    let mount_failed = |what: &str, target: &str| {
        let what = what.to_owned();
        let target = root.join(target).display().to_string();
        move |source: std::io::Error| ShareError::Mount {
            what,
            target,
            source: Box::new(source),
        }
    };
    let tmpfs = (|| {
        let context = FsContext::new("tmpfs")?;
        context.set("size", format!("{}m", limits.size_mib).as_bytes())?;
        context.set("nr_inodes", limits.inodes.to_string().as_bytes())?;
        context.set("mode", b"0755")?;
        let tmpfs = context.mount(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC)?;
        move_mount_onto(tmpfs.as_fd(), mounts.as_fd())?;
        // Shared, so that what is mounted below reaches the slave view.
        set_attributes(tmpfs.as_fd(), 0, 0, MS_SHARED, false)
    })();
    tmpfs.map_err(mount_failed("tmpfs", MOUNTS_DIR))?;
    let view = (|| {
        let view = clone_tree(&root.join(MOUNTS_DIR), false)?;
        set_attributes(
            view.as_fd(),
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
            0,
            0,
            false,
        )?;
        move_mount_onto(view.as_fd(), shared.as_fd())?;
        set_attributes(view.as_fd(), 0, 0, MS_SLAVE, false)
    })();
    view.map_err(mount_failed(
        &root.join(MOUNTS_DIR).display().to_string(),
        SHARED_DIR,
    ))
}

/// Removes the pod directory `root` with its share: `shared/` and
/// `mounts/` detached (with every container mount below), then the tree
/// removed without crossing a mount, and the namespace directory with its
/// last pod. Anything already gone is success, so a failed removal can be
/// retried.
///
/// # Errors
/// [`ShareError::Unmount`] or [`ShareError::Remove`]; a mount still in the
/// tree stops the removal before anything on it is touched.
pub fn remove(root: &Path) -> Result<(), ShareError> {
    let unmount_failed = |path: PathBuf| {
        move |source| ShareError::Unmount {
            path: path.display().to_string(),
            source,
        }
    };
    let pod = match open_trusted_dir(root) {
        Ok(pod) => Some(pod),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => None,
        Err(err) => return Err(unmount_failed(root.to_owned())(err)),
    };
    if let Some(pod) = pod {
        for name in [SHARED_DIR, MOUNTS_DIR] {
            detach_all(pod.as_fd(), root, name).map_err(unmount_failed(root.join(name)))?;
        }
        let (Some(parent), Some(name)) = (root.parent(), root.file_name()) else {
            return Ok(());
        };
        let removed = open_trusted_dir(parent)
            .and_then(|parent| remove_tree_on_one_mount(parent.as_fd(), Path::new(name)));
        removed.map_err(|source| ShareError::Remove {
            path: root.display().to_string(),
            source,
        })?;
    }
    // The namespace directory goes with its last pod.
    if let Some(namespace) = root.parent() {
        let _ = std::fs::remove_dir(namespace);
    }
    Ok(())
}

/// Detaches every mount stacked on `name` in the directory open at `dir`
/// (whose path is `path`): while looking it up from `dir` crosses a mount.
pub(super) fn detach_all(
    dir: std::os::fd::BorrowedFd<'_>,
    path: &Path,
    name: &str,
) -> std::io::Result<()> {
    for _ in 0..MAX_STACKED {
        match openat2(
            dir,
            Path::new(name),
            libc::O_PATH | libc::O_NOFOLLOW,
            0,
            BENEATH_SAME_MOUNT,
        ) {
            // On `dir`'s own mount (or not there, or a symlink): nothing
            // is mounted there.
            Ok(_) => return Ok(()),
            Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ELOOP)) => {
                return Ok(())
            }
            Err(err) if err.raw_os_error() == Some(libc::EXDEV) => {
                if !detach(&path.join(name))? {
                    // The crossing is not at `name` itself: not ours.
                    return Err(std::io::Error::other(format!(
                        "{} lies on another mount",
                        path.join(name).display()
                    )));
                }
            }
            Err(err) => return Err(err),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::ResourceBusy,
        format!(
            "{}: still mounted after {MAX_STACKED} detaches",
            path.join(name).display()
        ),
    ))
}

/// The containers with a record in the pod directory `root` (what is
/// mounted for them): the pod's state, which the guest cannot touch. None
/// if the directory is gone.
///
/// # Errors
/// The records' directory cannot be read.
pub fn recorded_containers(root: &Path) -> std::io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(root.join(RECORDS_DIR)) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(id) = name.to_str().and_then(|name| name.strip_suffix(".json")) {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}
