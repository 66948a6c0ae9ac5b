// SPDX-License-Identifier: Apache-2.0
//! containerd's Task API for one pod: each request mapped to the pod VM's
//! agent, with the events containerd expects. The first container boots the
//! pod VM; the last one deleted tears it down.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
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
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::TtrpcContext;
use protobuf::well_known_types::any::Any;
use protobuf::{MessageDyn, MessageField};
use tokio::sync::watch;
use ttrpc::Code;
use vmpod_agent_api::messages::Mount;
use vmpod_agent_api::{AgentClient, ClientError, ProcessId};

use crate::config::Config;
use crate::io::{Copies, StdioPaths};
use crate::network::NetworkError;
use crate::pod::{Pod, PodError};
use crate::process::{Exit, Process, LOST_STATUS};
use crate::share::ContainerShare;
use crate::spec;

/// The file in a container's bundle naming its pod's directory, for `delete`
/// after the shim is gone.
pub const POD_DIR_FILE: &str = "vmpod-pod";
/// How long a Delete whose agent call failed waits to learn that the VM
/// ended (then the failure is the VM's death, not the agent's refusal).
const VM_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
/// The type URL containerd decodes cgroup v2 metrics by.
const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";
/// Longest container id accepted (as the agent: ids name files and cgroups).
const MAX_ID_LEN: usize = 128;
/// Longest exec id accepted: the agent's id for it adds `.` and a number.
const MAX_EXEC_ID_LEN: usize = 100;

/// One container of the pod.
#[derive(Debug)]
struct Container {
    bundle: String,
    share: ContainerShare,
    init: Process,
    execs: HashMap<String, Process>,
    paused: bool,
}

impl Container {
    fn process(&self, exec_id: &str) -> Result<&Process, ttrpc::Error> {
        if exec_id.is_empty() {
            Ok(&self.init)
        } else {
            self.execs
                .get(exec_id)
                .ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id:?} not found")))
        }
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process, ttrpc::Error> {
        if exec_id.is_empty() {
            Ok(&mut self.init)
        } else {
            self.execs
                .get_mut(exec_id)
                .ok_or_else(|| status(Code::NOT_FOUND, format!("exec {exec_id:?} not found")))
        }
    }
}

/// The pod's running VM, as requests need it.
#[derive(Debug, Clone)]
struct PodHandle {
    agent: AgentClient,
    vmm_pid: u32,
    vm_exit: watch::Receiver<Option<String>>,
}

