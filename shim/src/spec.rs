// SPDX-License-Identifier: Apache-2.0
//! The bundle's OCI spec, written by containerd for a host runtime, made fit
//! for the guest: host paths mean nothing inside the VM. And which pod a
//! container belongs to, from its CRI annotations.

mod shm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespace, LinuxNamespaceType, Spec};
use vmpod_agent_api::POD_NAMESPACE_DIR;
use vmpod_jailer::cgroup::{CgroupError, CgroupPath};

use crate::share::{is_bind, ContainerShare, MountPoint, ShareError};
pub use shm::PodShm;

/// CRI's annotation saying whether a container is a pod's sandbox or one of its containers.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation naming the pod (sandbox) of a container.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// Failures reading or adapting a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// `config.json` cannot be read or parsed.
    #[error("bundle {bundle}: config.json: {message}")]
    Load {
        /// The bundle directory.
        bundle: String,
        /// What the OCI spec parser said, on one line.
        message: String,
    },
    /// A bind mount's source cannot be shared with the guest.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// `linux.cgroupsPath` cannot be a pod's cgroup.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The sandbox's `/dev/shm` bind names a source that cannot be examined.
    #[error("the sandbox's /dev/shm source {path}")]
    Shm {
        /// The bind's source.
        path: String,
        /// statfs(2)'s error.
        source: std::io::Error,
    },
    /// A namespace `path` that is not the pod's namespace of that kind.
    #[error("linux.namespaces: {kind} path {path} is not this pod's (/proc/{vmm_pid}/ns/{kind})")]
    Namespace {
        /// The namespace's kind (`uts`, `ipc`, `pid`).
        kind: &'static str,
        /// The path the spec gives.
        path: String,
        /// The pod's task pid, whose namespaces containers may name.
        vmm_pid: u32,
    },
    /// The adapted spec cannot be written as JSON.
    #[error("spec: {0}")]
    Encode(String),
}

/// Reads `<bundle>/config.json`.
///
/// # Errors
/// [`SpecError::Load`].
pub fn load(bundle: &Path) -> Result<Spec, SpecError> {
    Spec::load(bundle.join("config.json")).map_err(|err| SpecError::Load {
        bundle: bundle.display().to_string(),
        message: err.to_string().replace('\n', " "),
    })
}

/// The pod a container created with `spec` belongs to: the sandbox named by
/// its CRI annotations when it is a pod's (non-sandbox) container, else its own.
pub fn pod_id(spec: &Spec, container_id: &str) -> String {
    let annotations = spec.annotations().clone().unwrap_or_default();
    match (
        annotations
            .get(CONTAINER_TYPE_ANNOTATION)
            .map(String::as_str),
        annotations.get(SANDBOX_ID_ANNOTATION),
    ) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.clone(),
        _ => container_id.to_owned(),
    }
}

/// Where the spec's mounts go in the container's root: a bind of a host
/// file needs a file there, everything else a directory.
pub fn mount_points(spec: &Spec) -> Vec<MountPoint> {
    spec.mounts()
        .iter()
        .flatten()
        .map(|mount| {
            let options = mount.options().clone().unwrap_or_default();
            let is_file = is_bind(mount.typ().as_deref().unwrap_or_default(), &options)
                && mount
                    .source()
                    .as_ref()
                    .and_then(|source| std::fs::metadata(source).ok())
                    .is_some_and(|metadata| !metadata.is_dir());
            MountPoint {
                destination: mount.destination().clone(),
                is_dir: !is_file,
            }
        })
        .collect()
}

/// What the spec of a pod's first container (CRI's sandbox) says of the
/// pod as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSpec {
    /// The pod's network namespace ([`network_namespace`]).
    pub netns: Option<PathBuf>,
    /// The pod's cgroup ([`cgroup`]).
    pub cgroup: Option<CgroupPath>,
    /// The pod's hostname: its UTS namespace's in the guest.
    pub hostname: String,
    /// `linux.sysctl`: written in the pod's namespaces in the guest.
    pub sysctls: HashMap<String, String>,
    /// The pod's `/dev/shm`, made in the guest ([`shm`]).
    pub shm: Option<PodShm>,
    /// Its container's device rules ([`device_rules`]), which a template
    /// made of the pod's VM loads ahead.
    pub device_rules: Vec<u8>,
}

