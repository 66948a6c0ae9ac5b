// SPDX-License-Identifier: Apache-2.0
//! The namespaces of a container's init: which clone3 creates, which the
//! child joins by path, the sandbox's shared PID namespace, and the
//! hostname its UTS namespace gets.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, LinuxNamespaceType, Spec};
use vmpod_agent_api::POD_NAMESPACE_DIR;

use super::{cstring, PlanError};

/// The pod's namespaces, which its holder process keeps (see
/// `Sandbox::create`).
#[derive(Debug, Clone, Default)]
pub struct PodNamespaces {
    /// The holder's `/proc/<pid>/ns`; none before CreateSandbox.
    pub dir: Option<PathBuf>,
    /// Whether a container asking for a new PID namespace gets the pod's.
    pub shared_pid: bool,
    /// The pod's `/dev/shm` tmpfs (POSIX shared memory, which goes with
    /// its IPC namespace): what a bind from `POD_SHM_DIR` mounts.
    pub shm: Option<PathBuf>,
}

impl PodNamespaces {
    /// The pod's namespace of the kind whose `/proc/<pid>/ns` entry is
    /// `kind`.
    fn path(&self, kind: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.join(kind))
    }
}

/// What `linux.namespaces` asks for.
#[derive(Debug)]
pub(super) struct Namespaces {
    /// CLONE_NEW* flags for clone3.
    pub clone_flags: u64,
    /// Namespaces joined instead of created (setns in the child).
    pub join: Vec<(OwnedFd, libc::c_int)>,
    /// A PID namespace to join (setns on the cloning thread).
    pub join_pid: Option<OwnedFd>,
}

/// The namespaces of `linux`. The container always gets a mount namespace
/// of its own (the agent's mounts must not change under it) and a PID
/// namespace other than the agent's. A path below [`POD_NAMESPACE_DIR`]
/// joins the `pod`'s namespace of that kind; with the pod's `shared_pid`, a
/// new PID namespace is the pod's instead.
pub(super) fn plan_namespaces(linux: &Linux, pod: &PodNamespaces) -> Result<Namespaces, PlanError> {
    let mut clone_flags = libc::CLONE_NEWNS as u64;
    let mut join = Vec::new();
    let mut join_pid = None;
    for namespace in linux.namespaces().iter().flatten() {
        let flag = namespace_flag(namespace.typ())?;
        match namespace.path() {
            None => clone_flags |= flag as u64,
            Some(path) => {
                let fd = match path.strip_prefix(POD_NAMESPACE_DIR) {
                    Ok(kind) => open_namespace(&pod_namespace(path, kind, flag, pod)?)?,
                    Err(_) => open_namespace(path)?,
                };
                if flag == libc::CLONE_NEWPID {
                    join_pid = Some(fd);
                } else if flag != libc::CLONE_NEWNS {
                    join.push((fd, flag));
                }
            }
        }
    }
    // The guest's first PID namespace is the agent's: a spec without a PID
    // namespace (a pod's hostPID) gets the pod's, or one of its own, so that
    // no container sees the agent as its PID 1.
    let new_pid = join_pid.is_none();
    if new_pid {
        clone_flags |= libc::CLONE_NEWPID as u64;
    }
    if let (Some(path), true) = (pod.path("pid").filter(|_| pod.shared_pid), new_pid) {
        clone_flags &= !(libc::CLONE_NEWPID as u64);
        join_pid = Some(open_namespace(&path)?);
    }
    Ok(Namespaces {
        clone_flags,
        join,
        join_pid,
    })
}

/// The spec's hostname, which needs a UTS namespace of the container's own.
pub(super) fn plan_hostname(spec: &Spec, clone_flags: u64) -> Result<Option<CString>, PlanError> {
    let hostname = spec
        .hostname()
        .as_deref()
        .filter(|name| !name.is_empty())
        .map(|name| cstring("hostname", name))
        .transpose()?;
    if hostname.is_some() && clone_flags & libc::CLONE_NEWUTS as u64 == 0 {
        return Err(PlanError::HostnameWithoutUts);
    }
    Ok(hostname)
}

/// The pod's namespace that `path` (`<POD_NAMESPACE_DIR>/<kind>`) names for
/// a namespace of type `flag`: only its UTS, IPC and PID namespaces are
/// the pod's.
fn pod_namespace(
    path: &Path,
    kind: &Path,
    flag: libc::c_int,
    pod: &PodNamespaces,
) -> Result<PathBuf, PlanError> {
    let expected = match flag {
        libc::CLONE_NEWUTS => "uts",
        libc::CLONE_NEWIPC => "ipc",
        libc::CLONE_NEWPID => "pid",
        _ => "",
    };
    let not_the_pods = || PlanError::PodNamespace(path.display().to_string());
    if expected.is_empty() || kind != Path::new(expected) {
        return Err(not_the_pods());
    }
    pod.path(expected).ok_or_else(not_the_pods)
}

/// A namespace to join, by its path (`/proc/PID/ns/KIND`, a bind mount).
fn open_namespace(path: &Path) -> Result<OwnedFd, PlanError> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| PlanError::NamespacePath {
            path: path.display().to_string(),
            source,
        })
}