/// The Task service of one shim (one pod).
pub struct TaskService {
    namespace: String,
    config: Result<Config, String>,
    publisher: Arc<RemotePublisher>,
    /// The pod VM; held across its launch and teardown so that they do not
    /// overlap with each other or with a second container's create.
    pod: tokio::sync::Mutex<Option<Pod>>,
    handle: Mutex<Option<PodHandle>>,
    containers: Arc<Mutex<HashMap<String, Container>>>,
    exit_signal: Arc<ExitSignal>,
    /// Numbers the agent ids of execs.
    exec_sequence: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

/// An agent failure as containerd should see it: the agent's own status
/// code and message when it refused, UNAVAILABLE when it could not be reached.
fn agent_status(err: ClientError) -> ttrpc::Error {
    status(err.agent_code().unwrap_or(Code::UNAVAILABLE), err)
}

/// A failed pod launch as containerd should see it: bad input (the spec's
/// namespace, its routes, the guest's refusal of them) by its own code, so
/// that a caller does not retry what cannot succeed; the rest UNAVAILABLE.
fn launch_status(err: PodError) -> ttrpc::Error {
    let code = match &err {
        PodError::Exists { .. } => Code::ALREADY_EXISTS,
        PodError::Network {
            source: NetworkError::Namespace { source, .. },
            ..
        } if source.kind() == std::io::ErrorKind::NotFound => Code::NOT_FOUND,
        PodError::Network {
            source: NetworkError::Namespace { .. } | NetworkError::Route { .. },
            ..
        } => Code::INVALID_ARGUMENT,
        PodError::Network {
            source: NetworkError::Vanished { .. },
            ..
        }
        | PodError::Version { .. } => Code::FAILED_PRECONDITION,
        PodError::GuestNetwork { source, .. } => source.agent_code().unwrap_or(Code::UNAVAILABLE),
        _ => Code::UNAVAILABLE,
    };
    status(code, err)
}

/// Checks a container or exec id of at most `max` bytes, as the agent will:
/// ids name directories in the share and in the guest.
fn check_id(what: &str, id: &str, max: usize) -> Result<(), ttrpc::Error> {
    let valid = !id.is_empty()
        && id.len() <= max
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(status(
            Code::INVALID_ARGUMENT,
            format!("{what} {id:?}: want 1 to {max} of [A-Za-z0-9_.-], not starting with '.'"),
        ))
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
        TaskService {
            namespace: namespace.to_owned(),
            config,
            publisher: Arc::new(publisher),
            pod: tokio::sync::Mutex::new(None),
            handle: Mutex::new(None),
            containers: Arc::new(Mutex::new(HashMap::new())),
            exit_signal,
            exec_sequence: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn next_exec(&self) -> u64 {
        self.exec_sequence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        lock(&self.containers)
    }

    fn handle(&self) -> Result<PodHandle, ttrpc::Error> {
        lock(&self.handle)
            .clone()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the pod VM is not running"))
    }

    /// Pause (`paused`) or Resume: the agent freezes or thaws the container,
    /// and TaskPaused or TaskResumed follows.
    async fn set_paused(&self, id: &str, paused: bool) -> ttrpc::Result<Empty> {
        let handle = self.handle_for(id)?;
        if paused {
            handle.agent.pause_container(id).await
        } else {
            handle.agent.resume_container(id).await
        }
        .map_err(agent_status)?;
        if let Some(container) = self.containers().get_mut(id) {
            container.paused = paused;
        }
        let container_id = id.to_owned();
        if paused {
            let event = TaskPaused {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event))
                .await;
        } else {
            let event = TaskResumed {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event))
                .await;
        }
        Ok(Empty::new())
    }

    /// The pod's VM for a request naming container `id`: NOT_FOUND for a
    /// container this shim does not have (what containerd expects of a task
    /// that is gone), whether or not the VM runs.
    fn handle_for(&self, id: &str) -> Result<PodHandle, ttrpc::Error> {
        if !self.containers().contains_key(id) {
            return Err(not_found(id));
        }
        self.handle()
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        publish(&self.publisher, &self.namespace, topic, event).await;
    }

    /// Stops the pod VM and removes its directory. Called on the last delete
    /// and when the shim is told to stop.
    pub async fn shut_down_pod(&self) {
        let pod = self.pod.lock().await.take();
        lock(&self.handle).take();
        if let Some(pod) = pod {
            let id = pod.id.clone();
            if let Err(err) = pod.shut_down().await {
                tracing::warn!(pod = id, "removing the pod's directory: {err}");
            }
        }
    }

    /// Runs after the pod VM started: OOM events and the VM's end.
    fn watch_pod(&self, handle: &PodHandle) {
        let agent = handle.agent.clone();
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        tokio::spawn(async move {
            while let Ok(container_id) = agent.next_oom_event().await {
                let event = TaskOOM {
                    container_id,
                    ..Default::default()
                };
                publish(
                    &publisher,
                    &namespace,
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(event),
                )
                .await;
            }
        });
        // Processes still waiting for Start when the VM ends exit here; the
        // started ones through their monitors.
        let mut vm_exit = handle.vm_exit.clone();
        let containers = self.containers.clone();
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        let vmm_pid = handle.vmm_pid;
        tokio::spawn(async move {
            let Ok(why) = vm_exit
                .wait_for(Option::is_some)
                .await
                .map(|why| why.clone())
            else {
                return;
            };
            tracing::warn!("the pod VM ended: {}", why.unwrap_or_default());
            let mut exits = Vec::new();
            for (container_id, container) in lock(&containers).iter() {
                let processes = std::iter::once(("", &container.init)).chain(
                    container
                        .execs
                        .iter()
                        .map(|(exec_id, process)| (exec_id.as_str(), process)),
                );
                for (exec_id, process) in processes {
                    if process.exit().is_none()
                        && process.status(false) == containerd_shim::api::Status::CREATED
                    {
                        let exit = Exit::now(LOST_STATUS);
                        process.set_exit(exit.clone());
                        exits.push(task_exit(container_id, exec_id, vmm_pid, &exit));
                    }
                }
            }
            for event in exits {
                publish(
                    &publisher,
                    &namespace,
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(event),
                )
                .await;
            }
        });
    }

