// SPDX-License-Identifier: Apache-2.0
//! A pod's VM: its directory on the host, the `vmpod-vm` process, and the
//! connection to the agent inside it. Launching rolls back everything it made
//! when a step fails; the VM dies with the shim (parent-death signal), and the
//! directory is what `delete` finds to clean up after a killed shim.

mod boot;
mod jail;
mod logs;
mod prepare;
mod prune;
mod template;
mod vm_api;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::process::Command;
use tokio::sync::{oneshot, watch};
use vmpod_agent_api::messages::Mount;
use vmpod_agent_api::{AgentClient, SandboxConfig};
use vmpod_jailer::cgroup::{CgroupError, CgroupPath};

use crate::config::Config;
use crate::network::{NetworkError, PodNetwork};
use crate::share::{self, layout::ShareLimits, ShareError};
use crate::sizing::VmSize;
use crate::spec::PodSpec;
use boot::Booted;
use jail::Launch;
use logs::{forward_agent_logs, tail};

pub use jail::{kill_jail_leftovers, CGROUP_RECORD, JAIL_IDS};
pub use prepare::{prepare_template, PrepareError, Prepared, MAX_INTERFACES, PREPARE_NAMESPACE};
pub use template::TemplateError;

/// The guest's vsock CID.
const GUEST_CID: u32 = 3;
/// The host vsock port the agent sends its log lines to.
const AGENT_LOG_PORT: u32 = 1025;
/// The virtio-fs tag of the pod's shared directory.
const SHARE_TAG: &str = "vmpod";
/// Where the agent mounts the shared directory in the guest.
pub const GUEST_SHARE: &str = "/run/vmpod/shared";
/// Between two attempts to reach a booting agent.
const CONNECT_RETRY: Duration = Duration::from_millis(250);
/// How long the VM's shutdown waits for the agent's DestroySandbox: the
/// sandbox's Delete must end well within the 10 s containerd's CRI plugin
/// gives it, however slow the guest.
const DESTROY_GRACE: Duration = Duration::from_secs(4);

/// Failures of a pod's VM.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A host file or directory of the pod could not be made or removed.
    #[error("pod {pod}: {what} {path}")]
    Host {
        /// The pod's id.
        pod: String,
        /// The operation that failed (create, write, listen on, start...).
        what: &'static str,
        /// The file, directory or socket it failed on.
        path: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// The pod's directory is there already: another pod of that id, or leftovers
    /// of one a killed shim left for `delete`.
    #[error("pod {pod}: {path} already exists")]
    Exists {
        /// The pod's id.
        pod: String,
        /// The pod directory found in place.
        path: String,
    },
    /// `vmpod-vm` ended before its agent served.
    #[error("pod {pod}: vmpod-vm exited ({status}) before the agent served: {log}")]
    VmExited {
        /// The pod's id.
        pod: String,
        /// Its exit status, as the OS reported it.
        status: String,
        /// The end of its log or of the guest console.
        log: String,
    },
    /// The shim could not join the pod's cgroup.
    #[error("pod {pod}: joining its cgroup")]
    Cgroup {
        /// The pod's id.
        pod: String,
        /// The cgroup step that failed.
        #[source]
        source: CgroupError,
    },
    /// The agent did not serve within the configured time.
    #[error("pod {pod}: the agent did not serve within {seconds} s (agent-timeout): {log}")]
    Timeout {
        /// The pod's id.
        pod: String,
        /// The configured `agent-timeout`.
        seconds: u64,
        /// The end of the guest console.
        log: String,
    },
    /// The agent answered, but not as this shim needs.
    #[error("pod {pod}")]
    Agent {
        /// The pod's id.
        pod: String,
        /// The failed request and the agent's answer.
        #[source]
        source: vmpod_agent_api::ClientError,
    },
    /// The pod's network could not be set up.
    #[error("pod {pod}")]
    Network {
        /// The pod's id.
        pod: String,
        /// The step of the network's set-up that failed.
        #[source]
        source: NetworkError,
    },
    /// The guest refused its share of the pod's network.
    #[error("pod {pod}: configuring the guest's network")]
    GuestNetwork {
        /// The pod's id.
        pod: String,
        /// The refused request and the agent's answer (its code decides the
        /// launch's).
        #[source]
        source: vmpod_agent_api::ClientError,
    },
    /// The agent speaks another API version.
    #[error("pod {pod}: the agent speaks API version {agent}, this shim {shim}")]
    Version {
        /// The pod's id.
        pod: String,
        /// The API version the agent speaks.
        agent: u32,
        /// The API version this shim speaks ([`API_VERSION`]).
        shim: u32,
    },
}