/// The device rules of a container whose spec adds none to containerd's
/// base spec (deny every device; the agent appends runc's defaults): what
/// a template made ahead, for no pod in particular, loads.
pub const BASE_DEVICE_RULES: &[u8] =
    br#"{"resources":{"devices":[{"allow":false,"access":"rwm"}]}}"#;

/// The device rules of `spec` as the agent reads them to make a
/// container's device program: an OCI `linux` object (JSON) of only its
/// `resources.devices` and `devices`.
pub fn device_rules(spec: &Spec) -> Vec<u8> {
    let linux = spec.linux().as_ref();
    let rules = serde_json::json!({
        "resources": {
            "devices": linux.and_then(|l| l.resources().as_ref()).and_then(|r| r.devices().as_ref()),
        },
        "devices": linux.and_then(|l| l.devices().as_ref()),
    });
    rules.to_string().into_bytes()
}

/// The pod's settings in `spec`, should its container be the pod's first.
///
/// # Errors
/// [`SpecError::Cgroup`] naming the path and its fault, [`SpecError::Shm`].
pub fn pod_spec(spec: &Spec) -> Result<PodSpec, SpecError> {
    Ok(PodSpec {
        netns: network_namespace(spec),
        cgroup: cgroup(spec)?,
        hostname: spec.hostname().clone().unwrap_or_default(),
        sysctls: spec
            .linux()
            .as_ref()
            .and_then(|linux| linux.sysctl().clone())
            .unwrap_or_default(),
        shm: shm::pod_shm(spec)?,
        device_rules: device_rules(spec),
    })
}

/// How a container relates to its pod, for [`for_guest`].
#[derive(Debug, Clone, Copy)]
pub struct Membership<'a> {
    /// The pod's first container (CRI's sandbox), whose spec made the pod.
    pub sandbox: bool,
    /// The pod's task pid (`vmpod-vm`'s, what containerd was told): the
    /// `/proc/<pid>/ns/` paths CRI gives a sandbox's containers name it.
    pub vmm_pid: u32,
    /// The host tmpfs of the pod's `/dev/shm` ([`PodShm::source`]), if it
    /// has one: binds of it at `/dev/shm` bind the guest's instead.
    pub shm_source: Option<&'a Path>,
}

/// The pod's network namespace: the path of the spec's `network`
/// namespace (e.g. `/var/run/netns/NAME`, made by the CNI). A `network`
/// entry without a path (a fresh namespace) or none at all: the pod gets
/// no network but loopback.
pub fn network_namespace(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|namespace| namespace.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// The pod's cgroup, which the shim and `vmpod-vm` join (Kata's
/// `sandbox_cgroup_only`): the spec's `linux.cgroupsPath`, checked; none
/// when the spec has none.
///
/// # Errors
/// [`SpecError::Cgroup`] naming the path and its fault.
pub fn cgroup(spec: &Spec) -> Result<Option<CgroupPath>, SpecError> {
    let Some(path) = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()) else {
        return Ok(None);
    };
    if path.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(CgroupPath::parse(&path.to_string_lossy())?))
}

