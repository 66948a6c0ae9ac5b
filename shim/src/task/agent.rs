// SPDX-License-Identifier: Apache-2.0
//! The agent as the task layer and the stdio copies use it: one trait with
//! the calls they make, implemented by the real ttrpc client, so that the
//! task layer's logic is tested against a fake without a VM.

use async_trait::async_trait;
use vmpod_agent_api::messages::{Mount, StatsContainerResponse, WaitProcessResponse};
use vmpod_agent_api::{AgentClient, ClientError, ProcessId};

/// The agent calls a pod's containers need; see [`AgentClient`] for what
/// each one does in the guest.
#[async_trait]
pub trait Agent: Send + Sync + std::fmt::Debug {
    /// Creates a container from its guest spec (JSON) and root file system.
    async fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: Vec<u8>,
        rootfs: Mount,
    ) -> Result<(), ClientError>;
    /// Lets the container's init process run its program.
    async fn start_container(&self, container_id: &str) -> Result<(), ClientError>;
    /// Removes a container (with `force`, killing what still runs in it).
    async fn remove_container(&self, container_id: &str, force: bool) -> Result<(), ClientError>;
    /// Freezes every process of the container.
    async fn pause_container(&self, container_id: &str) -> Result<(), ClientError>;
    /// Thaws a paused container.
    async fn resume_container(&self, container_id: &str) -> Result<(), ClientError>;
    /// Applies new OCI `LinuxResources` (JSON) to the container.
    async fn update_container(
        &self,
        container_id: &str,
        resources_json: Vec<u8>,
    ) -> Result<(), ClientError>;
    /// The container's cgroup figures.
    async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<StatsContainerResponse, ClientError>;
    /// The PIDs of the container's processes (in the guest).
    async fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, ClientError>;
    /// Waits for the next container that hits its memory limit.
    async fn next_oom_event(&self) -> Result<String, ClientError>;
    /// Starts an exec'd process (an OCI process, JSON) in its container.
    async fn exec_process(
        &self,
        process: &ProcessId,
        oci_process_json: Vec<u8>,
    ) -> Result<(), ClientError>;
    /// Sends `signal` to the process, or with `all` to its whole container.
    async fn signal_process(
        &self,
        process: &ProcessId,
        signal: u32,
        all: bool,
    ) -> Result<(), ClientError>;
    /// Waits until the process has ended.
    async fn wait_process(&self, process: &ProcessId) -> Result<WaitProcessResponse, ClientError>;
    /// Writes to the process's stdin; returns how much it took.
    async fn write_stdin(&self, process: &ProcessId, data: &[u8]) -> Result<usize, ClientError>;
    /// Reads at most `max` bytes of the process's stdout (empty: its end).
    async fn read_stdout(&self, process: &ProcessId, max: u32) -> Result<Vec<u8>, ClientError>;
    /// Reads at most `max` bytes of the process's stderr (empty: its end).
    async fn read_stderr(&self, process: &ProcessId, max: u32) -> Result<Vec<u8>, ClientError>;
    /// Closes the process's stdin.
    async fn close_stdin(&self, process: &ProcessId) -> Result<(), ClientError>;
    /// Resizes the process's terminal.
    async fn resize_tty(
        &self,
        process: &ProcessId,
        rows: u32,
        columns: u32,
    ) -> Result<(), ClientError>;
}

#[async_trait]
impl Agent for AgentClient {
    async fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: Vec<u8>,
        rootfs: Mount,
    ) -> Result<(), ClientError> {
        AgentClient::create_container(self, container_id, oci_spec_json, rootfs).await
    }

    async fn start_container(&self, container_id: &str) -> Result<(), ClientError> {
        AgentClient::start_container(self, container_id).await
    }

    async fn remove_container(&self, container_id: &str, force: bool) -> Result<(), ClientError> {
        AgentClient::remove_container(self, container_id, force).await
    }

    async fn pause_container(&self, container_id: &str) -> Result<(), ClientError> {
        AgentClient::pause_container(self, container_id).await
    }

    async fn resume_container(&self, container_id: &str) -> Result<(), ClientError> {
        AgentClient::resume_container(self, container_id).await
    }

    async fn update_container(
        &self,
        container_id: &str,
        resources_json: Vec<u8>,
    ) -> Result<(), ClientError> {
        AgentClient::update_container(self, container_id, resources_json).await
    }

    async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<StatsContainerResponse, ClientError> {
        AgentClient::stats_container(self, container_id).await
    }

    async fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, ClientError> {
        AgentClient::list_processes(self, container_id).await
    }

    async fn next_oom_event(&self) -> Result<String, ClientError> {
        AgentClient::next_oom_event(self).await
    }

    async fn exec_process(
        &self,
        process: &ProcessId,
        oci_process_json: Vec<u8>,
    ) -> Result<(), ClientError> {
        AgentClient::exec_process(self, process, oci_process_json).await
    }

    async fn signal_process(
        &self,
        process: &ProcessId,
        signal: u32,
        all: bool,
    ) -> Result<(), ClientError> {
        AgentClient::signal_process(self, process, signal, all).await
    }

    async fn wait_process(&self, process: &ProcessId) -> Result<WaitProcessResponse, ClientError> {
        AgentClient::wait_process(self, process).await
    }

    async fn write_stdin(&self, process: &ProcessId, data: &[u8]) -> Result<usize, ClientError> {
        AgentClient::write_stdin(self, process, data).await
    }

    async fn read_stdout(&self, process: &ProcessId, max: u32) -> Result<Vec<u8>, ClientError> {
        AgentClient::read_stdout(self, process, max).await
    }

    async fn read_stderr(&self, process: &ProcessId, max: u32) -> Result<Vec<u8>, ClientError> {
        AgentClient::read_stderr(self, process, max).await
    }

    async fn close_stdin(&self, process: &ProcessId) -> Result<(), ClientError> {
        AgentClient::close_stdin(self, process).await
    }

    async fn resize_tty(
        &self,
        process: &ProcessId,
        rows: u32,
        columns: u32,
    ) -> Result<(), ClientError> {
        AgentClient::resize_tty(self, process, rows, columns).await
    }
}
