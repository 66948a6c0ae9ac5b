// SPDX-License-Identifier: Apache-2.0
//! The pod's `/dev/shm`. containerd's CRI plugin mounts a tmpfs on the
//! host for each pod (`…/sandboxes/<id>/shm`, 64 MiB; the host's own
//! `/dev/shm` for a pod in the host's IPC namespace) and binds it at
//! `/dev/shm` in the sandbox and in each of the pod's containers. In a pod
//! VM the agent makes that tmpfs in the guest instead, of the host one's
//! size (CreateSandbox's `shm_size`), and those binds name it
//! ([`POD_SHM_DIR`]): the host's tmpfs is not shared into the guest, and
//! the pod's containers share memory at guest speed. A container whose
//! spec has a tmpfs of its own at `/dev/shm` (as `ctr run` gives), or a
//! volume there, keeps it.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use vmpod_agent_api::POD_SHM_DIR;

use super::{SpecError, CONTAINER_TYPE_ANNOTATION};
use crate::share::is_bind;

/// Where the pod's shared memory is mounted in its containers.
const DEV_SHM: &str = "/dev/shm";

/// The pod's `/dev/shm` as its sandbox's spec gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodShm {
    /// The host tmpfs the spec binds: the pod's containers bind it too.
    pub source: PathBuf,
    /// Its size in bytes; 0: unbounded.
    pub size: u64,
}

impl PodShm {
    /// The size of the guest's tmpfs in a VM of `memory_mib`: the host
    /// one's, but never more than the VM's memory (no tmpfs can hold
    /// more), which an unbounded one gets.
    pub fn guest_size(&self, memory_mib: u32) -> u64 {
        let memory = u64::from(memory_mib) << 20;
        match self.size {
            0 => memory,
            size => size.min(memory),
        }
    }
}

/// The pod's `/dev/shm` in the spec of a CRI sandbox: its bind at
/// `/dev/shm` of a host tmpfs. None for any other container, for a sandbox
/// without such a bind, or when the source is no tmpfs (a host directory,
/// shared as any bind is).
///
/// # Errors
/// [`SpecError::Shm`]: the source cannot be examined (it is missing).
pub fn pod_shm(spec: &Spec) -> Result<Option<PodShm>, SpecError> {
    let annotations = spec.annotations().as_ref();
    let sandbox = annotations
        .and_then(|annotations| annotations.get(CONTAINER_TYPE_ANNOTATION))
        .is_some_and(|kind| kind == "sandbox");
    if !sandbox {
        return Ok(None);
    }
    let Some(source) = spec
        .mounts()
        .iter()
        .flatten()
        .filter(|mount| mount.destination() == Path::new(DEV_SHM) && binds(mount))
        .find_map(|mount| mount.source().clone())
        .filter(|source| source.is_absolute())
    else {
        return Ok(None);
    };
    let shm_error = |source_error| SpecError::Shm {
        path: source.display().to_string(),
        source: source_error,
    };
    let stat = statfs(&source).map_err(shm_error)?;
    if stat.f_type != libc::TMPFS_MAGIC {
        tracing::info!(
            source = %source.display(),
            "the sandbox's /dev/shm is no tmpfs: shared with the guest as any bind"
        );
        return Ok(None);
    }
    let block_size = u64::try_from(stat.f_bsize).unwrap_or(0);
    Ok(Some(PodShm {
        source,
        size: stat.f_blocks.saturating_mul(block_size),
    }))
}

/// Points the spec's binds of `source` (the pod's host tmpfs) at
/// `/dev/shm` to the guest's pod `/dev/shm`, keeping their options.
pub(super) fn bind_pod_shm(spec: &mut Spec, source: &Path) {
    let Some(mut mounts) = spec.mounts().clone() else {
        return;
    };
    for mount in &mut mounts {
        if mount.destination() == Path::new(DEV_SHM)
            && binds(mount)
            && mount.source().as_deref() == Some(source)
        {
            mount.set_source(Some(PathBuf::from(POD_SHM_DIR)));
        }
    }
    spec.set_mounts(Some(mounts));
}

fn binds(mount: &Mount) -> bool {
    is_bind(
        mount.typ().as_deref().unwrap_or_default(),
        &mount.options().clone().unwrap_or_default(),
    )
}

