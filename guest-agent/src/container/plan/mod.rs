// SPDX-License-Identifier: Apache-2.0
//! Turns an OCI spec into a plan: every path, flag, string and number the
//! new process needs, checked and converted before it is cloned. The child
//! (`child/`) then only makes system calls on this data: after a clone in
//! a multi-threaded agent it must not allocate.
//!
//! One module per concern: `process` (argv, env, user, capabilities),
//! `namespaces` (clone flags, namespaces to join, hostname), `mounts`,
//! `devices` (/dev) and `limits` (rlimits, sysctls).

mod devices;
mod limits;
mod mounts;
mod namespaces;
mod process;

use std::ffi::{CString, NulError};
use std::os::fd::OwnedFd;
use std::path::Path;

use oci_spec::runtime::Spec;

pub use self::devices::{DeviceNode, DeviceStep, DEFAULT_DEVICES, DEFAULT_DEV_LINKS};
pub use self::limits::plan_pod_sysctls;
pub use self::mounts::MountStep;
pub use self::namespaces::PodNamespaces;
pub use self::process::{plan_process, CStrArray, CapSets, ProcessPlan};
use super::paths::{resolve_in_root, PathError};

/// A spec the agent cannot run, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec has no `process`.
    #[error("the spec has no process")]
    NoProcess,
    /// `process.args` is missing or empty.
    #[error("process.args is empty")]
    NoArgs,
    /// A string holds a NUL byte.
    #[error("{field} contains a NUL byte")]
    Nul {
        /// The field.
        field: &'static str,
    },
    /// A path that must be absolute is not.
    #[error("{field} {path:?} is not an absolute path")]
    NotAbsolute {
        /// The field.
        field: &'static str,
        /// Its value.
        path: String,
    },
    /// An environment entry without `=`.
    #[error("process.env entry {0:?} is not NAME=VALUE")]
    Env(String),
    /// A namespace kind the agent does not create.
    #[error("{0} namespaces are not supported")]
    Namespace(&'static str),
    /// A namespace path that cannot be opened.
    #[error("namespace path {path}")]
    NamespacePath {
        /// The path.
        path: String,
        /// Why opening it failed (missing, not a namespace file).
        #[source]
        source: std::io::Error,
    },
    /// A name below `POD_NAMESPACE_DIR` that is not one of the pod's
    /// namespaces of the entry's type.
    #[error("namespace path {0} names no namespace of the pod")]
    PodNamespace(String),
    /// A hostname without a UTS namespace of its own.
    #[error("hostname is set but the spec has no new uts namespace")]
    HostnameWithoutUts,
    /// An unknown capability name.
    #[error("unknown capability {0}")]
    Capability(String),
    /// An rlimit type the agent does not know (it would otherwise set the
    /// wrong limit).
    #[error("process.rlimits: unknown type {0}")]
    Rlimit(String),
    /// The seccomp profile cannot be compiled.
    #[error(transparent)]
    Seccomp(#[from] super::seccomp::SeccompError),
    /// A device entry the agent cannot make.
    #[error("linux.devices: {0}")]
    Device(String),
    /// A device cgroup rule the agent cannot apply.
    #[error(transparent)]
    DeviceRule(#[from] super::device_cgroup::RuleError),
    /// A sysctl that is not namespaced (it would change the whole guest).
    #[error("linux.sysctl: {0:?} is not a namespaced sysctl")]
    Sysctl(String),
    /// A mount with neither a type nor `bind`.
    #[error("mount on {0} has no type")]
    MountType(String),
    /// A bind of the pod's `/dev/shm` in a pod that has none.
    #[error(
        "mounts.source {}: the pod has no /dev/shm (CreateSandbox's shm_size is 0)",
        vmpod_agent_api::POD_SHM_DIR
    )]
    NoPodShm,
    /// A mount destination or cwd that does not resolve inside the root.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Creating a mount point in the root file system failed.
    #[error("cannot create mount point {path}")]
    MountPoint {
        /// The host path.
        path: String,
        /// The file system's refusal (read-only image, a file in the way).
        #[source]
        source: std::io::Error,
    },
}

/// Everything a container's init process does between clone and exec.
#[derive(Debug)]
pub struct InitPlan {
    /// CLONE_NEW* flags for clone3.
    pub clone_flags: u64,
    /// Namespaces joined instead of created (setns in the child).
    pub join: Vec<(OwnedFd, libc::c_int)>,
    /// A PID namespace to join (setns on the cloning thread).
    pub join_pid: Option<OwnedFd>,
    /// The UTS namespace's hostname.
    pub hostname: Option<CString>,
    /// The root file system, already mounted (host path).
    pub rootfs: CString,
    /// Propagation of `/` in the new mount namespace.
    pub root_propagation: libc::c_ulong,
    /// The spec's mounts, in order.
    pub mounts: Vec<MountStep>,
    /// Default devices.
    pub devices: Vec<DeviceStep>,
    /// `linux.devices`.
    pub device_nodes: Vec<DeviceNode>,
    /// The device cgroup program (from `linux.resources.devices`,
    /// `linux.devices` and the defaults), attached to the container's
    /// cgroup before the process enters it.
    pub device_program: Vec<super::device_cgroup::Insn>,
    /// `linux.sysctl`: (path under /proc/sys, value), written after
    /// pivot_root.
    pub sysctls: Vec<(CString, CString)>,
    /// /dev symlinks: (link host path, target).
    pub dev_links: Vec<(CString, CString)>,
    /// `linux.maskedPaths`, container-absolute.
    pub masked: Vec<CString>,
    /// `linux.readonlyPaths`, container-absolute.
    pub readonly: Vec<CString>,
    /// `root.readonly`.
    pub readonly_root: bool,
    /// The process.
    pub process: ProcessPlan,
}

