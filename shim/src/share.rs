// SPDX-License-Identifier: Apache-2.0
//! What of the host a container reaches through the pod's virtio-fs share:
//! its root file system (the mounts containerd passes, mounted on the host
//! below `<share>/<container>/rootfs`) and the sources of its bind mounts
//! (bound below `<share>/<container>/mounts/`). The guest sees the share at
//! [`GUEST_SHARE`](crate::pod::GUEST_SHARE).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use containerd_shim::protos::types::mount::Mount as ContainerdMount;

use crate::pod::GUEST_SHARE;

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
        /// The mount point in the share.
        target: String,
        /// mount(2)'s error, containerd-shim's for its mounts, or the NUL
        /// that makes a path unusable.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A directory or file could not be made.
    #[error("create {path}")]
    Create {
        /// The directory or file in the share.
        path: String,
        /// The file system's error.
        source: std::io::Error,
    },
    /// A bind mount's source is not on the host.
    #[error("mount source {0} does not exist on the host")]
    MissingSource(String),
    /// Unmounting or removing the container's part of the share failed.
    #[error("unmount below {path}")]
    Unmount {
        /// The container's directory in the share.
        path: String,
        /// umount2(2)'s error, the mount table's, or the removal's.
        source: std::io::Error,
    },
}

/// One container's part of the share.
#[derive(Debug, Clone)]
pub struct ContainerShare {
    host: PathBuf,
    guest: String,
}

impl ContainerShare {
    /// The part of container `id` in the pod's shared directory `shared`.
    pub fn new(shared: &Path, id: &str) -> Self {
        ContainerShare {
            host: shared.join(id),
            guest: format!("{GUEST_SHARE}/{id}"),
        }
    }

    /// The root file system as the guest sees it.
    pub fn guest_rootfs(&self) -> String {
        format!("{}/rootfs", self.guest)
    }

    /// Mounts containerd's `mounts` (in order, each on the last) at the
    /// container's rootfs in the share. With no mounts, the directory
    /// `prepared_root` is bound there instead.
    ///
    /// # Errors
    /// [`ShareError`]; what was mounted is unmounted again.
    pub async fn mount_rootfs(
        &self,
        mounts: &[ContainerdMount],
        prepared_root: &Path,
    ) -> Result<(), ShareError> {
        let target = self.host.join("rootfs");
        create_dir(&target)?;
        let result = if mounts.is_empty() {
            bind(prepared_root, &target)
        } else {
            let mut result = Ok(());
            for mount in mounts {
                if let Err(err) =
                    containerd_shim::asynchronous::util::mount_rootfs(mount, &target).await
                {
                    result = Err(ShareError::Mount {
                        what: format!("{} ({})", mount.source, mount.type_),
                        target: target.display().to_string(),
                        // Its message already names its cause, which a
                        // chain would print again.
                        source: err.to_string().into(),
                    });
                    break;
                }
            }
            result
        };
        if result.is_err() {
            let _ = self.remove();
        }
        result
    }

    /// Binds the host source of every bind mount in `spec` into the share
    /// and points the mount at it, so that the guest finds it. Sources
    /// already inside the guest (below the share) are left as they are.
    ///
    /// # Errors
    /// A source missing on the host, or a failed bind; what was bound stays
    /// for [`ContainerShare::remove`].
    pub fn share_bind_mounts(&self, spec: &mut oci_spec::runtime::Spec) -> Result<(), ShareError> {
        let Some(mounts) = spec.mounts().clone() else {
            return Ok(());
        };
        let mut shared = Vec::with_capacity(mounts.len());
        for (index, mut mount) in mounts.into_iter().enumerate() {
            let is_bind = mount.typ().as_deref() == Some("bind")
                || mount
                    .options()
                    .iter()
                    .flatten()
                    .any(|option| option == "bind" || option == "rbind");
            let source = mount.source().clone().unwrap_or_default();
            if is_bind && source.is_absolute() && !source.starts_with(GUEST_SHARE) {
                if !source.exists() {
                    return Err(ShareError::MissingSource(source.display().to_string()));
                }
                let target = self.host.join("mounts").join(index.to_string());
                if source.is_dir() {
                    create_dir(&target)?;
                } else {
                    create_dir(&self.host.join("mounts"))?;
                    std::fs::File::create(&target).map_err(|source| ShareError::Create {
                        path: target.display().to_string(),
                        source,
                    })?;
                }
                bind(&source, &target)?;
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

    /// Unmounts and removes the container's part of the share.
    ///
    /// # Errors
    /// [`ShareError::Unmount`].
    pub fn remove(&self) -> Result<(), ShareError> {
        vmpod_sys::mountinfo::unmount_below(&self.host).map_err(|source| ShareError::Unmount {
            path: self.host.display().to_string(),
            source,
        })?;
        match std::fs::remove_dir_all(&self.host) {
            Err(source) if source.kind() != std::io::ErrorKind::NotFound => {
                Err(ShareError::Unmount {
                    path: self.host.display().to_string(),
                    source,
                })
            }
            _ => Ok(()),
        }
    }
}

fn create_dir(path: &Path) -> Result<(), ShareError> {
    std::fs::create_dir_all(path).map_err(|source| ShareError::Create {
        path: path.display().to_string(),
        source,
    })
}

/// A recursive bind mount of `source` on `target`.
fn bind(source: &Path, target: &Path) -> Result<(), ShareError> {
    let failed = |cause: Box<dyn std::error::Error + Send + Sync>| ShareError::Mount {
        what: source.display().to_string(),
        target: target.display().to_string(),
        source: cause,
    };
    let c_source =
        CString::new(source.as_os_str().as_bytes()).map_err(|err| failed(Box::new(err)))?;
    let c_target =
        CString::new(target.as_os_str().as_bytes()).map_err(|err| failed(Box::new(err)))?;
    // SAFETY: both are NUL-terminated strings that outlive the call; the
    // other arguments may be null for a bind mount.
    let rc = unsafe {
        libc::mount(
            c_source.as_ptr(),
            c_target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(failed(Box::new(std::io::Error::last_os_error())))
    }
}