    /// Boots the pod VM if this is the pod's first container; returns it and
    /// whether this create launched it.
    async fn pod_for(
        &self,
        pod_id: &str,
        container_id: &str,
        annotations: &HashMap<String, String>,
        netns: Option<&Path>,
    ) -> Result<(PodHandle, PathBuf, bool), ttrpc::Error> {
        let config = self
            .config
            .as_ref()
            .map_err(|err| status(Code::FAILED_PRECONDITION, err))?;
        let mut pod = self.pod.lock().await;
        if let Some(pod) = pod.as_ref() {
            if pod.id != pod_id {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "container {container_id:?} names pod {pod_id:?}, this shim runs pod {:?}",
                        pod.id
                    ),
                ));
            }
            return Ok((self.handle()?, pod.dir.shared(), false));
        }
        if pod_id != container_id {
            return Err(status(
                Code::NOT_FOUND,
                format!("container {container_id:?} names pod {pod_id:?}, which does not run"),
            ));
        }
        let size = config
            .vm_size(annotations)
            .map_err(|err| status(Code::INVALID_ARGUMENT, err))?;
        let launched = Pod::launch(config, &self.namespace, pod_id, size, netns)
            .await
            .map_err(launch_status)?;
        let handle = PodHandle {
            agent: launched.agent.clone(),
            vmm_pid: launched.vmm_pid,
            vm_exit: launched.vm_exit.clone(),
        };
        let shared = launched.dir.shared();
        *pod = Some(launched);
        *lock(&self.handle) = Some(handle.clone());
        self.watch_pod(&handle);
        Ok((handle, shared, true))
    }

    /// The steps of Create after the pod runs; undone by the caller on failure.
    async fn create_in_pod(
        &self,
        req: &CreateTaskRequest,
        spec: oci_spec::runtime::Spec,
        agent: &AgentClient,
        share: &ContainerShare,
        pod_dir: &Path,
    ) -> Result<(), ttrpc::Error> {
        let bundle = Path::new(&req.bundle);
        std::fs::write(
            bundle.join(POD_DIR_FILE),
            pod_dir.as_os_str().as_encoded_bytes(),
        )
        .map_err(|err| {
            status(
                Code::INTERNAL,
                format!("write {}: {err}", bundle.join(POD_DIR_FILE).display()),
            )
        })?;
        // Without mounts from containerd, the spec's root is a prepared
        // directory (relative to the bundle, or absolute as with `ctr run --rootfs`).
        let root = spec
            .root()
            .as_ref()
            .map_or_else(|| bundle.join("rootfs"), |root| bundle.join(root.path()));
        share
            .mount_rootfs(&req.rootfs, &root)
            .await
            .map_err(|err| status(Code::INTERNAL, err))?;
        let guest_spec =
            spec::for_guest(spec, share).map_err(|err| status(Code::INVALID_ARGUMENT, err))?;
        let mut rootfs = Mount::new();
        rootfs.source = share.guest_rootfs();
        rootfs.fstype = "bind".into();
        agent
            .create_container(&req.id, guest_spec, rootfs)
            .await
            .map_err(agent_status)
    }

    /// Starts copying the process's stdio and a monitor that records its exit
    /// (after the output is drained) and publishes TaskExit.
    fn monitor(
        &self,
        handle: &PodHandle,
        container_id: &str,
        exec_id: &str,
        process: &Process,
    ) -> Result<(), ttrpc::Error> {
        let copies = Copies::start(&handle.agent, &process.id, &process.stdio)
            .map_err(|err| status(Code::INVALID_ARGUMENT, err))?;
        process.set_copies(&copies);
        let exit_tx = process.exit_sender();
        let agent = handle.agent.clone();
        let id = process.id.clone();
        let mut vm_exit = handle.vm_exit.clone();
        let publisher = self.publisher.clone();
        let namespace = self.namespace.clone();
        let container_id = container_id.to_owned();
        let exec_id = exec_id.to_owned();
        let vmm_pid = handle.vmm_pid;
        tokio::spawn(async move {
            let exit = tokio::select! {
                waited = agent.wait_process(&id) => match waited {
                    Ok(waited) => Exit::at_nanos(
                        u32::try_from(waited.exit_status).unwrap_or(LOST_STATUS),
                        waited.exited_at_ns,
                    ),
                    Err(err) => {
                        tracing::warn!(?id, "wait: {err}");
                        Exit::now(LOST_STATUS)
                    }
                },
                _ = vm_exit.wait_for(Option::is_some) => Exit::now(LOST_STATUS),
            };
            // The exit counts once its output reached containerd, unless the VM is gone.
            tokio::select! {
                _ = copies.drain() => {}
                _ = vm_exit.wait_for(Option::is_some) => {}
            }
            let exited = exit_tx.send_if_modified(|slot| {
                if slot.is_none() {
                    *slot = Some(exit.clone());
                    true
                } else {
                    false
                }
            });
            if exited {
                let event = task_exit(&container_id, &exec_id, vmm_pid, &exit);
                publish(
                    &publisher,
                    &namespace,
                    topics::TASK_EXIT_EVENT_TOPIC,
                    Box::new(event),
                )
                .await;
            }
        });
        Ok(())
    }

    fn process_status(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(watch::Receiver<Option<Exit>>, bool), ttrpc::Error> {
        let containers = self.containers();
        let container = containers
            .get(id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("container {id:?} not found")))?;
        let process = container.process(exec_id)?;
        Ok((
            process.exit_watch(),
            process.status(false) != containerd_shim::api::Status::CREATED,
        ))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn publish(
    publisher: &RemotePublisher,
    namespace: &str,
    topic: &str,
    event: Box<dyn MessageDyn>,
) {
    if let Err(err) = publisher
        .publish(ttrpc::context::Context::default(), topic, namespace, event)
        .await
    {
        tracing::warn!(topic, "publish: {err}");
    }
}

fn task_exit(container_id: &str, exec_id: &str, pid: u32, exit: &Exit) -> TaskExit {
    TaskExit {
        container_id: container_id.to_owned(),
        id: if exec_id.is_empty() {
            container_id.to_owned()
        } else {
            exec_id.to_owned()
        },
        pid,
        exit_status: exit.status,
        exited_at: MessageField::some(exit.at.clone()),
        ..Default::default()
    }
}

fn not_found(id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("container {id:?} not found"))
}

