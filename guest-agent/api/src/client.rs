// SPDX-License-Identifier: Apache-2.0
//! A typed client for the agent: one method per protocol step, over a Unix
//! socket (an agent on the host) or the VMM's hybrid vsock socket (the
//! agent in a pod VM).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use ttrpc::asynchronous::transport::Socket;
use ttrpc::asynchronous::Client;
use ttrpc::context::{self, Context};

pub use crate::error::ClientError;
use crate::messages::{
    AddNeighboursRequest, CheckRequest, ContainerRequest, CreateContainerRequest,
    CreateSandboxRequest, DestroySandboxRequest, ExecProcessRequest, GetOOMEventRequest, Interface,
    Mount, Neighbour, OOMEvent, PrepareTemplateRequest, ProcessRequest, ReadStreamRequest,
    RemoveContainerRequest, Route, Routes, SignalProcessRequest, StatsContainerResponse,
    TtyWinResizeRequest, UpdateContainerRequest, UpdateInterfaceRequest, UpdateRoutesRequest,
    VersionRequest, VersionResponse, WaitProcessResponse, WriteStreamRequest,
};
use crate::service::AgentServiceClient;

/// How long a request that does not wait for the workload may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest hybrid-vsock handshake line the VMM sends (`OK <port>\n`).
const MAX_HANDSHAKE_LINE: usize = 32;

/// A process inside the agent: a container's init (empty exec id) or one
/// of its exec'd processes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProcessId {
    /// The container.
    pub container_id: String,
    /// The exec id; empty for the container's init process.
    pub exec_id: String,
}

impl ProcessId {
    /// The init process of `container_id`.
    pub fn init(container_id: &str) -> Self {
        ProcessId {
            container_id: container_id.to_owned(),
            exec_id: String::new(),
        }
    }

    /// The process `exec_id` exec'd in `container_id`.
    pub fn exec(container_id: &str, exec_id: &str) -> Self {
        ProcessId {
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        }
    }
}

/// A connection to one agent.
#[derive(Clone)]
pub struct AgentClient {
    inner: AgentServiceClient,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentClient").finish_non_exhaustive()
    }
}

/// A context for requests that finish on their own.
fn bounded() -> Context {
    context::with_timeout(REQUEST_TIMEOUT.as_nanos() as i64)
}

/// A context for requests that wait for the workload (exit, output, OOM).
fn unbounded() -> Context {
    context::Context::default()
}

fn rpc(method: &'static str) -> impl FnOnce(ttrpc::Error) -> ClientError {
    move |source| ClientError::Rpc { method, source }
}