/// The host side of one pod: `<state-dir>/<namespace>/<pod id>/`.
#[derive(Debug, Clone)]
pub struct PodDir {
    /// The directory.
    pub root: PathBuf,
}

impl PodDir {
    /// The directory of pod `pod_id` in `namespace`.
    pub fn new(state_dir: &Path, namespace: &str, pod_id: &str) -> Self {
        PodDir {
            root: state_dir.join(namespace).join(pod_id),
        }
    }

    /// The VMM's sockets: the only directory of the pod's that a jailed
    /// VMM can write (its jail binds it).
    pub fn sockets(&self) -> PathBuf {
        self.root.join("run")
    }

    /// The VMM's hybrid-vsock socket.
    pub fn vsock(&self) -> PathBuf {
        self.sockets().join("vsock.sock")
    }

    /// `vmpod-vm`'s control socket, when it is booted to become a
    /// template.
    fn api_socket(&self) -> PathBuf {
        self.sockets().join("api.sock")
    }

    /// Where a VM booted to become a template writes its snapshot, before
    /// the shim moves it among the templates.
    fn snapshot(&self) -> PathBuf {
        self.sockets().join("template")
    }

    /// Where the agent's log connections arrive (`<vsock>_<port>`).
    fn log_socket(&self) -> PathBuf {
        self.sockets().join(format!("vsock.sock_{AGENT_LOG_PORT}"))
    }

    /// The host directory shared with the guest over virtio-fs.
    pub fn shared(&self) -> PathBuf {
        self.root.join("shared")
    }

    /// The guest's serial console.
    pub fn console(&self) -> PathBuf {
        self.root.join("console.log")
    }

    /// vmpod-vm's own output.
    fn vmm_log(&self) -> PathBuf {
        self.root.join("vmm.log")
    }

    /// The pod's network as set up (JSON), for `delete` after the shim is
    /// gone.
    pub fn network_record(&self) -> PathBuf {
        self.root.join("network.json")
    }

    /// The VMM's pid, for `delete` after the shim is gone.
    pub fn vmm_pid_file(&self) -> PathBuf {
        self.root.join("vmm.pid")
    }

    /// Where the shim mounts the containers' file systems: host-private;
    /// the guest sees it through [`PodDir::shared`] (see
    /// [`crate::share::layout`]).
    pub fn mounts(&self) -> PathBuf {
        self.root.join(share::layout::MOUNTS_DIR)
    }

    /// Makes the pod's directory (0700, and its missing parents) with its
    /// share (a `mounts/` tmpfs within `limits` and its read-only view
    /// `shared/`) and the VMM's sockets' directory `run/`.
    ///
    /// # Errors
    /// The directory is there already (`AlreadyExists`), or a step of the
    /// share failed (its message names it); nothing is left behind.
    pub fn create(&self, limits: ShareLimits) -> std::io::Result<()> {
        share::layout::create(&self.root, limits).map_err(|err| match err {
            ShareError::Create { source, .. }
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                source
            }
            err => std::io::Error::other(err),
        })?;
        if let Err(err) = std::fs::create_dir(self.sockets()) {
            let _ = self.remove();
            return Err(err);
        }
        Ok(())
    }

    /// Unmounts the pod's share (with every container's mounts) and
    /// removes the directory without crossing a mount; the namespace
    /// directory goes with its last pod. Retry-safe: what is gone already
    /// is success.
    ///
    /// # Errors
    /// A mount that cannot be detached, or a file that cannot be removed.
    pub fn remove(&self) -> std::io::Result<()> {
        share::layout::remove(&self.root).map_err(std::io::Error::other)
    }
}

