// SPDX-License-Identifier: Apache-2.0
//! Test doubles of the task layer's seams: an agent that records its calls
//! and refuses what a test tells it to, an event sink that records events,
//! and a launcher whose pod VM is a directory and a watch channel. With
//! them, [`Harness`] runs the Task API's verbs without containerd or a VM
//! (the rootfs bind mount of a create is real: tests run as root).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::spec::PodSpec;
use async_trait::async_trait;
use containerd_shim::api::{
    CreateTaskRequest, CreateTaskResponse, ExecProcessRequest, StartRequest, StateRequest, Status,
};
use containerd_shim::asynchronous::ExitSignal;
use protobuf::well_known_types::any::Any;
use protobuf::{MessageDyn, MessageField, MessageFull};
use tokio::sync::{mpsc, watch};
use ttrpc::Code;
use vmpod_agent_api::messages::{Mount, StatsContainerResponse, WaitProcessResponse};
use vmpod_agent_api::{ClientError, ProcessId};

use super::{lock, Agent, EventSink, Launcher, PodHandle, PodVm, TaskService};
use crate::config::Config;
use crate::pod::{PodDir, PodError};
use crate::sizing::VmSize;

/// The pid the fake VM's `vmpod-vm` has.
pub(super) const VMM_PID: u32 = 4242;
/// When the fake agent says its processes exited, in ns since the epoch.
pub(super) const EXITED_AT_NS: u64 = 1_700_000_000_500_000_000;

/// An agent that answers every call at once, except WaitProcess (until the
/// test ends the process) and GetOOMEvent (until the test sends one).
#[derive(Debug)]
pub(super) struct FakeAgent {
    calls: Mutex<Vec<String>>,
    refusals: Mutex<HashMap<&'static str, (Code, String)>>,
    exits: Mutex<HashMap<ProcessId, watch::Sender<Option<i32>>>>,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    /// What StatsContainer answers.
    pub(super) stats: Mutex<StatsContainerResponse>,
}

impl FakeAgent {
    fn new() -> Self {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        FakeAgent {
            calls: Mutex::new(Vec::new()),
            refusals: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            oom_tx,
            oom_rx: tokio::sync::Mutex::new(oom_rx),
            stats: Mutex::new(StatsContainerResponse::new()),
        }
    }

    /// From now on the agent refuses `method` with `code` and `message`.
    pub(super) fn refuse(&self, method: &'static str, code: Code, message: &str) {
        lock(&self.refusals).insert(method, (code, message.to_owned()));
    }

    /// The calls so far, as `Method args`.
    pub(super) fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    /// Whether a call starting with `prefix` was made.
    pub(super) fn called(&self, prefix: &str) -> bool {
        self.calls().iter().any(|call| call.starts_with(prefix))
    }

    /// The process ends in the guest with `status`.
    pub(super) fn exit(&self, process: &ProcessId, status: i32) {
        self.exit_slot(process).send_replace(Some(status));
    }

    /// The guest reports that `container_id` hit its memory limit.
    pub(super) fn oom(&self, container_id: &str) {
        let _ = self.oom_tx.send(container_id.to_owned());
    }

    fn exit_slot(&self, process: &ProcessId) -> watch::Sender<Option<i32>> {
        lock(&self.exits)
            .entry(process.clone())
            .or_insert_with(|| watch::channel(None).0)
            .clone()
    }

    /// Records the call; the refusal set for `method`, if any.
    fn answer(&self, method: &'static str, args: String) -> Result<(), ClientError> {
        lock(&self.calls).push(format!("{method} {args}"));
        match lock(&self.refusals).get(method) {
            Some((code, message)) => Err(ClientError::Rpc {
                method,
                source: ttrpc::Error::RpcStatus(ttrpc::get_status(*code, message)),
            }),
            None => Ok(()),
        }
    }
}

/// `container/exec` of a process, for the call log.
fn named(process: &ProcessId) -> String {
    format!("{}/{}", process.container_id, process.exec_id)
}