impl AgentClient {
    /// Connects to an agent listening on the Unix socket `path`.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when nothing accepts on `path`.
    pub async fn connect_unix(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self::over(stream))
    }

    /// Connects to the agent's vsock `port` in a VM through its VMM's
    /// hybrid vsock socket `uds`: `CONNECT <port>\n`, answered by
    /// `OK <host_port>\n` once the guest accepted.
    ///
    /// # Errors
    ///
    /// [`ClientError::Connect`] when the VMM's socket is not there,
    /// [`ClientError::Handshake`] when the guest does not accept.
    pub async fn connect_hybrid_vsock(uds: &Path, port: u32) -> Result<Self, ClientError> {
        let connect_error = |source| ClientError::Connect {
            path: uds.display().to_string(),
            source,
        };
        let handshake_error = |reason: String| ClientError::Handshake { port, reason };
        // The VMM's socket may lie deeper than a socket address holds.
        let (dir, name) = vmpod_sys::unix_socket::split(uds).map_err(connect_error)?;
        let address = dir.address(name).map_err(connect_error)?;
        let mut stream = UnixStream::connect(&address).await.map_err(connect_error)?;
        drop(dir);
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(|err| handshake_error(err.to_string()))?;
        // Read the reply a byte at a time so that nothing of the ttrpc
        // stream after it is consumed into a buffer.
        let mut line = Vec::new();
        let mut reader = BufReader::with_capacity(1, &mut stream);
        loop {
            let mut byte = Vec::with_capacity(1);
            let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut byte))
                .await
                .map_err(|_| handshake_error("no reply".into()))?
                .map_err(|err| handshake_error(err.to_string()))?;
            if read == 0 {
                return Err(handshake_error("connection closed".into()));
            }
            line.extend_from_slice(&byte);
            if line.ends_with(b"\n") {
                break;
            }
            if line.len() > MAX_HANDSHAKE_LINE {
                return Err(handshake_error("reply too long".into()));
            }
        }
        let line = String::from_utf8_lossy(&line);
        if !line.starts_with("OK ") {
            return Err(handshake_error(format!(
                "unexpected reply {:?}",
                line.trim()
            )));
        }
        Ok(Self::over(stream))
    }

    fn over(stream: UnixStream) -> Self {
        AgentClient {
            inner: AgentServiceClient::new(Client::new(Socket::new(stream))),
        }
    }

    /// Whether the agent serves requests.
    ///
    /// # Errors
    ///
    /// [`ClientError::Rpc`] for every failure of a request, here and below.
    pub async fn check(&self) -> Result<bool, ClientError> {
        let reply = self
            .inner
            .check(bounded(), &CheckRequest::new())
            .await
            .map_err(rpc("Check"))?;
        Ok(reply.serving)
    }

    /// The agent's version and API version.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn version(&self) -> Result<VersionResponse, ClientError> {
        self.inner
            .version(bounded(), &VersionRequest::new())
            .await
            .map_err(rpc("Version"))
    }

    /// Sets up the pod: hostname, DNS, shared mounts, PID namespace,
    /// sysctls and `/dev/shm`; and makes the guest its own (random pool,
    /// clock, interface MACs) with the host's time and random bytes read
    /// now ([`HostTimeAndSeed::now`]).
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn create_sandbox(&self, sandbox: &SandboxConfig) -> Result<(), ClientError> {
        self.create_sandbox_with(sandbox, HostTimeAndSeed::now())
            .await
    }

    /// [`AgentClient::create_sandbox`] with the host's time and seed given.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn create_sandbox_with(
        &self,
        sandbox: &SandboxConfig,
        host: HostTimeAndSeed,
    ) -> Result<(), ClientError> {
        let mut req = CreateSandboxRequest::new();
        req.host_time_ns = host.time_ns;
        req.seed = host.seed;
        req.interface_macs = sandbox.interface_macs.clone();
        req.sandbox_id = sandbox.id.clone();
        req.hostname = sandbox.hostname.clone();
        req.dns = sandbox.dns.clone();
        req.shared_mounts = sandbox.shared_mounts.clone();
        req.shared_pid_namespace = sandbox.shared_pid_namespace;
        req.sysctls = sandbox.sysctls.clone();
        req.shm_size = sandbox.shm_size;
        self.inner
            .create_sandbox(bounded(), &req)
            .await
            .map_err(rpc("CreateSandbox"))?;
        Ok(())
    }

    /// Ends every container and undoes the sandbox's set-up.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn destroy_sandbox(&self) -> Result<(), ClientError> {
        self.inner
            .destroy_sandbox(bounded(), &DestroySandboxRequest::new())
            .await
            .map_err(rpc("DestroySandbox"))?;
        Ok(())
    }

    /// Creates a container from its OCI spec (JSON) on `rootfs`; its init
    /// process waits for [`AgentClient::start_container`].
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn create_container(
        &self,
        container_id: &str,
        oci_spec_json: Vec<u8>,
        rootfs: Mount,
    ) -> Result<(), ClientError> {
        let mut req = CreateContainerRequest::new();
        req.container_id = container_id.to_owned();
        req.oci_spec = oci_spec_json;
        req.rootfs = Some(rootfs).into();
        self.inner
            .create_container(bounded(), &req)
            .await
            .map_err(rpc("CreateContainer"))?;
        Ok(())
    }

    /// Lets the container's init process run its program.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn start_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.inner
            .start_container(bounded(), &container_request(container_id))
            .await
            .map_err(rpc("StartContainer"))?;
        Ok(())
    }

    /// Has the agent of a VM about to become a template do the guest
    /// kernel work its restored pods would repeat, for containers with the
    /// OCI `linux` object `linux_json` (see the request in `agent.proto`).
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn prepare_template(&self, linux_json: Vec<u8>) -> Result<(), ClientError> {
        let mut req = PrepareTemplateRequest::new();
        req.linux = linux_json;
        self.inner
            .prepare_template(bounded(), &req)
            .await
            .map_err(rpc("PrepareTemplate"))?;
        Ok(())
    }

    /// Removes a container whose processes have ended (or, with `force`,
    /// kills them first).
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn remove_container(
        &self,
        container_id: &str,
        force: bool,
    ) -> Result<(), ClientError> {
        let mut req = RemoveContainerRequest::new();
        req.container_id = container_id.to_owned();
        req.force = force;
        self.inner
            .remove_container(bounded(), &req)
            .await
            .map_err(rpc("RemoveContainer"))?;
        Ok(())
    }

    /// Freezes every process of the container.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn pause_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.inner
            .pause_container(bounded(), &container_request(container_id))
            .await
            .map_err(rpc("PauseContainer"))?;
        Ok(())
    }

    /// Thaws a paused container.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn resume_container(&self, container_id: &str) -> Result<(), ClientError> {
        self.inner
            .resume_container(bounded(), &container_request(container_id))
            .await
            .map_err(rpc("ResumeContainer"))?;
        Ok(())
    }

    /// Applies new OCI `LinuxResources` (JSON) to the container's cgroup.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn update_container(
        &self,
        container_id: &str,
        resources_json: Vec<u8>,
    ) -> Result<(), ClientError> {
        let mut req = UpdateContainerRequest::new();
        req.container_id = container_id.to_owned();
        req.resources = resources_json;
        self.inner
            .update_container(bounded(), &req)
            .await
            .map_err(rpc("UpdateContainer"))?;
        Ok(())
    }

    /// The container's cgroup figures.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn stats_container(
        &self,
        container_id: &str,
    ) -> Result<StatsContainerResponse, ClientError> {
        self.inner
            .stats_container(bounded(), &container_request(container_id))
            .await
            .map_err(rpc("StatsContainer"))
    }

    /// The PIDs of the container's processes.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn list_processes(&self, container_id: &str) -> Result<Vec<u32>, ClientError> {
        let reply = self
            .inner
            .list_processes(bounded(), &container_request(container_id))
            .await
            .map_err(rpc("ListProcesses"))?;
        Ok(reply.pids)
    }

    /// Waits for the next container of the sandbox that hits its memory
    /// limit and returns its id.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn next_oom_event(&self) -> Result<String, ClientError> {
        let event: OOMEvent = self
            .inner
            .get_oom_event(unbounded(), &GetOOMEventRequest::new())
            .await
            .map_err(rpc("GetOOMEvent"))?;
        Ok(event.container_id)
    }

    /// Starts another process (an OCI `Process`, JSON) in a running
    /// container, in its namespaces and cgroup.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn exec_process(
        &self,
        process: &ProcessId,
        oci_process_json: Vec<u8>,
    ) -> Result<(), ClientError> {
        let mut req = ExecProcessRequest::new();
        req.container_id = process.container_id.clone();
        req.exec_id = process.exec_id.clone();
        req.process = oci_process_json;
        self.inner
            .exec_process(bounded(), &req)
            .await
            .map_err(rpc("ExecProcess"))?;
        Ok(())
    }

    /// Sends `signal` to the process, or with `all` to every process of
    /// its container.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn signal_process(
        &self,
        process: &ProcessId,
        signal: u32,
        all: bool,
    ) -> Result<(), ClientError> {
        let mut req = SignalProcessRequest::new();
        req.container_id = process.container_id.clone();
        req.exec_id = process.exec_id.clone();
        req.signal = signal;
        req.all = all;
        self.inner
            .signal_process(bounded(), &req)
            .await
            .map_err(rpc("SignalProcess"))?;
        Ok(())
    }

    /// Waits until the process has ended and returns its exit status.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn wait_process(
        &self,
        process: &ProcessId,
    ) -> Result<WaitProcessResponse, ClientError> {
        self.inner
            .wait_process(unbounded(), &process_request(process))
            .await
            .map_err(rpc("WaitProcess"))
    }

    /// Writes to the process's stdin (or terminal); returns how much it
    /// took.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn write_stdin(
        &self,
        process: &ProcessId,
        data: &[u8],
    ) -> Result<usize, ClientError> {
        let mut req = WriteStreamRequest::new();
        req.container_id = process.container_id.clone();
        req.exec_id = process.exec_id.clone();
        req.data = data.to_vec();
        let reply = self
            .inner
            .write_stdin(unbounded(), &req)
            .await
            .map_err(rpc("WriteStdin"))?;
        Ok(reply.len as usize)
    }

    /// The next output of the process's stdout (or terminal), at most
    /// `max` bytes; empty at the end of the stream.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn read_stdout(&self, process: &ProcessId, max: u32) -> Result<Vec<u8>, ClientError> {
        let reply = self
            .inner
            .read_stdout(unbounded(), &read_request(process, max))
            .await
            .map_err(rpc("ReadStdout"))?;
        Ok(reply.data)
    }

    /// As [`AgentClient::read_stdout`], for stderr.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn read_stderr(&self, process: &ProcessId, max: u32) -> Result<Vec<u8>, ClientError> {
        let reply = self
            .inner
            .read_stderr(unbounded(), &read_request(process, max))
            .await
            .map_err(rpc("ReadStderr"))?;
        Ok(reply.data)
    }

    /// Closes the process's stdin, so that it reads end of file.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn close_stdin(&self, process: &ProcessId) -> Result<(), ClientError> {
        self.inner
            .close_stdin(bounded(), &process_request(process))
            .await
            .map_err(rpc("CloseStdin"))?;
        Ok(())
    }

    /// Resizes the process's terminal.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn resize_tty(
        &self,
        process: &ProcessId,
        rows: u32,
        columns: u32,
    ) -> Result<(), ClientError> {
        let mut req = TtyWinResizeRequest::new();
        req.container_id = process.container_id.clone();
        req.exec_id = process.exec_id.clone();
        req.rows = rows;
        req.columns = columns;
        self.inner
            .tty_win_resize(bounded(), &req)
            .await
            .map_err(rpc("TtyWinResize"))?;
        Ok(())
    }

    /// Configures the guest interface with `interface.hw_addr`: name,
    /// addresses, MTU, up.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn update_interface(&self, interface: Interface) -> Result<Interface, ClientError> {
        let mut req = UpdateInterfaceRequest::new();
        req.interface = Some(interface).into();
        self.inner
            .update_interface(bounded(), &req)
            .await
            .map_err(rpc("UpdateInterface"))
    }

    /// Replaces the guest's routes with `routes`.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn update_routes(&self, routes: Vec<Route>) -> Result<Vec<Route>, ClientError> {
        let mut req = UpdateRoutesRequest::new();
        let mut list = Routes::new();
        list.routes = routes;
        req.routes = Some(list).into();
        let reply = self
            .inner
            .update_routes(bounded(), &req)
            .await
            .map_err(rpc("UpdateRoutes"))?;
        Ok(reply.routes)
    }

    /// Adds permanent neighbour entries to the guest's interfaces.
    ///
    /// # Errors
    ///
    /// As [`AgentClient::check`].
    pub async fn add_neighbours(&self, neighbours: Vec<Neighbour>) -> Result<(), ClientError> {
        let mut req = AddNeighboursRequest::new();
        req.neighbours = neighbours;
        self.inner
            .add_neighbours(bounded(), &req)
            .await
            .map_err(rpc("AddNeighbours"))?;
        Ok(())
    }
}