/// statfs(2) of `path`.
fn statfs(path: &Path) -> std::io::Result<libc::statfs> {
    let path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a statfs the call may fill.
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, mounts: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {CONTAINER_TYPE_ANNOTATION: kind},
            "mounts": mounts,
        }))
        .unwrap()
    }

    /// containerd's bind of the pod's tmpfs, from `source`.
    fn shm_bind(source: &str) -> serde_json::Value {
        serde_json::json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev/shm", "type": "bind", "source": source,
             "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]}
        ])
    }

    /// A tmpfs of this host, and its size.
    fn host_tmpfs() -> Option<(PathBuf, u64)> {
        let path = PathBuf::from("/dev/shm");
        let stat = statfs(&path).ok()?;
        (stat.f_type == libc::TMPFS_MAGIC).then(|| {
            let size = stat.f_blocks * u64::try_from(stat.f_bsize).unwrap();
            (path, size)
        })
    }

    #[test]
    fn test_a_sandboxs_shm_bind_of_a_tmpfs_is_the_pods_shm() {
        let Some((tmpfs, size)) = host_tmpfs() else {
            eprintln!("SKIP: /dev/shm is no tmpfs on this host");
            return;
        };
        let source = tmpfs.to_str().unwrap();
        assert_eq!(
            pod_shm(&spec("sandbox", shm_bind(source))).unwrap(),
            Some(PodShm {
                source: tmpfs.clone(),
                size
            })
        );
        // A container's bind of it is its pod's, not a pod's of its own.
        assert_eq!(pod_shm(&spec("container", shm_bind(source))).unwrap(), None);
        // A sandbox with a tmpfs of its own, or a host directory bound.
        let own = serde_json::json!([{"destination": "/dev/shm", "type": "tmpfs",
            "source": "shm", "options": ["size=65536k"]}]);
        assert_eq!(pod_shm(&spec("sandbox", own)).unwrap(), None);
        let dir = env!("CARGO_MANIFEST_DIR");
        assert_eq!(pod_shm(&spec("sandbox", shm_bind(dir))).unwrap(), None);
    }

    #[test]
    fn test_a_missing_shm_source_fails_in_one_line() {
        let err = pod_shm(&spec("sandbox", shm_bind("/nonexistent/vmpod/shm"))).unwrap_err();
        assert_eq!(
            vmpod_sys::error::chain(&err),
            "the sandbox's /dev/shm source /nonexistent/vmpod/shm: \
             No such file or directory (os error 2)"
        );
    }

    #[test]
    fn test_the_guest_shm_is_bounded_by_the_vm_memory() {
        let shm = |size| PodShm {
            source: PathBuf::from("/x"),
            size,
        };
        assert_eq!(shm(64 << 20).guest_size(256), 64 << 20);
        assert_eq!(shm(8 << 30).guest_size(256), 256 << 20);
        assert_eq!(shm(0).guest_size(512), 512 << 20);
    }

    #[test]
    fn test_binds_of_the_pods_tmpfs_at_dev_shm_name_the_guests() {
        let source = "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/p1/shm";
        let mut mounts = shm_bind(source);
        let mounts_list = mounts.as_array_mut().unwrap();
        mounts_list.push(serde_json::json!({"destination": "/data", "type": "bind",
            "source": source, "options": ["rbind"]}));
        mounts_list.push(
            serde_json::json!({"destination": "/dev/shm", "type": "bind",
            "source": "/var/lib/kubelet/pods/u/volumes/dshm", "options": ["rbind"]}),
        );
        let mut spec = spec("container", mounts);
        bind_pod_shm(&mut spec, Path::new(source));
        let sources: Vec<String> = spec
            .mounts()
            .iter()
            .flatten()
            .map(|mount| mount.source().clone().unwrap().display().to_string())
            .collect();
        assert_eq!(
            sources,
            [
                "proc",
                POD_SHM_DIR,
                source,
                "/var/lib/kubelet/pods/u/volumes/dshm"
            ]
        );
        let options = spec.mounts().as_ref().unwrap()[1].options().clone();
        assert_eq!(
            options.unwrap(),
            ["rbind", "ro", "nosuid", "nodev", "noexec"],
            "its options are kept"
        );
    }
}