/// A running pod VM with its agent connected and the sandbox created.
#[derive(Debug)]
pub struct Pod {
    /// The pod's id (its first container's).
    pub id: String,
    /// Its host directory.
    pub dir: PodDir,
    /// The agent.
    pub agent: AgentClient,
    /// The `vmpod-vm` process: what containerd is told is the task's pid.
    pub vmm_pid: u32,
    /// Set once `vmpod-vm` has ended: how.
    pub vm_exit: watch::Receiver<Option<String>>,
    /// Its vCPUs and memory, fixed at boot.
    pub size: VmSize,
    /// Set when the shim stops the VM, so that its end is no surprise.
    pub stopping: Arc<AtomicBool>,
    /// The host tmpfs whose binds are the pod's `/dev/shm` in the guest
    /// (see [`crate::spec::PodShm`]).
    pub shm_source: Option<PathBuf>,
    /// The taps and redirects of the pod's network namespace, if it has one.
    network: Option<PodNetwork>,
    kill: Option<oneshot::Sender<()>>,
}

impl Pod {
    /// Starts the pod VM of `id` in the cgroup of its `spec` (if any) with
    /// the network of its namespace (none: loopback only), waits for its
    /// agent, creates the sandbox (with the spec's hostname and sysctls)
    /// and configures the guest's network. On failure nothing of it
    /// is left: no process, socket, directory, tap or tc filter.
    ///
    /// # Errors
    /// [`PodError`] naming the step.
    pub async fn launch(
        config: &Config,
        namespace: &str,
        id: &str,
        size: VmSize,
        spec: &PodSpec,
    ) -> Result<Pod, PodError> {
        let dir = PodDir::new(&config.state_dir, namespace, id);
        if dir.root.exists() {
            return Err(PodError::Exists {
                pod: id.to_owned(),
                path: dir.root.display().to_string(),
            });
        }
        dir.create(config.share_limits)
            .map_err(host_error(id, "create", &dir.root))?;
        let network = match Self::set_up_network(id, &dir, spec.netns.as_deref()).await {
            Ok(network) => network,
            Err(err) => {
                let _ = dir.remove();
                return Err(err);
            }
        };
        match Self::start(config, id, &dir, size, network.as_ref(), spec).await {
            Ok(Started {
                agent,
                vmm_pid,
                vm_exit,
                kill,
            }) => Ok(Pod {
                id: id.to_owned(),
                dir,
                agent,
                vmm_pid,
                vm_exit,
                size,
                stopping: Arc::new(AtomicBool::new(false)),
                shm_source: spec.shm.as_ref().map(|shm| shm.source.clone()),
                network,
                kill: Some(kill),
            }),
            Err(err) => {
                tear_down_network(id, network.as_ref()).await;
                let _ = dir.remove();
                Err(err)
            }
        }
    }

    /// The taps and redirects of the namespace at `netns`, recorded in the
    /// pod's directory; none without a namespace.
    async fn set_up_network(
        id: &str,
        dir: &PodDir,
        netns: Option<&Path>,
    ) -> Result<Option<PodNetwork>, PodError> {
        let Some(netns) = netns else {
            tracing::info!(
                pod = id,
                "the spec names no network namespace: the pod has loopback only"
            );
            return Ok(None);
        };
        let network = PodNetwork::set_up(netns)
            .await
            .map_err(|source| PodError::Network {
                pod: id.to_owned(),
                source,
            })?;
        tracing::info!(
            pod = id,
            netns = %netns.display(),
            interfaces = network.endpoints.len(),
            routes = network.routes.len(),
            "pod network set up"
        );
        if !network.uncarried_routes.is_empty() {
            tracing::warn!(
                pod = id,
                netns = %netns.display(),
                "routes the guest does not get: {}",
                network.uncarried_routes.join(", ")
            );
        }
        let record = serde_json::to_vec(&network).unwrap_or_default();
        if let Err(err) = std::fs::write(dir.network_record(), record) {
            tear_down_network(id, Some(&network)).await;
            return Err(host_error(id, "write", &dir.network_record())(err));
        }
        Ok(Some(network))
    }

