// SPDX-License-Identifier: Apache-2.0
//! What of the host a container reaches through the pod's virtio-fs share:
//! its root file system (the mounts containerd passes) and the sources of
//! its bind mounts. The shim mounts them in the pod's host-private
//! `mounts/<container>/` ([`layout`]), by descriptor, on mount points made
//! below a trusted directory descriptor without following anything; the
//! guest sees them through the read-only `shared/` view at
//! [`GUEST_SHARE`](crate::pod::GUEST_SHARE). Every mount is recorded
//! outside the share before it is made ([`record`]), and teardown undoes
//! the record, never what it finds in the share.

pub mod layout;
mod record;
mod rootfs;

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount as ContainerdMount;
use vmpod_agent_api::POD_SHM_DIR;
use vmpod_sys::mount::move_mount_onto;
use vmpod_sys::openat::{
    create_file_beneath, mkdir_beneath, open_dir, open_trusted_dir, remove_beneath,
    BENEATH_SAME_MOUNT,
};

use crate::pod::GUEST_SHARE;
use layout::{detach_all, MOUNTS_DIR, RECORDS_DIR};
use record::{Made, Record};
pub(crate) use rootfs::is_bind;
pub use rootfs::MountPoint;

/// Failures of the host mounts; the cause is the error's source (print
/// the whole with [`vmpod_sys::error::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A mount failed.
    #[error("mount {what} on {target}")]
    Mount {
        /// What was mounted: a bind mount's source, or containerd's
        /// mount as `SOURCE (TYPE)`.
        what: String,
        /// The mount point.
        target: String,
        /// The system's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A directory or file could not be made.
    #[error("create {path}")]
    Create {
        /// The directory or file.
        path: String,
        /// The file system's error (ELOOP or ENOTDIR for a symlink in the
        /// way, EEXIST for anything at the place).
        source: std::io::Error,
    },
    /// A bind mount's source is not on the host.
    #[error("mount source {0} does not exist on the host")]
    MissingSource(String),
    /// Unmounting the container's or the pod's mounts failed.
    #[error("unmount {path}")]
    Unmount {
        /// The mount point.
        path: String,
        /// umount2(2)'s error, or the lookup's.
        source: std::io::Error,
    },
    /// A directory, file or record could not be removed.
    #[error("remove {path}")]
    Remove {
        /// What could not be removed.
        path: String,
        /// The file system's error.
        source: std::io::Error,
    },
    /// The record of the container's mounts could not be read or written.
    #[error("record {path}")]
    Record {
        /// The record's file.
        path: String,
        /// The file system's error.
        source: std::io::Error,
    },
}

/// One container's part of the share.
#[derive(Debug, Clone)]
pub struct ContainerShare {
    /// The pod's directory.
    pod: PathBuf,
    /// The container's id: one path component (checked by the task layer).
    id: String,
    /// Its part as the guest sees it.
    guest: String,
}

/// The mounts directory open, and the record being extended.
struct Session {
    mounts: OwnedFd,
    record: Record,
}

impl ContainerShare {
    /// The part of container `id` in the share of the pod directory `pod`.
    pub fn new(pod: &Path, id: &str) -> Self {
        ContainerShare {
            pod: pod.to_owned(),
            id: id.to_owned(),
            guest: format!("{GUEST_SHARE}/{id}"),
        }
    }

    /// The root file system as the guest sees it.
    pub fn guest_rootfs(&self) -> String {
        format!("{}/rootfs", self.guest)
    }

    /// Mounts containerd's `mounts` (in order, each on the last) at the
    /// container's rootfs in the share. With no mounts, the directory
    /// `prepared_root` is bound there instead. With `readonly` (the spec's
    /// `root.readonly`) the root is read-only on the host too, after the
    /// mount points it names are made in it.
    ///
    /// # Errors
    /// [`ShareError`]; what was mounted is unmounted again.
    pub fn mount_rootfs(
        &self,
        mounts: &[ContainerdMount],
        prepared_root: &Path,
        readonly: Option<&[MountPoint]>,
    ) -> Result<(), ShareError> {
        let result = self.try_mount_rootfs(mounts, prepared_root, readonly);
        if result.is_err() {
            if let Err(err) = self.remove() {
                tracing::warn!(
                    "rolling back the rootfs of {}: {}",
                    self.id,
                    vmpod_sys::error::chain(&err)
                );
            }
        }
        result
    }

