// SPDX-License-Identifier: Apache-2.0
//! The shim v2 process protocol. `start` (one shim per pod: a pod's later
//! containers are sent to the shim already serving it) and `delete` (clean up
//! after a shim that died) go through `containerd-shim`, which also handles
//! containerd ≥ 2.3's bootstrap handshake. Serving is done here, because the
//! crate registers the Task service under its v3 name only and containerd
//! 1.6/1.7 call the v2 name: the same handlers are registered under both.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::api::DeleteResponse;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::bootstrap::BootstrapParams;
use containerd_shim::protos::shim_async::create_task;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Flags, StartOpts};
use protobuf::well_known_types::any::Any;
use protobuf::{Message, MessageField};
use ttrpc::asynchronous::transport::Listener;
use ttrpc::asynchronous::Server;

use crate::config::Config;
use crate::network::PodNetwork;
use crate::pod::{kill_jail_leftovers, tear_down_network, PodDir};
use crate::process::timestamp;
use crate::share::ContainerShare;
use crate::spec;
use crate::task::{TaskService, POD_DIR_FILE};

/// The runtime's name in containerd.
pub const RUNTIME_ID: &str = "io.containerd.vmpod.v2";
/// The Task service names: containerd 2.x's and containerd 1.6/1.7's.
const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";
const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";
/// containerd's status for a task whose shim died (128 + SIGKILL).
const KILLED_STATUS: u32 = 137;

/// The shim as `containerd-shim` drives it.
pub struct VmpodShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

impl std::fmt::Debug for VmpodShim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmpodShim")
            .field("namespace", &self.namespace)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl Shim for VmpodShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut containerd_shim::Config) -> Self {
        VmpodShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        start(opts).await
    }

    /// Cleans up after a shim that is gone: the container's mounts and, with
    /// the pod's last container, its VM and directory.
    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let bundle = std::env::current_dir()
            .map_err(|err| containerd_shim::Error::Other(format!("bundle directory: {err}")))?;
        clean_up_after_shim(&bundle, &self.id)
            .await
            .map_err(|err| containerd_shim::Error::Other(format!("delete {}: {err}", self.id)))?;
        Ok(DeleteResponse {
            exit_status: KILLED_STATUS,
            exited_at: MessageField::some(timestamp(std::time::SystemTime::now())),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let config = Config::load_default().map_err(|err| vmpod_sys::error::chain(&err));
        if let Err(err) = &config {
            tracing::error!("{err}");
        }
        TaskService::new(&self.namespace, config, publisher, self.exit.clone())
    }
}

/// Starts the serving shim of the container's pod, or finds the one that
/// serves it already (the socket address is derived from the pod's id), and
/// returns its address. The working directory is the container's bundle.
///
/// # Errors
/// The bundle's spec cannot be read, or the server cannot be started.
pub async fn start(opts: StartOpts) -> containerd_shim::Result<String> {
    let spec = spec::load(Path::new("."))
        .map_err(|err| containerd_shim::Error::InvalidArgument(err.to_string()))?;
    let pod_id = spec::pod_id(&spec, &opts.id);
    let address = spawn(opts, &pod_id, Vec::new()).await?;
    std::fs::write("address", &address).map_err(|err| {
        containerd_shim::Error::Other(format!("write the bundle's address file: {err}"))
    })?;
    Ok(address)
}

/// `start` as containerd before 2.3 calls it: flags and environment, the
/// runtime options (if any) on stdin, and the bare socket address as the
/// answer — which every such containerd takes for a Task API v2 shim.
///
/// # Errors
/// As [`start`].
pub async fn start_legacy(flags: &Flags, options: &[u8]) -> containerd_shim::Result<String> {
    let extensions = Any::parse_from_bytes(options)
        .ok()
        .filter(|any| !any.type_url.is_empty())
        .into_iter()
        .collect();
    start(StartOpts {
        id: flags.id.clone(),
        publish_binary: flags.publish_binary.clone(),
        address: flags.address.clone(),
        ttrpc_address: std::env::var("TTRPC_ADDRESS").unwrap_or_default(),
        namespace: flags.namespace.clone(),
        debug: flags.debug,
        extensions,
        ..Default::default()
    })
    .await
}