    /// The steps of [`Pod::launch`] after the directory exists. Stops the VM
    /// itself when a later step fails.
    async fn start(
        config: &Config,
        id: &str,
        dir: &PodDir,
        size: VmSize,
        network: Option<&PodNetwork>,
        spec: &PodSpec,
    ) -> Result<Started, PodError> {
        let cgroup = spec.cgroup.as_ref();
        let log_listener =
            listen(&dir.log_socket()).map_err(host_error(id, "listen on", &dir.log_socket()))?;
        tokio::spawn(forward_agent_logs(log_listener, id.to_owned()));
        let launch = PodLaunch {
            config,
            id,
            dir,
            size,
            network,
            cgroup,
            device_rules: &spec.device_rules,
        };
        let Booted { agent, vmm } = boot::boot(launch).await?;
        let guest = GuestShape {
            memory_mib: size.memory_mib,
            network,
        };
        let ready = match create_sandbox(id, &agent, spec, guest).await {
            Ok(()) => {
                tracing::debug!(pod = id, "sandbox created");
                configure_guest_network(id, &agent, network).await
            }
            Err(err) => Err(err),
        };
        match ready {
            Ok(()) => Ok(Started {
                agent,
                vmm_pid: vmm.pid,
                vm_exit: vmm.exit,
                kill: vmm.kill,
            }),
            Err(err) => {
                let _ = vmm.kill.send(());
                let mut exit = vmm.exit;
                let _ = exit.wait_for(Option::is_some).await;
                Err(err)
            }
        }
    }

    /// Stops the VM and removes the pod's directory (and whatever is still
    /// mounted below it). The sandbox is destroyed first when the agent still
    /// answers, so that containers end before their VM.
    ///
    /// Retry-safe: a second call after a failure only removes what is
    /// left of the directory.
    ///
    /// # Errors
    /// The directory could not be removed.
    pub async fn shut_down(&mut self) -> std::io::Result<()> {
        if self.vm_exit.borrow().is_none() {
            let _ = tokio::time::timeout(DESTROY_GRACE, self.agent.destroy_sandbox()).await;
        }
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        let _ = self.vm_exit.wait_for(Option::is_some).await;
        if let Some(network) = self.network.take() {
            tear_down_network(&self.id, Some(&network)).await;
        }
        self.dir.remove()
    }
}

/// Removes the pod network's taps and redirects, logging what fails (the
/// pod's other teardown goes on).
pub async fn tear_down_network(id: &str, network: Option<&PodNetwork>) {
    if let Some(network) = network {
        if let Err(err) = network.tear_down().await {
            tracing::warn!(
                pod = id,
                "tearing down the network: {}",
                vmpod_sys::error::chain(&err)
            );
        }
    }
}

/// A pod's VM as the shim launches it — cold, cold with the API to make
/// a template, or restored: the same pod, directory, size, network and
/// cgroup whichever way.
#[derive(Clone, Copy)]
struct PodLaunch<'a> {
    config: &'a Config,
    id: &'a str,
    dir: &'a PodDir,
    size: VmSize,
    network: Option<&'a PodNetwork>,
    cgroup: Option<&'a CgroupPath>,
    /// The device rules a template made of the VM loads ahead
    /// ([`crate::spec::device_rules`]).
    device_rules: &'a [u8],
}