/// The CLONE_NEW* flag of a namespace kind the agent creates or joins.
fn namespace_flag(kind: LinuxNamespaceType) -> Result<libc::c_int, PlanError> {
    Ok(match kind {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::User => return Err(PlanError::Namespace("user")),
        LinuxNamespaceType::Time => return Err(PlanError::Namespace("time")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(json: serde_json::Value) -> Linux {
        serde_json::from_value(json).unwrap()
    }

    /// A pod whose namespaces are this process's, its PID one shared.
    fn shared() -> PodNamespaces {
        PodNamespaces {
            dir: Some("/proc/self/ns".into()),
            shared_pid: true,
            shm: None,
        }
    }

    #[test]
    fn test_the_pods_namespaces_are_joined_by_their_names() {
        let linux = linux(serde_json::json!({
            "namespaces": [
                {"type": "uts", "path": "/run/vmpod/pod-ns/uts"},
                {"type": "ipc", "path": "/run/vmpod/pod-ns/ipc"},
                {"type": "pid", "path": "/run/vmpod/pod-ns/pid"}
            ]
        }));
        let pod = PodNamespaces {
            shared_pid: false,
            ..shared()
        };
        let planned = plan_namespaces(&linux, &pod).unwrap();
        assert_eq!(planned.clone_flags, libc::CLONE_NEWNS as u64);
        let joined: Vec<libc::c_int> = planned.join.iter().map(|(_, flag)| *flag).collect();
        assert_eq!(joined, [libc::CLONE_NEWUTS, libc::CLONE_NEWIPC]);
        assert!(planned.join_pid.is_some());
    }

    #[test]
    fn test_a_pod_namespace_name_of_another_kind_or_without_a_pod_is_refused() {
        for (kind, path) in [
            ("uts", "/run/vmpod/pod-ns/ipc"),
            ("network", "/run/vmpod/pod-ns/net"),
            ("ipc", "/run/vmpod/pod-ns/ipc/x"),
        ] {
            let linux = linux(serde_json::json!({"namespaces": [{"type": kind, "path": path}]}));
            let err = plan_namespaces(&linux, &shared()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("namespace path {path} names no namespace of the pod")
            );
        }
        let linux = linux(serde_json::json!({
            "namespaces": [{"type": "uts", "path": "/run/vmpod/pod-ns/uts"}]
        }));
        let err = plan_namespaces(&linux, &PodNamespaces::default()).unwrap_err();
        assert!(err.to_string().ends_with("names no namespace of the pod"));
    }

    #[test]
    fn test_new_namespaces_become_clone_flags() {
        let linux = linux(serde_json::json!({
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}]
        }));
        let planned = plan_namespaces(&linux, &PodNamespaces::default()).unwrap();
        let expected =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWIPC;
        assert_eq!(planned.clone_flags, expected as u64);
        assert!(planned.join.is_empty());
        assert!(planned.join_pid.is_none());
    }

    #[test]
    fn test_namespaces_with_a_path_are_joined() {
        let linux = linux(serde_json::json!({
            "namespaces": [
                {"type": "network", "path": "/proc/self/ns/net"},
                {"type": "pid", "path": "/proc/self/ns/pid"},
                {"type": "mount", "path": "/proc/self/ns/mnt"}
            ]
        }));
        let planned = plan_namespaces(&linux, &PodNamespaces::default()).unwrap();
        assert_eq!(planned.clone_flags, libc::CLONE_NEWNS as u64);
        assert_eq!(planned.join.len(), 1, "the mount namespace is always new");
        assert_eq!(planned.join[0].1, libc::CLONE_NEWNET);
        assert!(planned.join_pid.is_some());
    }

    #[test]
    fn test_new_pid_namespace_is_the_shared_one_when_the_pod_shares() {
        let linux = linux(serde_json::json!({"namespaces": [{"type": "pid"}]}));
        let planned = plan_namespaces(&linux, &shared()).unwrap();
        assert_eq!(planned.clone_flags, libc::CLONE_NEWNS as u64);
        assert!(planned.join_pid.is_some());
    }

    #[test]
    fn test_a_spec_without_a_pid_namespace_never_gets_the_agents() {
        let linux = linux(serde_json::json!({"namespaces": [{"type": "network"}]}));
        let planned = plan_namespaces(&linux, &PodNamespaces::default()).unwrap();
        let expected = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWNET;
        assert_eq!(planned.clone_flags, expected as u64);
        let planned = plan_namespaces(&linux, &shared()).unwrap();
        let expected = libc::CLONE_NEWNS | libc::CLONE_NEWNET;
        assert_eq!(planned.clone_flags, expected as u64);
        assert!(planned.join_pid.is_some(), "not the pod's PID namespace");
    }

    #[test]
    fn test_user_and_time_namespaces_and_missing_paths_are_refused() {
        for kind in ["user", "time"] {
            let linux = linux(serde_json::json!({"namespaces": [{"type": kind}]}));
            let err = plan_namespaces(&linux, &PodNamespaces::default()).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{kind} namespaces are not supported")
            );
        }
        let linux = linux(serde_json::json!({
            "namespaces": [{"type": "network", "path": "/nonexistent/ns"}]
        }));
        let err = plan_namespaces(&linux, &PodNamespaces::default()).unwrap_err();
        assert_eq!(err.to_string(), "namespace path /nonexistent/ns");
        assert_eq!(
            vmpod_sys::error::chain(&err),
            "namespace path /nonexistent/ns: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn test_hostname_needs_a_uts_namespace() {
        let mut spec = Spec::default();
        spec.set_hostname(Some("web".into()));
        assert!(matches!(
            plan_hostname(&spec, libc::CLONE_NEWNS as u64),
            Err(PlanError::HostnameWithoutUts)
        ));
        let uts = (libc::CLONE_NEWNS | libc::CLONE_NEWUTS) as u64;
        assert_eq!(plan_hostname(&spec, uts).unwrap().as_deref(), Some(c"web"));
        spec.set_hostname(Some(String::new()));
        assert_eq!(plan_hostname(&spec, 0).unwrap(), None);
    }
}