#[async_trait]
impl Agent for FakeAgent {
    async fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: Vec<u8>,
        rootfs: Mount,
    ) -> Result<(), ClientError> {
        serde_json::from_slice::<oci_spec::runtime::Spec>(&oci_spec_json)
            .expect("the guest spec is an OCI spec");
        self.answer(
            "CreateContainer",
            format!("{container_id} {}", rootfs.source),
        )
    }

    async fn start_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.answer("StartContainer", container_id.to_owned())
    }

    async fn remove_container(&self, container_id: &str, force: bool) -> Result<(), ClientError> {
        self.answer("RemoveContainer", format!("{container_id} force={force}"))
    }

    async fn pause_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.answer("PauseContainer", container_id.to_owned())
    }

    async fn resume_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.answer("ResumeContainer", container_id.to_owned())
    }

    async fn update_container(
        &self,
        container_id: &str,
        resources_json: Vec<u8>,
    ) -> Result<(), ClientError> {
        let resources = String::from_utf8_lossy(&resources_json).into_owned();
        self.answer("UpdateContainer", format!("{container_id} {resources}"))
    }

    async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<StatsContainerResponse, ClientError> {
        self.answer("StatsContainer", container_id.to_owned())?;
        Ok(lock(&self.stats).clone())
    }

    async fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, ClientError> {
        self.answer("ListProcesses", container_id.to_owned())?;
        Ok(vec![1, 7])
    }

    async fn next_oom_event(&self) -> Result<String, ClientError> {
        let next = self.oom_rx.lock().await.recv().await;
        next.ok_or(ClientError::Rpc {
            method: "GetOOMEvent",
            source: ttrpc::Error::LocalClosed,
        })
    }

    async fn exec_process(
        &self,
        process: &ProcessId,
        oci_process_json: Vec<u8>,
    ) -> Result<(), ClientError> {
        serde_json::from_slice::<oci_spec::runtime::Process>(&oci_process_json)
            .expect("an OCI process");
        self.answer("ExecProcess", named(process))
    }

    async fn signal_process(
        &self,
        process: &ProcessId,
        signal: u32,
        all: bool,
    ) -> Result<(), ClientError> {
        self.answer(
            "SignalProcess",
            format!("{} {signal} all={all}", named(process)),
        )
    }

    async fn wait_process(&self, process: &ProcessId) -> Result<WaitProcessResponse, ClientError> {
        self.answer("WaitProcess", named(process))?;
        let mut exit = self.exit_slot(process).subscribe();
        let status = exit
            .wait_for(Option::is_some)
            .await
            .map(|status| status.unwrap_or_default())
            .unwrap_or_default();
        let mut response = WaitProcessResponse::new();
        response.exit_status = status;
        response.exited_at_ns = EXITED_AT_NS;
        Ok(response)
    }

    async fn write_stdin(&self, process: &ProcessId, data: &[u8]) -> Result<usize, ClientError> {
        self.answer("WriteStdin", named(process))?;
        Ok(data.len())
    }

    async fn read_stdout(&self, process: &ProcessId, _max: u32) -> Result<Vec<u8>, ClientError> {
        self.answer("ReadStdout", named(process))?;
        Ok(Vec::new())
    }

    async fn read_stderr(&self, process: &ProcessId, _max: u32) -> Result<Vec<u8>, ClientError> {
        self.answer("ReadStderr", named(process))?;
        Ok(Vec::new())
    }

    async fn close_stdin(&self, process: &ProcessId) -> Result<(), ClientError> {
        self.answer("CloseStdin", named(process))
    }

    async fn resize_tty(
        &self,
        process: &ProcessId,
        rows: u32,
        columns: u32,
    ) -> Result<(), ClientError> {
        self.answer(
            "TtyWinResize",
            format!("{} {rows}x{columns}", named(process)),
        )
    }
}

/// An event sink that keeps what it is given.
#[derive(Debug, Default)]
pub(super) struct RecordingEvents {
    events: Mutex<Vec<(String, Box<dyn MessageDyn>)>>,
}

impl RecordingEvents {
    /// The topics published so far, in order.
    pub(super) fn topics(&self) -> Vec<String> {
        lock(&self.events)
            .iter()
            .map(|(topic, _)| topic.clone())
            .collect()
    }

    /// The events of type `M` published so far, in order.
    pub(super) fn all<M: MessageFull>(&self) -> Vec<M> {
        lock(&self.events)
            .iter()
            .filter_map(|(_, event)| event.downcast_ref::<M>().cloned())
            .collect()
    }

    /// The one event of type `M` published so far.
    pub(super) fn one<M: MessageFull>(&self) -> M {
        let mut all = self.all::<M>();
        assert_eq!(all.len(), 1, "{:?}", self.topics());
        all.remove(0)
    }

