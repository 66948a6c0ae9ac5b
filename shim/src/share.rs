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

/// Failures of the host mounts.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// A mount failed.
    #[error("mount {what} on {target}: {message}")]
    Mount {
        /// What was mounted.
        what: String,
        /// Where.
        target: String,
        /// Why.
        message: String,
    },
    /// A directory or file could not be made.
    #[error("create {path}: {source}")]
    Create {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A bind mount's source is not on the host.
    #[error("mount source {0} does not exist on the host")]
    MissingSource(String),
    /// Unmounting failed.
    #[error("unmount below {path}: {source}")]
    Unmount {
        /// The directory.
        path: String,
        /// Why.
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
                        message: err.to_string(),
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
        unmount_below(&self.host).map_err(|source| ShareError::Unmount {
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
    let failed = |message: String| ShareError::Mount {
        what: source.display().to_string(),
        target: target.display().to_string(),
        message,
    };
    let c_source =
        CString::new(source.as_os_str().as_bytes()).map_err(|_| failed("NUL in path".into()))?;
    let c_target =
        CString::new(target.as_os_str().as_bytes()).map_err(|_| failed("NUL in path".into()))?;
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
        Err(failed(std::io::Error::last_os_error().to_string()))
    }
}

/// Detaches every mount at or below `dir`, deepest first.
///
/// # Errors
/// `/proc/self/mountinfo` cannot be read, or an unmount fails.
pub fn unmount_below(dir: &Path) -> std::io::Result<()> {
    let mut targets = mounts_below(dir)?;
    targets.sort_by_key(|target| std::cmp::Reverse(target.as_os_str().len()));
    for target in targets {
        let c_target = CString::new(target.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(c_target.as_ptr(), libc::MNT_DETACH) } != 0 {
            let err = std::io::Error::last_os_error();
            // Detaching a parent already took it along.
            if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT)
            {
                return Err(err);
            }
        }
    }
    Ok(())
}

/// The mount points at or below `dir`, from `/proc/self/mountinfo`.
///
/// # Errors
/// The file cannot be read.
pub fn mounts_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|target| target.starts_with(dir))
        .collect())
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(value) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
            {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
        assert_eq!(unescape_mountinfo("/x\\09"), "/x\\09");
    }
}