/// The spec as the agent gets it: OCI hooks dropped (they name host
/// binaries; the VM boundary is the isolation), namespaces mapped for the
/// guest ([`guest_namespaces`]), the pod's `/dev/shm` bound from the
/// guest's ([`shm`]), and other bind-mount sources shared into the guest.
/// The sandbox's hostname and sysctls are the pod's (CreateSandbox
/// applies them), so its own spec drops them.
///
/// # Errors
/// [`SpecError`]; bind mounts already made are left for the share's removal.
pub fn for_guest(
    mut spec: Spec,
    share: &ContainerShare,
    member: Membership<'_>,
) -> Result<Vec<u8>, SpecError> {
    if spec.hooks().is_some() {
        tracing::warn!("OCI hooks are not run in a pod VM; dropping them");
        spec.set_hooks(None);
    }
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(namespaces) = linux.namespaces().clone() {
            linux.set_namespaces(Some(guest_namespaces(namespaces, member)?));
        }
        if member.sandbox {
            linux.set_sysctl(None);
        }
        spec.set_linux(Some(linux));
    }
    if member.sandbox {
        spec.set_hostname(None);
    }
    if let Some(source) = member.shm_source {
        shm::bind_pod_shm(&mut spec, source);
    }
    share.share_bind_mounts(&mut spec)?;
    serde_json::to_vec(&spec).map_err(|err| SpecError::Encode(err.to_string()))
}