    /// Waits (at most 5 s) until `count` events of type `M` were published.
    pub(super) async fn wait_for<M: MessageFull>(&self, count: usize) -> Vec<M> {
        for _ in 0..500 {
            let all = self.all::<M>();
            if all.len() >= count {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no {count} {} events: {:?}", M::NAME, self.topics());
    }
}

#[async_trait]
impl EventSink for RecordingEvents {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        lock(&self.events).push((topic.to_owned(), event));
    }
}

/// A launcher of fake pod VMs, all with the one [`FakeAgent`].
#[derive(Debug)]
pub(super) struct FakeLauncher {
    agent: Arc<FakeAgent>,
    root: PathBuf,
    vm_exit: watch::Sender<Option<String>>,
    /// The launches so far, with the size each asked for.
    pub(super) launches: Mutex<Vec<VmSize>>,
    /// How many pod VMs were shut down.
    pub(super) shut_downs: Arc<AtomicUsize>,
    /// How many shut-downs fail before one succeeds.
    pub(super) failed_shut_downs: Arc<AtomicIsize>,
    /// What the next launch fails with.
    pub(super) failure: Mutex<Option<PodError>>,
}

impl FakeLauncher {
    /// The running fake VM ends, as `vmpod-vm` exiting with `why`.
    pub(super) fn end_vm(&self, why: &str) {
        self.vm_exit.send_replace(Some(why.to_owned()));
    }
}

#[async_trait]
impl Launcher for FakeLauncher {
    async fn launch(
        &self,
        config: &Config,
        namespace: &str,
        id: &str,
        size: VmSize,
        spec: &PodSpec,
    ) -> Result<Box<dyn PodVm>, PodError> {
        if let Some(err) = lock(&self.failure).take() {
            return Err(err);
        }
        lock(&self.launches).push(size);
        let dir = PodDir::new(&self.root, namespace, id);
        dir.create(config.share_limits).unwrap();
        Ok(Box::new(FakePod {
            id: id.to_owned(),
            dir,
            handle: PodHandle {
                agent: self.agent.clone(),
                vmm_pid: VMM_PID,
                vm_exit: self.vm_exit.subscribe(),
                size,
                stopping: Arc::new(AtomicBool::new(false)),
                shm_source: spec.shm.as_ref().map(|shm| shm.source.clone()),
            },
            shut_downs: self.shut_downs.clone(),
            failed_shut_downs: self.failed_shut_downs.clone(),
        }))
    }
}

/// A fake pod VM: its directory (the real one, with its share) and its
/// handle.
#[derive(Debug)]
struct FakePod {
    id: String,
    dir: PodDir,
    handle: PodHandle,
    shut_downs: Arc<AtomicUsize>,
    failed_shut_downs: Arc<AtomicIsize>,
}

#[async_trait]
impl PodVm for FakePod {
    fn id(&self) -> &str {
        &self.id
    }

    fn dir(&self) -> PathBuf {
        self.dir.root.clone()
    }

    fn handle(&self) -> PodHandle {
        self.handle.clone()
    }