/// The `vmpod-vm` command line of the pod — through `vmpod-jailer` unless
/// the configuration says `unconfined` — with its kernel, size, console,
/// vsock, share and network, booted or restored as `launch` says; its
/// output goes to the pod's `vmm.log`, and it dies with the shim. (The
/// error is boxed, as [`PodError`] is large.)
fn vmm_command(pod: PodLaunch<'_>, launch: Launch<'_>) -> Result<Command, Box<PodError>> {
    let PodLaunch {
        config,
        id,
        dir,
        size,
        network,
        cgroup,
        ..
    } = pod;
    let host = |what: &'static str, path: &Path| host_error(id, what, path);
    let vmm_log = std::fs::File::create(dir.vmm_log()).map_err(host("create", &dir.vmm_log()))?;
    let vmm_log_err = vmm_log.try_clone().map_err(host("open", &dir.vmm_log()))?;
    let mut command = match &config.jail {
        Some(jail) => {
            // The jail binds the console: it must exist.
            std::fs::File::create(dir.console()).map_err(host("create", &dir.console()))?;
            jail::share_propagates(id, dir)?;
            jail::command(config, jail, dir, size, network, cgroup, launch)
        }
        None => {
            let mut command = Command::new(&config.vmm);
            let template = match launch {
                Launch::Restore(template) => template,
                Launch::Cold | Launch::ColdWithApi => Path::new(""),
            };
            let paths = jail::VmPaths::host(config, dir, template);
            let nets = network.map(PodNetwork::vmm_args).unwrap_or_default();
            command.args(jail::vmm_args(config, size, &paths, nets, launch));
            command
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(vmm_log)
        .stderr(vmm_log_err)
        .kill_on_drop(true);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it makes the VM die with the shim.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(command)
}

/// Moves the shim into the pod's cgroup (if the spec names one), spawns
/// `vmpod-vm` (or its jailer), records its pid in the pod's directory and
/// watches it. When it ends, the shim leaves and removes the cgroup; when
/// it ends unbidden, the end of its log is logged.
fn spawn_vmm(mut command: Command, pod: PodLaunch<'_>) -> Result<Vmm, Box<PodError>> {
    let PodLaunch {
        config,
        id,
        dir,
        cgroup,
        ..
    } = pod;
    let placed = cgroup
        .map(|path| jail::join_pod_cgroup(id, dir, path))
        .transpose()?;
    let started = command.spawn().map_err(host_error(
        id,
        "start",
        config
            .jail
            .as_ref()
            .map_or(&config.vmm, |jail| &jail.jailer),
    ));
    let mut child = match started {
        Ok(child) => child,
        Err(err) => {
            jail::leave_pod_cgroup(id, dir, placed.as_ref());
            return Err(Box::new(err));
        }
    };
    let vmm_pid = child.id().unwrap_or_default();
    std::fs::write(dir.vmm_pid_file(), vmm_pid.to_string()).map_err(host_error(
        id,
        "write",
        &dir.vmm_pid_file(),
    ))?;
    let (exit_tx, exit_rx) = watch::channel(None);
    let (kill_tx, kill_rx) = oneshot::channel::<()>();
    let quiet = Arc::new(AtomicBool::new(false));
    let quiet_end = quiet.clone();
    let (id, dir) = (id.to_owned(), dir.clone());
    let jailed = config.jail.is_some();
    tokio::spawn(async move {
        let (status, bidden) = tokio::select! {
            status = child.wait() => (status, false),
            _ = kill_rx => {
                let _ = child.start_kill();
                (child.wait().await, true)
            }
        };
        let status = match status {
            Ok(status) => status.to_string(),
            Err(err) => format!("cannot wait: {err}"),
        };
        if !bidden && !quiet_end.load(Ordering::SeqCst) {
            // A seccomp kill or a crash says why there.
            tracing::warn!(
                pod = id,
                "vmpod-vm ended ({status}); its log ends: {}",
                tail(&dir.vmm_log()).unwrap_or_default()
            );
        }
        let _ = tokio::task::spawn_blocking(move || {
            jail::leave_pod_cgroup(&id, &dir, placed.as_ref());
            if jailed {
                jail::remove_stale_leases(&id);
            }
        })
        .await;
        let _ = exit_tx.send(Some(status));
    });
    Ok(Vmm {
        pid: vmm_pid,
        exit: exit_rx,
        kill: kill_tx,
        quiet,
    })
}

/// A spawned `vmpod-vm`.
struct Vmm {
    pid: u32,
    /// Set once it has ended: how.
    exit: watch::Receiver<Option<String>>,
    /// Kills it.
    kill: oneshot::Sender<()>,
    /// Set while its unbidden end is its caller's to report (a restore
    /// being tried): the watcher then does not warn.
    quiet: Arc<AtomicBool>,
}

/// Gives the guest's interfaces the addresses and MTU of the namespace's,
/// then its permanent neighbour entries, then its routes.
async fn configure_guest_network(
    id: &str,
    agent: &AgentClient,
    network: Option<&PodNetwork>,
) -> Result<(), PodError> {
    let Some(network) = network else {
        return Ok(());
    };
    let refused = |source| PodError::GuestNetwork {
        pod: id.to_owned(),
        source,
    };
    for interface in network.guest_interfaces() {
        agent.update_interface(interface).await.map_err(refused)?;
    }
    let neighbours = network.guest_neighbours();
    if !neighbours.is_empty() {
        agent.add_neighbours(neighbours).await.map_err(refused)?;
    }
    agent
        .update_routes(network.guest_routes())
        .await
        .map_err(refused)?;
    Ok(())
}

/// A listener on the socket `path`, however deep the pod's directory lies
/// (see `vmpod_sys::unix_socket`).
fn listen(path: &Path) -> std::io::Result<UnixListener> {
    let listener = vmpod_sys::unix_socket::bind(path)?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// A [`PodError::Host`] for `what` on `path`, from the io::Error it gets.
fn host_error(
    pod: &str,
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> PodError {
    let pod = pod.to_owned();
    let path = path.display().to_string();
    move |source| PodError::Host {
        pod,
        what,
        path,
        source,
    }
}

/// What [`Pod::start`] hands to [`Pod::launch`].
struct Started {
    agent: AgentClient,
    vmm_pid: u32,
    vm_exit: watch::Receiver<Option<String>>,
    kill: oneshot::Sender<()>,
}

/// What of the VM CreateSandbox needs to know.
#[derive(Clone, Copy)]
struct GuestShape<'a> {
    /// The VM's memory, which bounds the pod's `/dev/shm`.
    memory_mib: u32,
    /// The pod's network: its taps' MACs, in `--net` order.
    network: Option<&'a PodNetwork>,
}

/// Creates the sandbox in a VM whose agent serves: the pod's hostname and
/// sysctls (its UTS and IPC namespaces', see [`crate::spec::for_guest`]),
/// its `/dev/shm`, within the VM's memory, and the MAC of each of its
/// interfaces (the agent also steps the guest's clock to the host's and
/// reseeds its random pool: a VM restored from a template has the
/// template's).
async fn create_sandbox(
    id: &str,
    agent: &AgentClient,
    spec: &PodSpec,
    guest: GuestShape<'_>,
) -> Result<(), PodError> {
    let mut share = Mount::new();
    share.source = SHARE_TAG.into();
    share.destination = GUEST_SHARE.into();
    share.fstype = "virtiofs".into();
    agent
        .create_sandbox(&SandboxConfig {
            id: id.to_owned(),
            hostname: spec.hostname.clone(),
            dns: Vec::new(),
            shared_mounts: vec![share],
            shared_pid_namespace: false,
            sysctls: spec.sysctls.clone(),
            shm_size: spec
                .shm
                .as_ref()
                .map_or(0, |shm| shm.guest_size(guest.memory_mib)),
            interface_macs: guest.network.map_or_else(Vec::new, |network| {
                network.endpoints.iter().map(|e| e.mac.clone()).collect()
            }),
        })
        .await
        .map_err(|source| PodError::Agent {
            pod: id.to_owned(),
            source,
        })
}