/// `linux.namespaces` for the guest. The pod's UTS, IPC and PID namespaces
/// are the agent's pod namespaces ([`POD_NAMESPACE_DIR`]): a container
/// names them as CRI does, by the host path `/proc/<pod's pid>/ns/<kind>`
/// (any other path of those kinds fails), and the sandbox's new UTS and
/// IPC namespaces are them. The network namespace is dropped (a pod's
/// containers share its network, which is the VM's: its interfaces are
/// the pod's), as are other namespaces given by host paths (the container
/// shares the pod VM's).
fn guest_namespaces(
    namespaces: Vec<LinuxNamespace>,
    member: Membership<'_>,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let mut kept = Vec::new();
    for mut namespace in namespaces {
        let kind = match namespace.typ() {
            LinuxNamespaceType::Uts => Some("uts"),
            LinuxNamespaceType::Ipc => Some("ipc"),
            LinuxNamespaceType::Pid => Some("pid"),
            _ => None,
        };
        let pods = |kind: &str| PathBuf::from(format!("{POD_NAMESPACE_DIR}/{kind}"));
        match (namespace.path().clone(), kind) {
            (_, _) if namespace.typ() == LinuxNamespaceType::Network => {}
            (Some(path), Some(kind)) => {
                if path != Path::new(&format!("/proc/{}/ns/{kind}", member.vmm_pid)) {
                    return Err(SpecError::Namespace {
                        kind,
                        path: path.display().to_string(),
                        vmm_pid: member.vmm_pid,
                    });
                }
                namespace.set_path(Some(pods(kind)));
                kept.push(namespace);
            }
            (None, Some(kind)) if member.sandbox && kind != "pid" => {
                namespace.set_path(Some(pods(kind)));
                kept.push(namespace);
            }
            (Some(path), None) => tracing::debug!(
                "sharing the pod VM's {:?} namespace instead of {}",
                namespace.typ(),
                path.display()
            ),
            (None, _) => kept.push(namespace),
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn test_device_rules_are_the_specs_linux_devices_only() {
        let rules = |json| -> serde_json::Value {
            serde_json::from_slice(&device_rules(&spec(json))).unwrap()
        };
        let full = rules(serde_json::json!({
            "ociVersion": "1.0.2",
            "hostname": "pod",
            "linux": {
                "resources": {
                    "devices": [{"allow": false, "access": "rwm"}],
                    "memory": {"limit": 1048576}
                },
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}],
                "sysctl": {"net.ipv4.ip_forward": "1"}
            }
        }));
        assert_eq!(
            full,
            serde_json::json!({
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
            })
        );
        let none = rules(serde_json::json!({"ociVersion": "1.0.2"}));
        assert_eq!(
            none,
            serde_json::json!({"resources": {"devices": null}, "devices": null})
        );
        let base: serde_json::Value = serde_json::from_slice(BASE_DEVICE_RULES).unwrap();
        assert_eq!(base["resources"]["devices"][0]["allow"], false);
    }

    #[test]
    fn test_network_namespace_is_the_network_entry_with_a_path() {
        let with = |namespaces: serde_json::Value| {
            network_namespace(&spec(serde_json::json!({
                "ociVersion": "1.0.2",
                "linux": {"namespaces": namespaces}
            })))
        };
        assert_eq!(
            with(serde_json::json!([
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/pod"}
            ])),
            Some(PathBuf::from("/var/run/netns/pod"))
        );
        assert_eq!(with(serde_json::json!([{"type": "network"}])), None);
        assert_eq!(with(serde_json::json!([{"type": "pid"}])), None);
        assert_eq!(
            network_namespace(&spec(serde_json::json!({"ociVersion": "1.0.2"}))),
            None
        );
    }

    #[test]
    fn test_the_pods_cgroup_is_the_checked_cgroups_path() {
        let with = |path: &str| {
            cgroup(&spec(serde_json::json!({
                "ociVersion": "1.0.2",
                "linux": {"cgroupsPath": path}
            })))
            .map(|cgroup| cgroup.map(|c| c.relative().display().to_string()))
            .map_err(|err| err.to_string())
        };
        assert_eq!(with("/default/p1"), Ok(Some("default/p1".into())));
        assert_eq!(
            with("kubepods.slice:cri-containerd:abc"),
            Ok(Some("kubepods.slice/cri-containerd-abc.scope".into()))
        );
        assert_eq!(with(""), Ok(None));
        assert_eq!(
            cgroup(&spec(serde_json::json!({"ociVersion": "1.0.2"}))).unwrap(),
            None
        );
        let err = with("default/p1").unwrap_err();
        assert!(
            err.starts_with("cgroup path \"default/p1\": neither"),
            "{err}"
        );
    }

    #[test]
    fn test_cri_annotations_group_containers_into_their_sandbox() {
        let annotated = |kind: &str, sandbox: &str| {
            spec(serde_json::json!({
                "ociVersion": "1.0.2",
                "annotations": {
                    CONTAINER_TYPE_ANNOTATION: kind,
                    SANDBOX_ID_ANNOTATION: sandbox,
                }
            }))
        };
        assert_eq!(pod_id(&annotated("container", "pod1"), "c1"), "pod1");
        assert_eq!(pod_id(&annotated("sandbox", "pod1"), "pod1"), "pod1");
        assert_eq!(pod_id(&annotated("container", ""), "c1"), "c1");
        assert_eq!(
            pod_id(&spec(serde_json::json!({"ociVersion": "1.0.2"})), "c1"),
            "c1"
        );
    }

    const MEMBER: Membership<'static> = Membership {
        sandbox: false,
        vmm_pid: 4242,
        shm_source: None,
    };

    /// The spec `for_guest` makes of `json` for `member`, as JSON.
    fn guest(json: serde_json::Value, member: Membership<'_>) -> Result<serde_json::Value, String> {
        let dir = std::env::temp_dir().join(format!("vmpod-shim-spec-{}", std::process::id()));
        let share = ContainerShare::new(&dir, "c1");
        for_guest(spec(json), &share, member)
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
            .map_err(|err| err.to_string())
    }

    #[test]
    fn test_host_paths_are_dropped_for_the_guest() {
        let adapted = guest(
            serde_json::json!({
                "ociVersion": "1.0.2",
                "hooks": {"prestart": [{"path": "/usr/bin/true"}]},
                "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
                "linux": {"namespaces": [
                    {"type": "pid"},
                    {"type": "cgroup", "path": "/proc/1/ns/cgroup"},
                    {"type": "network"}
                ]}
            }),
            MEMBER,
        )
        .unwrap();
        assert!(adapted.get("hooks").is_none(), "{adapted}");
        assert_eq!(
            adapted["linux"]["namespaces"],
            serde_json::json!([{"type": "pid"}])
        );
        assert_eq!(adapted["mounts"][0]["source"], "proc");
    }

    #[test]
    fn test_cri_namespace_paths_join_the_pods_namespaces() {
        let adapted = guest(
            serde_json::json!({
                "ociVersion": "1.0.2",
                "hostname": "own",
                "linux": {"namespaces": [
                    {"type": "pid", "path": "/proc/4242/ns/pid"},
                    {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                    {"type": "uts", "path": "/proc/4242/ns/uts"},
                    {"type": "network", "path": "/proc/4242/ns/net"},
                    {"type": "mount"}
                ]}
            }),
            MEMBER,
        )
        .unwrap();
        assert_eq!(
            adapted["linux"]["namespaces"],
            serde_json::json!([
                {"type": "pid", "path": "/run/vmpod/pod-ns/pid"},
                {"type": "ipc", "path": "/run/vmpod/pod-ns/ipc"},
                {"type": "uts", "path": "/run/vmpod/pod-ns/uts"},
                {"type": "mount"}
            ])
        );
        assert_eq!(adapted["hostname"], "own", "a member keeps its spec");
    }

    #[test]
    fn test_the_sandbox_makes_the_pods_namespaces() {
        let json = serde_json::json!({
            "ociVersion": "1.0.2",
            "hostname": "web-0",
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "sysctl": {"net.ipv4.ip_forward": "1"}
            }
        });
        let pod = pod_spec(&spec(json.clone())).unwrap();
        assert_eq!(pod.hostname, "web-0");
        assert_eq!(pod.sysctls["net.ipv4.ip_forward"], "1");
        let sandbox = Membership {
            sandbox: true,
            ..MEMBER
        };
        let adapted = guest(json, sandbox).unwrap();
        assert_eq!(
            adapted["linux"]["namespaces"],
            serde_json::json!([
                {"type": "pid"},
                {"type": "ipc", "path": "/run/vmpod/pod-ns/ipc"},
                {"type": "uts", "path": "/run/vmpod/pod-ns/uts"},
                {"type": "mount"}
            ])
        );
        assert!(adapted.get("hostname").is_none(), "{adapted}");
        assert!(adapted["linux"].get("sysctl").is_none(), "{adapted}");
    }

    #[test]
    fn test_a_namespace_path_not_of_the_pod_fails_in_one_line() {
        for (kind, path) in [
            ("uts", "/proc/1/ns/uts"),
            ("ipc", "/proc/4242/ns/uts"),
            ("pid", "/var/run/netns/pod"),
            ("uts", "/proc/4242/ns/uts/../uts"),
        ] {
            let err = guest(
                serde_json::json!({
                    "ociVersion": "1.0.2",
                    "linux": {"namespaces": [{"type": kind, "path": path}]}
                }),
                MEMBER,
            )
            .unwrap_err();
            assert_eq!(
                err,
                format!(
                    "linux.namespaces: {kind} path {path} is not this pod's (/proc/4242/ns/{kind})"
                )
            );
        }
    }

    #[test]
    fn test_the_pods_shm_is_bound_from_the_guest_not_shared() {
        let host_shm = "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/p1/shm";
        let json = serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [{"destination": "/dev/shm", "type": "bind",
                        "source": host_shm, "options": ["rbind", "rw"]}],
        });
        let member = Membership {
            shm_source: Some(Path::new(host_shm)),
            ..MEMBER
        };
        let adapted = guest(json.clone(), member).unwrap();
        assert_eq!(
            adapted["mounts"][0],
            serde_json::json!({"destination": "/dev/shm", "type": "bind",
                               "source": vmpod_agent_api::POD_SHM_DIR, "options": ["rbind", "rw"]})
        );
        // Without a pod /dev/shm it is shared as any bind: here, missing.
        assert_eq!(
            guest(json, MEMBER).unwrap_err(),
            format!("mount source {host_shm} does not exist on the host")
        );
    }

    #[test]
    fn test_a_missing_bind_source_is_named() {
        let dir = std::env::temp_dir().join(format!("vmpod-shim-bind-{}", std::process::id()));
        let share = ContainerShare::new(&dir, "c1");
        let err = for_guest(
            spec(serde_json::json!({
                "ociVersion": "1.0.2",
                "mounts": [{"destination": "/data", "type": "bind",
                            "source": "/nonexistent/vmpod", "options": ["rbind"]}],
            })),
            &share,
            MEMBER,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mount source /nonexistent/vmpod does not exist on the host"
        );
        assert!(!dir.exists());
    }
}