    async fn shut_down(&mut self) -> std::io::Result<()> {
        self.handle.stopping.store(true, Ordering::SeqCst);
        self.shut_downs.fetch_add(1, Ordering::SeqCst);
        if self.failed_shut_downs.fetch_sub(1, Ordering::SeqCst) > 0 {
            return Err(std::io::Error::other("injected removal failure"));
        }
        self.failed_shut_downs.store(0, Ordering::SeqCst);
        self.dir.remove()
    }
}

/// Tells the harnesses of tests running at once apart.
static HARNESSES: AtomicUsize = AtomicUsize::new(0);

/// A [`TaskService`] on the fakes, in a directory of its own.
pub(super) struct Harness {
    /// The service under test.
    pub(super) service: TaskService,
    /// Its agent.
    pub(super) agent: Arc<FakeAgent>,
    /// Its events.
    pub(super) events: Arc<RecordingEvents>,
    /// Its pod VMs.
    pub(super) launcher: Arc<FakeLauncher>,
    /// What Shutdown signals.
    pub(super) exit_signal: Arc<ExitSignal>,
    dir: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        // The pods a test left, as the shim removes them; then the
        // harness's own directory (with what a failed test left mounted).
        let namespace = self.dir.join("state").join("default");
        for pod in std::fs::read_dir(&namespace)
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = PodDir { root: pod.path() }.remove();
        }
        let _ = vmpod_sys::mountinfo::unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl Harness {
    /// A service with a usable configuration.
    pub(super) fn new() -> Self {
        Self::with_config(Ok)
    }

    /// A service whose configuration is what `adjust` makes of a usable one.
    pub(super) fn with_config(adjust: impl FnOnce(Config) -> Result<Config, String>) -> Self {
        let dir = std::env::temp_dir()
            .join(format!("vmpod-task-{}", std::process::id()))
            .join(HARNESSES.fetch_add(1, Ordering::SeqCst).to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let config = Config::for_tests(
            &dir.join("vmlinux"),
            &dir.join("initrd"),
            &dir.join("vmpod-vm"),
            &dir.join("state"),
        );
        let agent = Arc::new(FakeAgent::new());
        let events = Arc::new(RecordingEvents::default());
        let launcher = Arc::new(FakeLauncher {
            agent: agent.clone(),
            root: dir.join("state"),
            vm_exit: watch::channel(None).0,
            launches: Mutex::new(Vec::new()),
            shut_downs: Arc::new(AtomicUsize::new(0)),
            failed_shut_downs: Arc::new(AtomicIsize::new(0)),
            failure: Mutex::new(None),
        });
        let exit_signal = Arc::new(ExitSignal::default());
        let service = TaskService::with_seams(
            "default",
            adjust(config),
            events.clone(),
            launcher.clone(),
            exit_signal.clone(),
        );
        Harness {
            service,
            agent,
            events,
            launcher,
            exit_signal,
            dir,
        }
    }

    /// A bundle for container `id` whose spec is `spec` (its root `rootfs`).
    pub(super) fn bundle_with(&self, id: &str, spec: serde_json::Value) -> PathBuf {
        let bundle = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        std::fs::write(bundle.join("config.json"), spec.to_string()).unwrap();
        bundle
    }

    /// A bundle for container `id` with a minimal spec.
    pub(super) fn bundle(&self, id: &str) -> PathBuf {
        self.bundle_with(id, minimal_spec())
    }

    /// The pod VM's shared directory, once launched for pod `pod_id`.
    pub(super) fn shared(&self, pod_id: &str) -> PathBuf {
        self.dir
            .join("state")
            .join("default")
            .join(pod_id)
            .join("shared")
    }

    /// Create of container `id` in the bundle at `bundle`.
    pub(super) async fn create_in(
        &self,
        id: &str,
        bundle: &Path,
    ) -> ttrpc::Result<CreateTaskResponse> {
        self.service
            .create_task(CreateTaskRequest {
                id: id.into(),
                bundle: bundle.display().to_string(),
                ..Default::default()
            })
            .await
    }

    /// A created container `id` (with a bundle of its own).
    pub(super) async fn created(&self, id: &str) {
        let bundle = self.bundle(id);
        self.create_in(id, &bundle).await.unwrap();
    }

    /// A created container `id` of the pod whose sandbox is `pod_id`.
    pub(super) async fn created_in_pod(&self, id: &str, pod_id: &str) {
        let bundle = self.bundle_with(id, in_pod(pod_id));
        self.create_in(id, &bundle).await.unwrap();
    }

    /// A started container `id`.
    pub(super) async fn started(&self, id: &str) {
        self.created(id).await;
        self.start(id, "").await.unwrap();
    }

    /// Exec `exec_id` in container `id`, with a default OCI process.
    pub(super) async fn exec(&self, id: &str, exec_id: &str) -> ttrpc::Result<()> {
        let spec = serde_json::to_vec(&oci_spec::runtime::Process::default()).unwrap();
        self.service
            .add_exec(ExecProcessRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                spec: MessageField::some(Any {
                    value: spec,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map(drop)
    }

    /// The status State reports for container `id`'s init (empty
    /// `exec_id`) or exec.
    pub(super) fn status(&self, id: &str, exec_id: &str) -> ttrpc::Result<Status> {
        let state = self.service.task_state(&StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        })?;
        Ok(state.status.enum_value_or_default())
    }

    /// Start of container `id`'s init (empty `exec_id`) or exec.
    pub(super) async fn start(&self, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
        self.service
            .start_process(StartRequest {
                id: id.into(),
                exec_id: exec_id.into(),
                ..Default::default()
            })
            .await
            .map(|response| response.pid)
    }
}

/// The smallest spec a create accepts: its root is the bundle's `rootfs`.
pub(super) fn minimal_spec() -> serde_json::Value {
    serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}})
}

/// A spec of a container in pod `pod_id` (CRI's annotations).
pub(super) fn in_pod(pod_id: &str) -> serde_json::Value {
    let mut spec = minimal_spec();
    spec["annotations"] = serde_json::json!({
        crate::spec::CONTAINER_TYPE_ANNOTATION: "container",
        crate::spec::SANDBOX_ID_ANNOTATION: pod_id,
    });
    spec
}

/// The fake agent's StatsContainer answer, to set.
pub(super) fn lock_stats(harness: &Harness) -> std::sync::MutexGuard<'_, StatsContainerResponse> {
    lock(&harness.agent.stats)
}

/// The code and message of a refused request.
pub(super) fn refusal<T: std::fmt::Debug>(result: ttrpc::Result<T>) -> (Code, String) {
    match result {
        Err(ttrpc::Error::RpcStatus(status)) => (status.code(), status.message().to_owned()),
        other => panic!("not refused: {other:?}"),
    }
}
