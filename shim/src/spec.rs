// SPDX-License-Identifier: Apache-2.0
//! The bundle's OCI spec, written by containerd for a host runtime, made fit
//! for the guest: host paths mean nothing inside the VM. And which pod a
//! container belongs to, from its CRI annotations.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use vmpod_jailer::cgroup::{CgroupError, CgroupPath};

use crate::share::{ContainerShare, ShareError};

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
/// binaries; the VM boundary is the isolation), namespaces given by host
/// paths dropped (the container then shares the pod VM's), the network
/// namespace dropped (a pod's containers share its network, which is the
/// VM's: its interfaces are the pod's), and bind-mount sources shared into
/// the guest.
///
/// # Errors
/// [`SpecError`]; bind mounts already made are left for the share's removal.
pub fn for_guest(mut spec: Spec, share: &ContainerShare) -> Result<Vec<u8>, SpecError> {
    if spec.hooks().is_some() {
        tracing::warn!("OCI hooks are not run in a pod VM; dropping them");
        spec.set_hooks(None);
    }
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(namespaces) = linux.namespaces().clone() {
            let (kept, dropped): (Vec<_>, Vec<_>) = namespaces.into_iter().partition(|namespace| {
                namespace.path().is_none() && namespace.typ() != LinuxNamespaceType::Network
            });
            for namespace in dropped {
                tracing::debug!(
                    "sharing the pod VM's {:?} namespace instead of {:?}",
                    namespace.typ(),
                    namespace.path()
                );
            }
            linux.set_namespaces(Some(kept));
        }
        spec.set_linux(Some(linux));
    }
    share.share_bind_mounts(&mut spec)?;
    serde_json::to_vec(&spec).map_err(|err| SpecError::Encode(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
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

    #[test]
    fn test_host_paths_are_dropped_for_the_guest() {
        let dir = std::env::temp_dir().join(format!("vmpod-shim-spec-{}", std::process::id()));
        let share = ContainerShare::new(&dir, "c1");
        let adapted = for_guest(
            spec(serde_json::json!({
                "ociVersion": "1.0.2",
                "hooks": {"prestart": [{"path": "/usr/bin/true"}]},
                "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
                "linux": {"namespaces": [
                    {"type": "pid"},
                    {"type": "ipc", "path": "/proc/1/ns/ipc"},
                    {"type": "network"}
                ]}
            })),
            &share,
        )
        .unwrap();
        let adapted: serde_json::Value = serde_json::from_slice(&adapted).unwrap();
        assert!(adapted.get("hooks").is_none(), "{adapted}");
        assert_eq!(
            adapted["linux"]["namespaces"],
            serde_json::json!([{"type": "pid"}])
        );
        assert_eq!(adapted["mounts"][0]["source"], "proc");
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
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "mount source /nonexistent/vmpod does not exist on the host"
        );
        assert!(!dir.exists());
    }
}