    fn try_mount_rootfs(
        &self,
        mounts: &[ContainerdMount],
        prepared_root: &Path,
        readonly: Option<&[MountPoint]>,
    ) -> Result<(), ShareError> {
        let mut session = self.open()?;
        self.make(&mut session, &self.id, true)?;
        let point = format!("{}/rootfs", self.id);
        let target = self.make(&mut session, &point, true)?;
        let seal = |what: &str, root: &OwnedFd| match readonly {
            Some(points) => rootfs::seal_read_only(root.as_fd(), points)
                .map_err(|err| self.mount_failed(what, &point, err)),
            None => Ok(()),
        };
        if mounts.is_empty() {
            let what = prepared_root.display().to_string();
            let mount = rootfs::bind(prepared_root, &["rbind".to_owned()], false)
                .map_err(|err| self.mount_failed(&what, &point, err))?;
            seal(&what, &mount)?;
            return self.attach(&mut session, &what, &point, &mount, &target);
        }
        for mount in mounts {
            let what = format!("{} ({})", mount.source, mount.type_);
            let detached = rootfs::detached(mount, false)
                .map_err(|err| self.mount_failed(&what, &point, err))?;
            seal(&what, &detached)?;
            self.attach(&mut session, &what, &point, &detached, &target)?;
        }
        Ok(())
    }

    /// Binds the host source of every bind mount in `spec` into the share
    /// (read-only on the host if the mount says `ro`) and points the mount
    /// at it, so that the guest finds it. Sources already inside the guest
    /// (below the share, or the pod's `/dev/shm`) are left as they are.
    ///
    /// # Errors
    /// A source missing on the host, or a failed bind; what was bound stays
    /// for [`ContainerShare::remove`].
    pub fn share_bind_mounts(&self, spec: &mut oci_spec::runtime::Spec) -> Result<(), ShareError> {
        let Some(mounts) = spec.mounts().clone() else {
            return Ok(());
        };
        let mut session = None;
        let mut shared = Vec::with_capacity(mounts.len());
        for (index, mut mount) in mounts.into_iter().enumerate() {
            let options = mount.options().clone().unwrap_or_default();
            let is_bind = rootfs::is_bind(mount.typ().as_deref().unwrap_or_default(), &options);
            let source = mount.source().clone().unwrap_or_default();
            let in_guest = source.starts_with(GUEST_SHARE) || source == Path::new(POD_SHM_DIR);
            if is_bind && source.is_absolute() && !in_guest {
                let Ok(metadata) = std::fs::metadata(&source) else {
                    return Err(ShareError::MissingSource(source.display().to_string()));
                };
                let session = match &mut session {
                    Some(session) => session,
                    None => session.insert(self.open()?),
                };
                let parent = format!("{}/mounts", self.id);
                if !session.record.has_made(&parent) {
                    self.make(session, &parent, true)?;
                }
                let point = format!("{parent}/{index}");
                let target = self.make(session, &point, metadata.is_dir())?;
                let what = source.display().to_string();
                let bind = rootfs::bind(&source, &options, false)
                    .map_err(|err| self.mount_failed(&what, &point, err))?;
                self.attach(session, &what, &point, &bind, &target)?;
                mount.set_source(Some(PathBuf::from(format!(
                    "{}/mounts/{index}",
                    self.guest
                ))));
            }
            shared.push(mount);
        }
        spec.set_mounts(Some(shared));
        Ok(())
    }

