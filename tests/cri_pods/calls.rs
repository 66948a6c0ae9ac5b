// SPDX-License-Identifier: Apache-2.0
//! The CRI calls of the pod-life test, one function each, with the
//! checks every caller makes (a call that must succeed panics with its
//! status and containerd's log).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ExecSyncResponse, ListPodSandboxRequest,
    PodSandboxConfig, PodSandboxState, PodSandboxStatus, PodSandboxStatusRequest,
    PodSandboxStatusResponse, RemovePodSandboxRequest, StartContainerRequest,
    StopPodSandboxRequest,
};
use vmpod_integration_tests::cri::CriHarness;

/// How long a state change in the guest may take (its system calls are
/// emulated on our hosts: ~0.4 ms each).
pub const GUEST_DEADLINE: Duration = Duration::from_secs(120);

/// The test's view of one pod: the harness, the pod's id and config.
pub struct Pod<'a> {
    pub harness: &'a CriHarness,
    pub id: String,
    pub config: PodSandboxConfig,
}

/// Panics with `what`, the status and containerd's log tail.
pub fn fail(harness: &CriHarness, what: &str, status: &tonic::Status) -> ! {
    panic!(
        "{what}: {:?}: {}\ncontainerd's log:\n{}",
        status.code(),
        status.message(),
        harness.containerd().log_tail(60)
    )
}

impl<'a> Pod<'a> {
    /// PodSandboxStatus, verbose (containerd's `info` carries the spec).
    pub fn status(&self) -> PodSandboxStatusResponse {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: self.id.clone(),
            verbose: true,
        };
        self.harness
            .client()
            .runtime(|mut c| async move { c.pod_sandbox_status(request).await })
            .unwrap_or_else(|e| fail(self.harness, "PodSandboxStatus", &e))
    }

    /// The pod's network namespace, from the sandbox spec containerd's
    /// verbose status carries.
    pub fn netns_path(&self) -> PathBuf {
        let status = self.status();
        let info: serde_json::Value =
            serde_json::from_str(status.info.get("info").expect("verbose info")).expect("JSON");
        let namespaces = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .expect("the sandbox spec's namespaces");
        let network = namespaces
            .iter()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .expect("a network namespace path");
        PathBuf::from(network)
    }

    /// The pod `id` that RunPodSandbox of `config` made, which must be
    /// READY; with its status.
    pub fn ready(
        harness: &'a CriHarness,
        id: String,
        config: PodSandboxConfig,
    ) -> (Self, PodSandboxStatus) {
        let pod = Pod {
            harness,
            id,
            config,
        };
        let status = pod.status().status.expect("a sandbox status");
        assert_eq!(
            status.state,
            PodSandboxState::SandboxReady as i32,
            "{status:?}"
        );
        (pod, status)
    }

    /// StopPodSandbox (the sandbox is NOTREADY after it), RemovePodSandbox,
    /// and the pod is no longer listed.
    pub fn stop_and_remove(&self) {
        let client = self.harness.client();
        let request = StopPodSandboxRequest {
            pod_sandbox_id: self.id.clone(),
        };
        client
            .runtime(|mut c| async move { c.stop_pod_sandbox(request).await })
            .unwrap_or_else(|e| fail(self.harness, "StopPodSandbox", &e));
        let status = self.status().status.expect("a sandbox status");
        assert_eq!(
            status.state,
            PodSandboxState::SandboxNotready as i32,
            "after StopPodSandbox"
        );
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: self.id.clone(),
        };
        client
            .runtime(|mut c| async move { c.remove_pod_sandbox(request).await })
            .unwrap_or_else(|e| fail(self.harness, "RemovePodSandbox", &e));
        let listed = client
            .runtime(|mut c| async move {
                c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                    .await
            })
            .unwrap_or_else(|e| fail(self.harness, "ListPodSandbox", &e));
        assert!(
            listed.items.iter().all(|item| item.id != self.id),
            "pod {} is still listed",
            self.id
        );
    }

    /// CreateContainer in this pod.
    ///
    /// # Errors
    /// The call's status.
    pub fn create(&self, config: ContainerConfig) -> Result<String, tonic::Status> {
        let request = CreateContainerRequest {
            pod_sandbox_id: self.id.clone(),
            config: Some(config),
            sandbox_config: Some(self.config.clone()),
        };
        self.harness
            .client()
            .runtime(|mut c| async move { c.create_container(request).await })
            .map(|created| created.container_id)
    }

    /// CreateContainer and StartContainer, which must succeed.
    pub fn create_and_start(&self, config: ContainerConfig) -> String {
        let name = config
            .metadata
            .as_ref()
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let id = self
            .create(config)
            .unwrap_or_else(|e| fail(self.harness, &format!("CreateContainer {name}"), &e));
        let request = StartContainerRequest {
            container_id: id.clone(),
        };
        self.harness
            .client()
            .runtime(|mut c| async move { c.start_container(request).await })
            .unwrap_or_else(|e| fail(self.harness, &format!("StartContainer {name}"), &e));
        id
    }

    /// ContainerStatus of `id`.
    pub fn container(&self, id: &str) -> ContainerStatus {
        let request = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.harness
            .client()
            .runtime(|mut c| async move { c.container_status(request).await })
            .unwrap_or_else(|e| fail(self.harness, "ContainerStatus", &e))
            .status
            .expect("a container status")
    }

    /// Waits for container `id` to reach `state`; returns its status.
    pub fn wait_state(&self, id: &str, state: ContainerState) -> ContainerStatus {
        let deadline = Instant::now() + GUEST_DEADLINE;
        loop {
            let status = self.container(id);
            if status.state == state as i32 {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "container {id}: state {:?}, want {state:?}\n{}",
                ContainerState::try_from(status.state),
                self.harness.containerd().log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// ExecSync of `cmd` in container `id` with a timeout of `timeout_s`
    /// seconds (0: none).
    ///
    /// # Errors
    /// The call's status.
    pub fn exec(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<ExecSyncResponse, tonic::Status> {
        let request = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|arg| arg.to_string()).collect(),
            timeout: timeout_s,
        };
        self.harness
            .client()
            .runtime(|mut c| async move { c.exec_sync(request).await })
    }
}

/// The lines of a CRI log file (`<RFC 3339 time> <stream> <P|F> <text>`)
/// as (stream, text) of full lines; panics on a line of another format.
pub fn log_lines(log: &str) -> Vec<(String, String)> {
    log.lines()
        .map(|line| {
            let mut fields = line.splitn(4, ' ');
            let (time, stream, tag, text) = (
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
                fields.next().unwrap_or_default(),
            );
            assert!(
                time.len() >= 20 && time.as_bytes()[4] == b'-' && time.contains('T'),
                "log line {line:?}: no RFC 3339 time"
            );
            assert!(
                matches!(stream, "stdout" | "stderr") && matches!(tag, "F" | "P"),
                "log line {line:?}: not `<time> <stream> <tag> <text>`"
            );
            (stream.to_string(), text.to_string())
        })
        .collect()
}