/// Whether `input` (what containerd wrote to `start`'s stdin) is containerd
/// ≥ 2.3's bootstrap message for this shim rather than legacy runtime options.
pub fn is_bootstrap(input: &[u8], flags: &Flags) -> bool {
    BootstrapParams::parse_from_bytes(input)
        .is_ok_and(|params| params.instance_id == flags.id && params.namespace == flags.namespace)
}

/// What a `delete` after a dead shim removes: the container's part of the
/// share (from its record); and when the container is the pod's own or the
/// last with a record (the pod's state, outside the share the guest
/// writes), the VM process and the pod's directory. Retry-safe: a delete
/// that failed part way can be sent again and finishes the job.
///
/// # Errors
/// A mount or directory that could not be removed.
pub async fn clean_up_after_shim(bundle: &Path, container_id: &str) -> std::io::Result<()> {
    let marker = bundle.join(POD_DIR_FILE);
    let Ok(pod_root) = std::fs::read_to_string(&marker) else {
        // The create never got as far as the pod: nothing on the host.
        return Ok(());
    };
    let pod = PodDir {
        root: PathBuf::from(pod_root),
    };
    ContainerShare::new(&pod.root, container_id)
        .remove()
        .map_err(|err| std::io::Error::other(vmpod_sys::error::chain(&err)))?;
    let own = pod
        .root
        .file_name()
        .is_some_and(|name| name == container_id);
    let last = crate::share::layout::recorded_containers(&pod.root)?.is_empty();
    if own || last {
        kill_vmm(&pod);
        kill_jail_leftovers(&pod)?;
        if let Ok(record) = std::fs::read(pod.network_record()) {
            match serde_json::from_slice::<PodNetwork>(&record) {
                Ok(network) => tear_down_network(container_id, Some(&network)).await,
                Err(err) => tracing::warn!(
                    "{}: not a network record: {err}",
                    pod.network_record().display()
                ),
            }
        }
        pod.remove()?;
    }
    std::fs::remove_file(&marker).or_else(|err| match err.kind() {
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(err),
    })
}