    /// Unmounts and removes what the record says was made for the
    /// container, innermost first, then the record. Anything already gone
    /// is success, so a failed removal can be retried.
    ///
    /// # Errors
    /// [`ShareError::Unmount`], [`ShareError::Remove`] or
    /// [`ShareError::Record`]; the record stays for the retry.
    pub fn remove(&self) -> Result<(), ShareError> {
        let record_path = self.record_path();
        let record = Record::load(&record_path).map_err(|source| ShareError::Record {
            path: record_path.display().to_string(),
            source,
        })?;
        let Some(record) = record else {
            return Ok(());
        };
        let mounts_path = self.pod.join(MOUNTS_DIR);
        match open_trusted_dir(&mounts_path) {
            Ok(mounts) => {
                for point in record.mounted.iter().rev() {
                    let path = Path::new(point);
                    let (parent, name) = split(path);
                    let unmounted = match open_dir(mounts.as_fd(), parent, BENEATH_SAME_MOUNT) {
                        Ok(dir) => detach_all(dir.as_fd(), &mounts_path.join(parent), name),
                        // Its directory went in an earlier try.
                        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(()),
                        Err(err) => Err(err),
                    };
                    unmounted.map_err(|source| ShareError::Unmount {
                        path: mounts_path.join(point).display().to_string(),
                        source,
                    })?;
                }
                for made in record.made.iter().rev() {
                    remove_beneath(mounts.as_fd(), Path::new(&made.path), made.dir).map_err(
                        |source| ShareError::Remove {
                            path: mounts_path.join(&made.path).display().to_string(),
                            source,
                        },
                    )?;
                }
            }
            // The pod's share is gone, and with it everything recorded.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(ShareError::Unmount {
                    path: mounts_path.display().to_string(),
                    source,
                })
            }
        }
        record::delete(&record_path).map_err(|source| ShareError::Remove {
            path: record_path.display().to_string(),
            source,
        })
    }

    /// The container's record, outside the share.
    fn record_path(&self) -> PathBuf {
        self.pod.join(RECORDS_DIR).join(format!("{}.json", self.id))
    }

    /// The pod's `mounts/` open, and the container's record so far.
    fn open(&self) -> Result<Session, ShareError> {
        let mounts_path = self.pod.join(MOUNTS_DIR);
        let mounts = open_trusted_dir(&mounts_path).map_err(|source| ShareError::Create {
            path: mounts_path.display().to_string(),
            source,
        })?;
        let record_path = self.record_path();
        let record = Record::load(&record_path)
            .map_err(|source| ShareError::Record {
                path: record_path.display().to_string(),
                source,
            })?
            .unwrap_or_default();
        Ok(Session { mounts, record })
    }

    /// Records, then makes, the directory (or empty file) `path` below
    /// `mounts/`; its descriptor.
    fn make(&self, session: &mut Session, path: &str, dir: bool) -> Result<OwnedFd, ShareError> {
        session.record.made.push(Made {
            path: path.to_owned(),
            dir,
        });
        self.save(&session.record)?;
        let made = if dir {
            mkdir_beneath(session.mounts.as_fd(), Path::new(path), 0o755)
        } else {
            create_file_beneath(session.mounts.as_fd(), Path::new(path), 0o644)
        };
        made.or_else(|source| {
            // Nothing was made: what is there is not the shim's to remove.
            session.record.made.pop();
            self.save(&session.record)?;
            Err(ShareError::Create {
                path: self.pod.join(MOUNTS_DIR).join(path).display().to_string(),
                source,
            })
        })
    }

    /// Records, then attaches, the detached `mount` (of `what`) on `target`
    /// (the mount point `point` below `mounts/`).
    fn attach(
        &self,
        session: &mut Session,
        what: &str,
        point: &str,
        mount: &OwnedFd,
        target: &OwnedFd,
    ) -> Result<(), ShareError> {
        let first = !session.record.mounted.iter().any(|done| done == point);
        if first {
            session.record.mounted.push(point.to_owned());
            self.save(&session.record)?;
        }
        move_mount_onto(mount.as_fd(), target.as_fd()).or_else(|err| {
            if first {
                session.record.mounted.pop();
                self.save(&session.record)?;
            }
            Err(self.mount_failed(what, point, err))
        })
    }

    fn save(&self, record: &Record) -> Result<(), ShareError> {
        let path = self.record_path();
        record.save(&path).map_err(|source| ShareError::Record {
            path: path.display().to_string(),
            source,
        })
    }

    fn mount_failed(&self, what: &str, point: &str, err: std::io::Error) -> ShareError {
        ShareError::Mount {
            what: what.to_owned(),
            target: self.pod.join(MOUNTS_DIR).join(point).display().to_string(),
            source: Box::new(err),
        }
    }
}

#[cfg(test)]
mod tests;

/// A relative path's parent (`.` for none) and last component.
fn split(path: &Path) -> (&Path, &str) {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default();
    (parent, name)
}