#[async_trait]
impl containerd_shim::Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        check_id("container", &req.id, MAX_ID_LEN)?;
        if self.containers().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {:?} exists", req.id),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "checkpoint/restore is not supported",
            ));
        }
        let spec = spec::load(Path::new(&req.bundle))
            .map_err(|err| status(Code::INVALID_ARGUMENT, err))?;
        let pod_id = spec::pod_id(&spec, &req.id);
        let annotations = spec.annotations().clone().unwrap_or_default();
        let netns = spec::network_namespace(&spec);
        let (handle, shared, launched) = self
            .pod_for(&pod_id, &req.id, &annotations, netns.as_deref())
            .await?;
        let pod_dir = shared.parent().map(Path::to_path_buf).unwrap_or_default();
        let share = ContainerShare::new(&shared, &req.id);
        if let Err(err) = self
            .create_in_pod(&req, spec, &handle.agent, &share, &pod_dir)
            .await
        {
            if let Err(cleanup) = share.remove() {
                tracing::warn!("rollback of {:?}: {cleanup}", req.id);
            }
            let _ = std::fs::remove_file(Path::new(&req.bundle).join(POD_DIR_FILE));
            if launched {
                self.shut_down_pod().await;
            }
            return Err(err);
        }
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.containers().insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                share,
                init: Process::new(ProcessId::init(&req.id), stdio, None),
                execs: HashMap::new(),
                paused: false,
            },
        );
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid: handle.vmm_pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(CreateTaskResponse {
            pid: handle.vmm_pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let handle = self.handle_for(&req.id)?;
        let (process_id, exec_spec) = {
            let containers = self.containers();
            let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let process = container.process(&req.exec_id)?;
            if process.status(false) != containerd_shim::api::Status::CREATED {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("{:?} was started already", process.id),
                ));
            }
            (process.id.clone(), process.exec_spec.clone())
        };
        // Started first, watched after: the agent keeps output and exit
        // status until they are read, and a failed start leaves nothing to watch.
        match exec_spec {
            Some(spec) => handle.agent.exec_process(&process_id, spec).await,
            None => handle.agent.start_container(&req.id).await,
        }
        .map_err(agent_status)?;
        {
            let mut containers = self.containers();
            let container = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            let process = container.process_mut(&req.exec_id)?;
            process.set_started();
            self.monitor(&handle, &req.id, &req.exec_id, process)?;
        }
        if req.exec_id.is_empty() {
            let event = TaskStart {
                container_id: req.id.clone(),
                pid: handle.vmm_pid,
                ..Default::default()
            };
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event))
                .await;
        } else {
            let event = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: handle.vmm_pid,
                ..Default::default()
            };
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event))
                .await;
        }
        Ok(StartResponse {
            pid: handle.vmm_pid,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let vmm_pid = lock(&self.handle)
            .as_ref()
            .map_or(0, |handle| handle.vmm_pid);
        let containers = self.containers();
        let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        let process = container.process(&req.exec_id)?;
        let exit = process.exit();
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.clone(),
            pid: vmm_pid,
            status: process.status(container.paused).into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.stdio.terminal,
            exit_status: exit.as_ref().map_or(0, |exit| exit.status),
            exited_at: exit.map(|exit| exit.at).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let handle = self.handle_for(&req.id)?;
        let process_id = {
            let containers = self.containers();
            let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let process = container.process(&req.exec_id)?;
            if process.exit().is_some() {
                return Err(status(Code::NOT_FOUND, "process already finished"));
            }
            process.id.clone()
        };
        handle
            .agent
            .signal_process(&process_id, req.signal, req.all)
            .await
            .map_err(agent_status)?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let (mut exit, _) = self.process_status(&req.id, &req.exec_id)?;
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| status(Code::NOT_FOUND, "the process went away"))?
            .clone()
            .unwrap_or_else(|| Exit::now(LOST_STATUS));
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: DeleteRequest,
    ) -> ttrpc::Result<DeleteResponse> {
        let vmm_pid = lock(&self.handle)
            .as_ref()
            .map_or(0, |handle| handle.vmm_pid);
        let running = |process: &Process| {
            process.exit().is_none()
                && process.status(false) != containerd_shim::api::Status::CREATED
        };
        if !req.exec_id.is_empty() {
            let exec = {
                let mut containers = self.containers();
                let container = containers
                    .get_mut(&req.id)
                    .ok_or_else(|| not_found(&req.id))?;
                let exec = container.process(&req.exec_id)?;
                if running(exec) {
                    return Err(status(
                        Code::FAILED_PRECONDITION,
                        format!("exec {:?} is running", req.exec_id),
                    ));
                }
                container.execs.remove(&req.exec_id)
            };
            let exit = exec
                .and_then(|exec| exec.exit())
                .unwrap_or_else(|| Exit::now(0));
            return Ok(DeleteResponse {
                pid: vmm_pid,
                exit_status: exit.status,
                exited_at: MessageField::some(exit.at),
                ..Default::default()
            });
        }
        let (share, was_created) = {
            let containers = self.containers();
            let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            if running(&container.init) {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {:?} is running", req.id),
                ));
            }
            (container.share.clone(), container.init.exit().is_none())
        };
        if let Ok(handle) = self.handle() {
            if handle.vm_exit.borrow().is_none() {
                if let Err(err) = handle.agent.remove_container(&req.id, true).await {
                    // The VM may have died since the check (its agent's
                    // channel closes before its process is reaped): then
                    // there is nothing left in it to remove.
                    let mut vm_exit = handle.vm_exit.clone();
                    let ended =
                        tokio::time::timeout(VM_EXIT_GRACE, vm_exit.wait_for(Option::is_some))
                            .await
                            .is_ok_and(|waited| waited.is_ok());
                    if !ended {
                        return Err(agent_status(err));
                    }
                }
            }
        }
        share.remove().map_err(|err| status(Code::INTERNAL, err))?;
        let (exit, bundle, now_empty) = {
            let mut containers = self.containers();
            let container = containers
                .remove(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            let exit = container
                .init
                .exit()
                .unwrap_or_else(|| Exit::now(if was_created { 0 } else { LOST_STATUS }));
            (exit, container.bundle, containers.is_empty())
        };
        let _ = std::fs::remove_file(Path::new(&bundle).join(POD_DIR_FILE));
        if now_empty {
            self.shut_down_pod().await;
        }
        let event = TaskDelete {
            container_id: req.id.clone(),
            pid: vmm_pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at.clone()),
            id: req.id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(DeleteResponse {
            pid: vmm_pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        check_id("exec", &req.exec_id, MAX_EXEC_ID_LEN)?;
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .filter(|value| !value.is_empty())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        if serde_json::from_slice::<oci_spec::runtime::Process>(&spec).is_err() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "exec: the process spec is not an OCI process (JSON)",
            ));
        }
        {
            let mut containers = self.containers();
            let container = containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            if container.init.exit().is_some() {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!("container {:?} has exited", req.id),
                ));
            }
            if container.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("exec {:?} exists", req.exec_id),
                ));
            }
            let stdio = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            container.execs.insert(
                req.exec_id.clone(),
                // The agent keeps a process until its container goes, and
                // containerd may reuse an exec id once it deleted the exec:
                // each exec gets an agent id of its own.
                Process::new(
                    ProcessId::exec(&req.id, &format!("{}.{}", req.exec_id, self.next_exec())),
                    stdio,
                    Some(spec),
                ),
            );
        }
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let handle = self.handle_for(&req.id)?;
        let process_id = {
            let containers = self.containers();
            let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            container.process(&req.exec_id)?.id.clone()
        };
        handle
            .agent
            .resize_tty(&process_id, req.height, req.width)
            .await
            .map_err(agent_status)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let containers = self.containers();
        let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
        if req.stdin {
            container.process(&req.exec_id)?.close_stdin();
        }
        Ok(Empty::new())
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let handle = self.handle_for(&req.id)?;
        let pids = handle
            .agent
            .list_processes(&req.id)
            .await
            .map_err(agent_status)?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        self.set_paused(&req.id, true).await
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        self.set_paused(&req.id, false).await
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let handle = self.handle_for(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "update without resources"))?;
        if serde_json::from_slice::<oci_spec::runtime::LinuxResources>(&resources).is_err() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "update: the resources are not OCI LinuxResources (JSON)",
            ));
        }
        handle
            .agent
            .update_container(&req.id, resources)
            .await
            .map_err(agent_status)?;
        Ok(Empty::new())
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let handle = self.handle_for(&req.id)?;
        let stats = handle
            .agent
            .stats_container(&req.id)
            .await
            .map_err(agent_status)?;
        let mut metrics = Metrics::new();
        if let Some(pids) = stats.pids.as_ref() {
            metrics.pids = MessageField::some(PidsStat {
                current: pids.current,
                limit: pids.limit,
                ..Default::default()
            });
        }
        if let Some(cpu) = stats.cpu.as_ref() {
            metrics.cpu = MessageField::some(CPUStat {
                usage_usec: cpu.usage_usec,
                user_usec: cpu.user_usec,
                system_usec: cpu.system_usec,
                nr_throttled: cpu.nr_throttled,
                throttled_usec: cpu.throttled_usec,
                ..Default::default()
            });
        }
        if let Some(memory) = stats.memory.as_ref() {
            metrics.memory = MessageField::some(MemoryStat {
                usage: memory.usage,
                usage_limit: memory.limit,
                max_usage: memory.max_usage,
                ..Default::default()
            });
            metrics.memory_events = MessageField::some(MemoryEvents {
                oom_kill: memory.oom_kills,
                ..Default::default()
            });
        }
        let any = Any::pack(&metrics).map_err(|err| status(Code::INTERNAL, err))?;
        Ok(StatsResponse {
            stats: MessageField::some(Any {
                type_url: METRICS_V2_TYPE_URL.into(),
                value: any.value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let vmm_pid = lock(&self.handle)
            .as_ref()
            .map_or(0, |handle| handle.vmm_pid);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: vmm_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        if self.containers().is_empty() {
            self.shut_down_pod().await;
            self.exit_signal.signal();
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_name_other_paths_are_refused() {
        for good in ["c1", "a.b-c_d", &"x".repeat(MAX_ID_LEN)] {
            assert!(check_id("container", good, MAX_ID_LEN).is_ok(), "{good}");
        }
        let too_long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ä", &too_long] {
            let err = check_id("container", bad, MAX_ID_LEN).unwrap_err();
            assert!(err.to_string().contains("want 1 to 128"), "{bad}: {err}");
        }
        // An exec's agent id (`<id>.<number>`) stays within the agent's limit.
        let longest = format!("{}.{}", "x".repeat(MAX_EXEC_ID_LEN), u64::MAX);
        assert!(longest.len() <= MAX_ID_LEN);
        let too_long = "x".repeat(MAX_EXEC_ID_LEN + 1);
        assert!(check_id("exec", &too_long, MAX_EXEC_ID_LEN).is_err());
    }

    #[test]
    fn agent_refusals_keep_their_code() {
        let refused = ClientError::Rpc {
            method: "StartContainer",
            source: ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::NOT_FOUND,
                "no such container",
            )),
        };
        match agent_status(refused) {
            ttrpc::Error::RpcStatus(status) => {
                assert_eq!(status.code(), Code::NOT_FOUND);
                assert!(status.message().contains("no such container"));
            }
            other => panic!("{other:?}"),
        }
        let lost = ClientError::Rpc {
            method: "WaitProcess",
            source: ttrpc::Error::LocalClosed,
        };
        match agent_status(lost) {
            ttrpc::Error::RpcStatus(status) => assert_eq!(status.code(), Code::UNAVAILABLE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn launch_failures_say_whether_a_retry_can_help() {
        let code = |err: PodError| match launch_status(err) {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_owned()),
            other => panic!("{other:?}"),
        };
        let pod = || "p".to_owned();
        let missing = PodError::Network {
            pod: pod(),
            source: NetworkError::Namespace {
                path: "/nonexistent".into(),
                source: std::io::ErrorKind::NotFound.into(),
            },
        };
        assert_eq!(code(missing).0, Code::NOT_FOUND);
        let route = PodError::Network {
            pod: pod(),
            source: NetworkError::Route {
                netns: "/var/run/netns/n".into(),
                destination: "default".into(),
                why: "has several next hops",
            },
        };
        assert_eq!(code(route).0, Code::INVALID_ARGUMENT);
        let refused = PodError::GuestNetwork {
            pod: pod(),
            source: ClientError::Rpc {
                method: "UpdateRoutes",
                source: ttrpc::Error::RpcStatus(ttrpc::get_status(
                    Code::FAILED_PRECONDITION,
                    "adding route to default: Invalid argument",
                )),
            },
        };
        let (refused_code, message) = code(refused);
        assert_eq!(refused_code, Code::FAILED_PRECONDITION);
        assert_eq!(
            message,
            "pod p: configuring the guest's network: agent UpdateRoutes: \
             adding route to default: Invalid argument"
        );
        let timeout = PodError::Timeout {
            pod: pod(),
            seconds: 1,
            log: String::new(),
        };
        assert_eq!(code(timeout).0, Code::UNAVAILABLE);
    }
}