/// Kills the pod's `vmpod-vm` if it still runs: the pid file names it (or
/// its jailer, whose death ends the jail), and its command line must name a
/// path in the pod's directory (the pid may be reused).
fn kill_vmm(pod: &PodDir) {
    let Some(pid) = std::fs::read_to_string(pod.vmm_pid_file())
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok())
        .filter(|pid| *pid > 0)
    else {
        return;
    };
    let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        let inside = [pod.root.as_os_str().as_encoded_bytes(), b"/"].concat();
        cmdline.windows(inside.len()).any(|window| window == inside)
    });
    if !ours {
        return;
    }
    // SAFETY: kill(2) on a pid checked just above to be the pod's VMM.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    for _ in 0..100 {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie its (dead) parent's reaper will collect.
        if state.is_empty() || state.split(' ').nth(2) == Some("Z") {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Failures of serving the Task API ([`serve`]).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// containerd's command line is not the shim protocol's.
    #[error(transparent)]
    Flags(containerd_shim::Error),
    /// A file or socket of the shim could not be made or used.
    #[error("{what} {path}")]
    Host {
        /// The operation that failed (bind, create, remove, write...).
        what: &'static str,
        /// The file, directory or socket it failed on.
        path: String,
        /// The system's reason.
        source: std::io::Error,
    },
    /// containerd did not say where its ttrpc service is.
    #[error("TTRPC_ADDRESS is not set (containerd sets it)")]
    NoTtrpcAddress,
    /// containerd's event service could not be reached.
    #[error("containerd's event service at {address}")]
    Events {
        /// The address containerd gave (`TTRPC_ADDRESS`).
        address: String,
        /// Why the publisher could not connect.
        source: containerd_shim::Error,
    },
    /// The ttrpc server of the Task API could not start.
    #[error("serving the Task API")]
    Server(#[source] ttrpc::Error),
    /// The handlers of SIGTERM and SIGINT could not be installed.
    #[error("installing the signal handlers")]
    Signals(#[source] std::io::Error),
}

/// A [`ServeError::Host`] for `what` on `path`, from the io::Error it gets.
fn host_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ServeError {
    let path = path.display().to_string();
    move |source| ServeError::Host { what, path, source }
}

/// Serves the Task API on the socket containerd named (`-socket`) until the
/// last task is deleted and containerd sends Shutdown, or a signal arrives.
///
/// # Errors
/// The flags, the socket or containerd's event service.
pub async fn serve(args: &[OsString]) -> Result<(), ServeError> {
    let flags = containerd_shim::parse(args).map_err(ServeError::Flags)?;
    // Out of containerd's process group: the pod outlives a containerd restart.
    // SAFETY: setsid has no memory effects; failing (already a leader) is fine.
    unsafe { libc::setsid() };
    let mut shim =
        VmpodShim::new(RUNTIME_ID, &flags, &mut containerd_shim::Config::default()).await;
    set_up_logging(flags.debug);

    let socket = PathBuf::from(flags.socket.trim_start_matches("unix://"));
    let Some(listener) = bind(&socket)? else {
        // Another shim of this pod serves there: containerd gets its address.
        std::fs::write("address", &flags.socket)
            .map_err(host_error("write", Path::new("address")))?;
        return Ok(());
    };
    let address = std::env::var("TTRPC_ADDRESS").map_err(|_| ServeError::NoTtrpcAddress)?;
    let publisher = RemotePublisher::new(&address)
        .await
        .map_err(|source| ServeError::Events { address, source })?;
    let service = Arc::new(shim.create_task_service(publisher).await);
    let listener = Listener::try_from(listener).map_err(host_error("listen on", &socket))?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(task_services(service.clone()));
    server.start().await.map_err(ServeError::Server)?;
    // The parent `start` reads our stdout until it closes: we serve.
    // SAFETY: dup2 on the process's own standard descriptors.
    unsafe { libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO) };
    tracing::info!(socket = %socket.display(), "serving");

    let signal = |kind| tokio::signal::unix::signal(kind).map_err(ServeError::Signals);
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    tokio::select! {
        _ = shim.wait() => {}
        _ = terminate.recv() => tracing::info!("SIGTERM"),
        _ = interrupt.recv() => tracing::info!("SIGINT"),
    }
    // A failure is logged; `delete` after the shim removes the rest.
    let _ = service.shut_down_pod().await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The Task service under both names: `containerd-shim` generates it for
/// v3 only, and the v2 messages are the same.
pub fn task_services(service: Arc<TaskService>) -> HashMap<String, ttrpc::asynchronous::Service> {
    let mut services = create_task(service.clone());
    if let Some(task) = create_task(service).remove(TASK_SERVICE_V3) {
        services.insert(TASK_SERVICE_V2.to_owned(), task);
    }
    services
}

/// Binds the shim socket; `None` when a live shim already listens there.
fn bind(socket: &Path) -> Result<Option<std::os::unix::net::UnixListener>, ServeError> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(host_error("create", dir))?;
    }
    match std::os::unix::net::UnixListener::bind(socket) {
        Ok(listener) => Ok(Some(listener)),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(None);
            }
            std::fs::remove_file(socket).map_err(host_error("remove", socket))?;
            let listener = std::os::unix::net::UnixListener::bind(socket)
                .map_err(host_error("bind", socket))?;
            Ok(Some(listener))
        }
        Err(err) => Err(host_error("bind", socket)(err)),
    }
}

