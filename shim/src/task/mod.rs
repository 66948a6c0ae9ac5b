// SPDX-License-Identifier: Apache-2.0
//! containerd's Task API for one pod: each request mapped to the pod VM's
//! agent, with the events containerd expects. The first container boots the
//! pod VM; the last one deleted tears it down.
//!
//! One file per group of verbs (as youki's `container_<verb>.rs`), each an
//! `impl TaskService` block that the [`containerd_shim::Task`] impl here
//! delegates to. What a verb may do to a process in its status is
//! [`TaskStatus`]'s; the agent, the event sink and the pod VM's launch are
//! traits ([`Agent`], [`EventSink`], [`Launcher`]), so that the verbs are
//! unit-tested against fakes without containerd or a VM.

mod agent;
mod control;
mod create;
mod delete;
mod error;
mod events;
mod exec;
#[cfg(test)]
mod fake;
mod kill;
mod launch;
mod start;
mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::TtrpcContext;
use protobuf::MessageDyn;
use ttrpc::Code;

pub use agent::Agent;
pub use events::{ContainerdEvents, EventSink};
pub use launch::{Launcher, PodHandle, PodVm, VmLauncher};
pub use state::TaskStatus;

use crate::config::Config;
use error::{not_found, status};
use state::Container;

/// The file in a container's bundle naming its pod's directory, for `delete`
/// after the shim is gone.
pub const POD_DIR_FILE: &str = "vmpod-pod";

/// The pod's containers by id, shared with the tasks that watch the VM.
type Containers = Arc<Mutex<HashMap<String, Container>>>;

