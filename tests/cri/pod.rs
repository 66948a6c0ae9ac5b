// SPDX-License-Identifier: Apache-2.0
//! The pod and container configurations the CRI tests send, filled in as
//! the kubelet fills them for a plain pod.

use std::path::Path;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, DnsConfig, ImageSpec, LinuxPodSandboxConfig,
    PodSandboxConfig, PodSandboxMetadata,
};

use super::CGROUP_PARENT;

/// A pod named `name` with hostname `hostname`, its logs in `log_dir`,
/// DNS from `dns` (servers, searches, options) and its cgroups below
/// [`CGROUP_PARENT`].
pub fn sandbox_config(
    name: &str,
    hostname: &str,
    log_dir: &Path,
    dns: DnsConfig,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: hostname.to_string(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(dns),
        labels: [("app".to_string(), name.to_string())].into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: CGROUP_PARENT.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Container `name` of `image` running `command`, its log at
/// `<name>_0.log` in the pod's log directory (the kubelet's layout).
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|arg| arg.to_string()).collect(),
        log_path: format!("{name}_0.log"),
        labels: [("container".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}