fn cstring(field: &'static str, value: impl Into<Vec<u8>>) -> Result<CString, PlanError> {
    CString::new(value).map_err(|_: NulError| PlanError::Nul { field })
}

fn path_cstring(field: &'static str, path: &Path) -> Result<CString, PlanError> {
    cstring(field, path.as_os_str().as_encoded_bytes())
}

/// The plan for a container's init process, on the root file system
/// mounted at `rootfs` (a host path). Mount points that lie in the image
/// are created here, after resolving them inside it. Namespaces named
/// below `POD_NAMESPACE_DIR` are the `pod`'s; with its shared PID
/// namespace, a new PID namespace asked for is the pod's instead. A bind
/// from `POD_SHM_DIR` mounts the pod's `/dev/shm`.
///
/// # Errors
///
/// [`PlanError`] naming the field at fault.
pub fn plan_init(spec: &Spec, rootfs: &Path, pod: &PodNamespaces) -> Result<InitPlan, PlanError> {
    let process = spec.process().as_ref().ok_or(PlanError::NoProcess)?;
    let mut process = plan_process(process)?;
    let linux = spec.linux().clone().unwrap_or_default();
    if let Some(profile) = linux.seccomp() {
        process.seccomp = super::seccomp::compile(profile)?;
    }
    process.seccomp.push(super::seccomp::vsock_filter()?);
    let namespaces = namespaces::plan_namespaces(&linux, pod)?;
    let hostname = namespaces::plan_hostname(spec, namespaces.clone_flags)?;
    let (mounts, mounted) = mounts::plan_mounts(spec, rootfs, pod.shm.as_deref())?;
    let device_nodes = devices::plan_device_nodes(&linux, rootfs, &mounted)?;
    let dev = resolve_in_root(rootfs, Path::new("/dev"), &mounted)?;
    let devices = devices::default_devices(&dev, &device_nodes)?;
    let device_program = super::device_cgroup::spec_program(&linux)?;
    let sysctls = limits::plan_sysctls(&linux, namespaces.clone_flags)?;
    let dev_links = devices::dev_links(&dev)?;
    Ok(InitPlan {
        clone_flags: namespaces.clone_flags,
        join: namespaces.join,
        join_pid: namespaces.join_pid,
        hostname,
        rootfs: path_cstring("root", rootfs)?,
        root_propagation: mounts::root_propagation(linux.rootfs_propagation().as_deref()),
        mounts,
        devices,
        device_nodes,
        device_program,
        sysctls,
        dev_links,
        masked: container_paths("linux.maskedPaths", linux.masked_paths())?,
        readonly: container_paths("linux.readonlyPaths", linux.readonly_paths())?,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        process,
    })
}

/// Container-absolute paths of `field` (masked or read-only paths).
fn container_paths(
    field: &'static str,
    paths: &Option<Vec<String>>,
) -> Result<Vec<CString>, PlanError> {
    paths
        .iter()
        .flatten()
        .map(|p| {
            if !p.starts_with('/') {
                return Err(PlanError::NotAbsolute {
                    field,
                    path: p.clone(),
                });
            }
            cstring(field, p.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one, for a test's
    /// image.
    pub(super) fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vmpod-plan-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn test_container_paths_must_be_absolute() {
        let paths = Some(vec!["/proc/kcore".to_owned()]);
        assert_eq!(
            container_paths("linux.maskedPaths", &paths).unwrap(),
            vec![c"/proc/kcore".to_owned()]
        );
        let relative = Some(vec!["proc/kcore".to_owned()]);
        let err = container_paths("linux.maskedPaths", &relative).unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.maskedPaths \"proc/kcore\" is not an absolute path"
        );
    }

    #[test]
    fn test_strings_with_nul_are_refused_by_field() {
        let err = cstring("hostname", "a\0b").unwrap_err();
        assert_eq!(err.to_string(), "hostname contains a NUL byte");
    }

    #[test]
    fn test_init_plan_of_a_minimal_spec() {
        let root = scratch("minimal");
        let spec = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "web",
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
            "linux": {
                "namespaces": [{"type": "mount"}, {"type": "uts"}, {"type": "pid"}],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"]
            }
        }));
        let plan = plan_init(&spec, &root, &PodNamespaces::default()).unwrap();
        let new = (libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWPID) as u64;
        assert_eq!(plan.clone_flags, new);
        assert_eq!(plan.hostname.as_deref(), Some(c"web"));
        assert!(plan.readonly_root);
        assert_eq!(plan.mounts.len(), 1);
        assert!(root.join("proc").is_dir(), "the mount point is made");
        assert_eq!(plan.devices.len(), DEFAULT_DEVICES.len());
        assert_eq!(plan.dev_links.len(), DEFAULT_DEV_LINKS.len());
        assert_eq!(plan.masked, vec![c"/proc/kcore".to_owned()]);
        assert_eq!(plan.readonly, vec![c"/proc/sys".to_owned()]);
        assert_eq!(plan.root_propagation, libc::MS_SLAVE | libc::MS_REC);
        // No profile: the agent's vsock filter alone.
        assert_eq!(
            plan.process.seccomp,
            vec![crate::container::seccomp::vsock_filter().unwrap()]
        );
        assert!(!plan.device_program.is_empty());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_init_plan_needs_a_process() {
        let root = scratch("no-process");
        let spec = spec(serde_json::json!({"ociVersion": "1.0.2"}));
        let mut spec = spec;
        spec.set_process(None);
        assert!(matches!(
            plan_init(&spec, &root, &PodNamespaces::default()),
            Err(PlanError::NoProcess)
        ));
        std::fs::remove_dir_all(root).unwrap();
    }
}