/// The Task service of one shim (one pod).
pub struct TaskService {
    namespace: String,
    config: Result<Config, String>,
    events: Arc<dyn EventSink>,
    launcher: Arc<dyn Launcher>,
    /// The pod VM; held across its launch and teardown so that they do not
    /// overlap with each other or with a second container's create.
    pod: tokio::sync::Mutex<Option<Box<dyn PodVm>>>,
    handle: Mutex<Option<PodHandle>>,
    containers: Containers,
    exit_signal: Arc<ExitSignal>,
    /// Numbers the agent ids of execs.
    exec_sequence: AtomicU64,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl TaskService {
    /// The service for namespace `namespace`; `config` is the checked
    /// configuration or why it is not usable (then every create fails with it).
    pub fn new(
        namespace: &str,
        config: Result<Config, String>,
        publisher: RemotePublisher,
        exit_signal: Arc<ExitSignal>,
    ) -> Self {
        let events = Arc::new(ContainerdEvents::new(publisher, namespace));
        Self::with_seams(namespace, config, events, Arc::new(VmLauncher), exit_signal)
    }

    /// The service with the given event sink and pod launcher: containerd's
    /// and the real VM's in [`TaskService::new`], fakes in tests.
    pub fn with_seams(
        namespace: &str,
        config: Result<Config, String>,
        events: Arc<dyn EventSink>,
        launcher: Arc<dyn Launcher>,
        exit_signal: Arc<ExitSignal>,
    ) -> Self {
        TaskService {
            namespace: namespace.to_owned(),
            config,
            events,
            launcher,
            pod: tokio::sync::Mutex::new(None),
            handle: Mutex::new(None),
            containers: Arc::new(Mutex::new(HashMap::new())),
            exit_signal,
            exec_sequence: AtomicU64::new(0),
        }
    }

    fn next_exec(&self) -> u64 {
        self.exec_sequence.fetch_add(1, Ordering::Relaxed)
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        lock(&self.containers)
    }

    /// Runs `f` on container `id`, or fails NOT_FOUND when this shim has no
    /// such container (what containerd expects of a task that is gone).
    fn with_container<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Container) -> Result<R, ttrpc::Error>,
    ) -> Result<R, ttrpc::Error> {
        let mut containers = self.containers();
        let container = containers.get_mut(id).ok_or_else(|| not_found(id))?;
        f(container)
    }

    /// The VMM's pid, what containerd is told is every task's; 0 while no
    /// pod VM runs.
    fn vmm_pid(&self) -> u32 {
        lock(&self.handle)
            .as_ref()
            .map_or(0, |handle| handle.vmm_pid)
    }

    fn handle(&self) -> Result<PodHandle, ttrpc::Error> {
        lock(&self.handle)
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the pod VM is not running"))
    }

    /// The pod's VM for a request naming container `id`: NOT_FOUND for a
    /// container this shim does not have, whether or not the VM runs.
    fn handle_for(&self, id: &str) -> Result<PodHandle, ttrpc::Error> {
        self.with_container(id, |_| Ok(()))?;
        self.handle()
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.events.publish(topic, event).await;
    }

    /// State: the process's status and stdio as this shim tracks them.
    fn task_state(&self, req: &StateRequest) -> ttrpc::Result<StateResponse> {
        let vmm_pid = self.vmm_pid();
        self.with_container(&req.id, |container| {
            let process = container.process(&req.exec_id)?;
            let exit = process.exit();
            Ok(StateResponse {
                id: req.id.clone(),
                bundle: container.bundle.clone(),
                pid: vmm_pid,
                status: containerd_shim::api::Status::from(container.status_of(process)).into(),
                stdin: process.stdio.stdin.clone(),
                stdout: process.stdio.stdout.clone(),
                stderr: process.stdio.stderr.clone(),
                terminal: process.stdio.terminal,
                exit_status: exit.as_ref().map_or(0, |exit| exit.status),
                exited_at: exit.map(|exit| exit.at).into(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
    }

    /// Connect: the shim's pid and the task's (the VMM's).
    fn connection(&self) -> ConnectResponse {
        ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.vmm_pid(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }
    }

    /// Shutdown: with no container left, the pod VM goes and the shim exits.
    async fn shut_down_if_empty(&self) {
        if self.containers().is_empty() {
            // A failure is logged; `delete` after the shim removes the rest.
            let _ = self.shut_down_pod().await;
            self.exit_signal.signal();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait]
impl containerd_shim::Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        self.create_task(req).await
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        self.start_process(req).await
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        self.task_state(&req)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        self.kill_process(req).await
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        self.wait_exit(req).await
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        self.delete_process(req).await
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.add_exec(req).await
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.resize_pty_of(req).await
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        self.close_io_of(&req)
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        self.list_pids(&req.id).await
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.set_paused(&req.id, true).await
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.set_paused(&req.id, false).await
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        self.update_resources(req).await
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        self.container_stats(&req.id).await
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        Ok(self.connection())
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        self.shut_down_if_empty().await;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use containerd_shim::api::Status;

    use super::*;
    use crate::task::fake::{refusal, Harness, VMM_PID};

    #[tokio::test]
    async fn test_state_reports_the_process_as_tracked() {
        let harness = Harness::new();
        let bundle = harness.bundle("c1");
        harness
            .service
            .create_task(CreateTaskRequest {
                id: "c1".into(),
                bundle: bundle.display().to_string(),
                stdout: "/run/fifo/out".into(),
                terminal: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let state = harness
            .service
            .task_state(&StateRequest {
                id: "c1".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(state.id, "c1");
        assert_eq!(state.bundle, bundle.display().to_string());
        assert_eq!(state.pid, VMM_PID);
        assert_eq!(state.status.enum_value_or_default(), Status::CREATED);
        assert_eq!(state.stdout, "/run/fifo/out");
        assert!(state.terminal);
        assert_eq!(state.exit_status, 0);
        assert!(state.exited_at.is_none());
    }

    #[tokio::test]
    async fn test_requests_for_unknown_containers_are_not_found_with_a_running_pod() {
        let harness = Harness::new();
        harness.started("c1").await;
        let service = &harness.service;
        let id = || "nosuch".to_owned();
        let results = [
            refusal(harness.status("nosuch", "")),
            refusal(harness.start("nosuch", "").await),
            refusal(
                service
                    .kill_process(KillRequest {
                        id: id(),
                        signal: 9,
                        ..Default::default()
                    })
                    .await,
            ),
            refusal(
                service
                    .wait_exit(WaitRequest {
                        id: id(),
                        ..Default::default()
                    })
                    .await,
            ),
            refusal(
                service
                    .delete_process(DeleteRequest {
                        id: id(),
                        ..Default::default()
                    })
                    .await,
            ),
            refusal(service.list_pids("nosuch").await),
            refusal(service.set_paused("nosuch", true).await),
            refusal(service.container_stats("nosuch").await),
            refusal(
                service
                    .update_resources(UpdateTaskRequest {
                        id: id(),
                        ..Default::default()
                    })
                    .await,
            ),
            refusal(
                service
                    .resize_pty_of(ResizePtyRequest {
                        id: id(),
                        ..Default::default()
                    })
                    .await,
            ),
        ];
        for (code, message) in results {
            assert_eq!(
                (code, message.as_str()),
                (Code::NOT_FOUND, "container \"nosuch\" not found")
            );
        }
    }

    #[tokio::test]
    async fn test_connect_names_the_vmm_once_it_runs() {
        let harness = Harness::new();
        let before = harness.service.connection();
        assert_eq!(before.shim_pid, std::process::id());
        assert_eq!(before.task_pid, 0);
        assert_eq!(before.version, env!("CARGO_PKG_VERSION"));
        harness.created("c1").await;
        assert_eq!(harness.service.connection().task_pid, VMM_PID);
    }

    #[tokio::test]
    async fn test_shutdown_waits_for_the_last_container() {
        let harness = Harness::new();
        harness.created("c1").await;
        harness.service.shut_down_if_empty().await;
        assert_eq!(
            harness
                .launcher
                .shut_downs
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(50), harness.exit_signal.wait())
                .await
                .is_err(),
            "the shim exits with a container left"
        );
        harness
            .service
            .delete_process(DeleteRequest {
                id: "c1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        harness.service.shut_down_if_empty().await;
        tokio::time::timeout(Duration::from_secs(1), harness.exit_signal.wait())
            .await
            .expect("the shim exits");
        assert_eq!(
            harness
                .launcher
                .shut_downs
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
    }
}