/// Logs to the `log` FIFO containerd reads in the bundle directory (or to
/// stderr without one), at the configured level or debug with `-debug`.
fn set_up_logging(debug: bool) {
    let level = if debug {
        "debug".to_owned()
    } else {
        Config::load_default().map_or_else(|_| "info".to_owned(), |config| config.log_level)
    };
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
        .ok();
    if let Some(fifo) = &fifo {
        // Blocking from now on: a slow reader delays a line rather than losing it.
        // SAFETY: fcntl on a descriptor this function owns.
        unsafe { libc::fcntl(fifo.as_raw_fd(), libc::F_SETFL, 0) };
    }
    let writer = LogWriter(Arc::new(Mutex::new(fifo)));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init();
}

/// The log FIFO, or stderr.
#[derive(Debug, Clone)]
struct LogWriter(Arc<Mutex<Option<std::fs::File>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().as_deref_mut() {
            Ok(Some(fifo)) => fifo.write(buf),
            _ => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_delete_after_a_dead_shim_goes_by_the_records_and_can_be_retried() {
        let base = std::env::temp_dir().join(format!("vmpod-shim-cleanup-{}", std::process::id()));
        let pod = PodDir::new(&base.join("state"), "default", "pod1");
        pod.create(crate::share::layout::ShareLimits {
            size_mib: 1,
            inodes: 64,
        })
        .unwrap();
        std::fs::create_dir_all(base.join("root")).unwrap();
        for id in ["pod1", "c2"] {
            let bundle = base.join(id);
            std::fs::create_dir_all(&bundle).unwrap();
            std::fs::write(
                bundle.join(POD_DIR_FILE),
                pod.root.as_os_str().as_encoded_bytes(),
            )
            .unwrap();
            ContainerShare::new(&pod.root, id)
                .mount_rootfs(&[], &base.join("root"), None)
                .unwrap();
        }
        // The guest's view cannot be written; were it, a name there would
        // not keep the pod: the records decide.
        assert!(std::fs::create_dir(pod.shared().join("c3")).is_err());
        clean_up_after_shim(&base.join("c2"), "c2").await.unwrap();
        assert!(pod.mounts().join("pod1/rootfs").is_dir());
        assert!(!pod.mounts().join("c2").exists());
        assert!(!base.join("c2").join(POD_DIR_FILE).exists());
        let stray = pod.mounts().join("pod1/stray");
        std::fs::write(&stray, "").unwrap();
        assert!(clean_up_after_shim(&base.join("pod1"), "pod1")
            .await
            .is_err());
        assert!(base.join("pod1").join(POD_DIR_FILE).exists());
        std::fs::remove_file(&stray).unwrap();
        clean_up_after_shim(&base.join("pod1"), "pod1")
            .await
            .unwrap();
        clean_up_after_shim(&base.join("pod1"), "pod1")
            .await
            .unwrap();
        assert!(!pod.root.exists());
        let base_real = std::fs::canonicalize(&base).unwrap();
        assert!(vmpod_sys::mountinfo::points_below(&base_real)
            .unwrap()
            .is_empty());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[tokio::test]
    async fn test_the_task_api_is_served_under_both_names() {
        // The publisher dials containerd's ttrpc socket at once: a listener
        // stands in for it.
        let socket = std::env::temp_dir().join(format!("vmpod-shim-events-{}", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let publisher = RemotePublisher::new(format!("unix://{}", socket.display()))
            .await
            .unwrap();
        let service = Arc::new(TaskService::new(
            "default",
            Err("no config".into()),
            publisher,
            Arc::new(ExitSignal::default()),
        ));
        let services = task_services(service);
        let mut names: Vec<_> = services.keys().cloned().collect();
        names.sort();
        assert_eq!(names, [TASK_SERVICE_V2, TASK_SERVICE_V3]);
        let methods = |name: &str| {
            let mut methods: Vec<_> = services[name].methods.keys().cloned().collect();
            methods.sort();
            methods
        };
        assert_eq!(methods(TASK_SERVICE_V2), methods(TASK_SERVICE_V3));
        for method in [
            "Create", "Start", "Wait", "Delete", "Exec", "Stats", "Shutdown",
        ] {
            assert!(
                methods(TASK_SERVICE_V2).iter().any(|m| m == method),
                "{method}"
            );
        }
        let _ = std::fs::remove_file(&socket);
    }
}