/// What [`AgentClient::create_sandbox`] sets up.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// The pod's id.
    pub id: String,
    /// The pod's hostname.
    pub hostname: String,
    /// Lines of the pod's `/etc/resolv.conf`.
    pub dns: Vec<String>,
    /// File systems mounted in the guest before any container.
    pub shared_mounts: Vec<Mount>,
    /// One PID namespace for all the pod's containers: the pod's.
    pub shared_pid_namespace: bool,
    /// The pod's namespaced sysctls.
    pub sysctls: std::collections::HashMap<String, String>,
    /// The size of the pod's `/dev/shm` in bytes (see
    /// [`crate::POD_SHM_DIR`]); 0: none.
    pub shm_size: u64,
    /// The MAC of each of the VM's network devices, in the order of
    /// `vmpod-vm`'s `--net` options: the guest's interfaces take them.
    pub interface_macs: Vec<String>,
}

/// What the host hands the guest at CreateSandbox to part from the
/// template it may be restored from: the time its clock steps to, and
/// random bytes for its random pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTimeAndSeed {
    /// The host's `CLOCK_REALTIME` in nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// Random bytes (at most [`crate::MAX_SEED_BYTES`]).
    pub seed: Vec<u8>,
}

/// How many random bytes [`HostTimeAndSeed::now`] sends.
const SEED_BYTES: usize = 32;

impl HostTimeAndSeed {
    /// The host's time now and 32 bytes of its `/dev/urandom`. Should
    /// that be unreadable (a host without devices), the seed is empty and
    /// the guest's virtio-rng alone reseeds it: the agent refuses the
    /// sandbox when that is missing too.
    pub fn now() -> Self {
        use std::io::Read;
        let mut seed = vec![0u8; SEED_BYTES];
        let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed));
        if read.is_err() {
            seed.clear();
        }
        let time_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
            });
        HostTimeAndSeed { time_ns, seed }
    }
}

fn container_request(container_id: &str) -> ContainerRequest {
    let mut req = ContainerRequest::new();
    req.container_id = container_id.to_owned();
    req
}

fn process_request(process: &ProcessId) -> ProcessRequest {
    let mut req = ProcessRequest::new();
    req.container_id = process.container_id.clone();
    req.exec_id = process.exec_id.clone();
    req
}

fn read_request(process: &ProcessId, max: u32) -> ReadStreamRequest {
    let mut req = ReadStreamRequest::new();
    req.container_id = process.container_id.clone();
    req.exec_id = process.exec_id.clone();
    req.len = max;
    req
}
