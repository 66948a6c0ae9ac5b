// SPDX-License-Identifier: Apache-2.0
//! The sandbox: the pod-wide state (hostname, DNS, shared mounts, the
//! pod's `/dev/shm` and cgroup) and its containers. Every API request
//! lands here.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use vmpod_agent_api::messages::Mount;
use vmpod_agent_api::MAX_POD_SHM_BYTES;
use vmpod_sys::error::Chain;

use crate::container::cgroup::{Cgroup, CgroupError};
use crate::container::device_cgroup::Programs;
use crate::container::plan::{plan_pod_sysctls, PodNamespaces};
use crate::container::{unmount, Container, ContainerError, Placement};
use crate::oom::OomTracker;
use crate::reaper::{Exit, ExitWatch, Reaper};
use crate::stdio::Streams;
use crate::template::Warmed;

/// Failures of sandbox requests. Each maps to a ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// CreateSandbox has not been called.
    #[error("no sandbox: call CreateSandbox first")]
    NoSandbox,
    /// CreateSandbox called twice.
    #[error("the sandbox {0} exists already")]
    SandboxExists(String),
    /// An invalid field in the sandbox request.
    #[error("{0}")]
    InvalidSandbox(String),
    /// No container with that id.
    #[error("no container {0}")]
    NoContainer(String),
    /// A container id in use.
    #[error("container {0} exists already")]
    ContainerExists(String),
    /// The container operation failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The sandbox's cgroup failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A system call failed.
    #[error("{what}")]
    Os {
        /// What the agent did.
        what: String,
        /// The system call's error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the agent keeps things.
#[derive(Debug, Clone)]
pub struct SandboxPaths {
    /// Container root file systems go below.
    pub state_dir: PathBuf,
    /// The sandbox's cgroup goes below.
    pub cgroup_root: PathBuf,
}

impl SandboxPaths {
    /// Paths from the command line.
    pub fn new(state_dir: PathBuf, cgroup_root: PathBuf) -> Self {
        SandboxPaths {
            state_dir,
            cgroup_root,
        }
    }
}

/// What CreateSandbox set up.
#[derive(Debug)]
struct Pod {
    id: String,
    cgroup: Cgroup,
    shared_mounts: Vec<PathBuf>,
    /// The pidfd of the holder of the pod's namespaces.
    holder: std::os::fd::OwnedFd,
    /// Where its namespaces are, for containers to join.
    namespaces: PodNamespaces,
}

/// What CreateSandbox sets up.
#[derive(Debug, Clone, Default)]
pub struct PodSettings {
    /// The pod's hostname (its UTS namespace's and the guest's).
    pub hostname: String,
    /// Lines of the pod's resolv.conf.
    pub dns: Vec<String>,
    /// Every new PID namespace asked for is the pod's.
    pub shared_pid_namespace: bool,
    /// Namespaced sysctls, written in the pod's namespaces.
    pub sysctls: HashMap<String, String>,
    /// The size of the pod's `/dev/shm` tmpfs in bytes; 0: none.
    pub shm_size: u64,
}

#[derive(Debug, Default)]
struct State {
    pod: Option<Pod>,
    containers: HashMap<String, Container>,
    oom: OomTracker,
}

/// The agent's one sandbox.
#[derive(Debug)]
pub struct Sandbox {
    paths: SandboxPaths,
    reaper: Arc<Reaper>,
    /// Kept across sandboxes: a template VM's outlive its snapshot.
    programs: Arc<Programs>,
    state: Mutex<State>,
}

/// `path` made from mount(2) pieces, or an error naming it.
fn c_path(value: &str, what: &str) -> Result<std::ffi::CString, SandboxError> {
    std::ffi::CString::new(value)
        .map_err(|_| SandboxError::InvalidSandbox(format!("{what} contains a NUL byte")))
}

impl Sandbox {
    /// A sandbox with no pod yet.
    ///
    /// # Errors
    ///
    /// When the state directory cannot be made.
    pub fn new(paths: SandboxPaths, reaper: Arc<Reaper>) -> Result<Arc<Self>, SandboxError> {
        std::fs::create_dir_all(&paths.state_dir).map_err(|source| SandboxError::Os {
            what: format!("creating {}", paths.state_dir.display()),
            source,
        })?;
        Ok(Arc::new(Sandbox {
            paths,
            reaper,
            programs: Arc::default(),
            state: Mutex::new(State::default()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets up the pod: its cgroup, hostname, shared mounts, `/dev/shm`,
    /// and the holder of its UTS, IPC and PID namespaces with its sysctls.
    ///
    /// # Errors
    ///
    /// [`SandboxError`]: a second sandbox, a bad id, hostname, sysctl,
    /// `/dev/shm` size or mount.
    pub fn create(
        &self,
        id: &str,
        settings: &PodSettings,
        shared_mounts: &[Mount],
    ) -> Result<(), SandboxError> {
        let mut state = self.lock();
        if let Some(pod) = &state.pod {
            return Err(SandboxError::SandboxExists(pod.id.clone()));
        }
        crate::container::validate_id("sandbox", id)?;
        let hostname = settings.hostname.as_str();
        if hostname.len() > 64 {
            return Err(SandboxError::InvalidSandbox(format!(
                "hostname {hostname:?} is longer than 64 bytes"
            )));
        }
        if settings.dns.iter().any(|line| line.contains('\n')) {
            return Err(SandboxError::InvalidSandbox(
                "a dns line contains a newline".into(),
            ));
        }
        let sysctls = plan_pod_sysctls(&settings.sysctls)
            .map_err(|err| SandboxError::InvalidSandbox(err.to_string()))?;
        if settings.shm_size > MAX_POD_SHM_BYTES {
            return Err(SandboxError::InvalidSandbox(format!(
                "shm_size {} is over {MAX_POD_SHM_BYTES} bytes (1 TiB)",
                settings.shm_size
            )));
        }
        let hostname_c = c_path(hostname, "hostname")?;
        self.write_pod_files(hostname, &settings.dns)?;
        let cgroup = Cgroup::create(&self.paths.cgroup_root, &format!("vmpod-{id}"))?;
        cgroup.delegate_controllers();
        let mut mounted = Vec::new();
        let undo = |mounted: &[PathBuf], cgroup: &Cgroup| {
            for path in mounted.iter().rev() {
                unmount(path);
            }
            let _ = cgroup.remove();
        };
        let shm = (settings.shm_size > 0).then(|| self.pod_shm(settings.shm_size));
        for mount in shared_mounts.iter().chain(&shm) {
            match mount_shared(mount) {
                Ok(path) => mounted.push(path),
                Err(err) => {
                    undo(&mounted, &cgroup);
                    return Err(err);
                }
            }
        }
        let (pid, holder, _exit) =
            match crate::container::spawn::spawn_pod_holder(&hostname_c, &sysctls, &self.reaper) {
                Ok(spawned) => spawned,
                Err(err) => {
                    undo(&mounted, &cgroup);
                    return Err(SandboxError::Container(ContainerError::Spawn(err)));
                }
            };
        state.pod = Some(Pod {
            id: id.to_owned(),
            cgroup,
            shared_mounts: mounted,
            holder,
            namespaces: PodNamespaces {
                dir: Some(PathBuf::from(format!("/proc/{pid}/ns"))),
                shared_pid: settings.shared_pid_namespace,
                shm: shm.map(|mount| PathBuf::from(mount.destination)),
            },
        });
        Ok(())
    }

    /// The directory of the pod's shared files (`hostname`, `resolv.conf`),
    /// for containers to bind-mount. Its name cannot be a container id.
    pub fn pod_files_dir(&self) -> PathBuf {
        self.paths.state_dir.join(".sandbox")
    }

    /// The pod's `/dev/shm`: a tmpfs of `size` bytes in the pod files'
    /// directory, writable by all (sticky) as a `/dev/shm` is, with
    /// nothing to run or open as a device on it.
    fn pod_shm(&self, size: u64) -> Mount {
        let mut mount = Mount::new();
        mount.source = "shm".into();
        mount.destination = self.pod_files_dir().join("shm").display().to_string();
        mount.fstype = "tmpfs".into();
        mount.options = ["nosuid", "nodev", "noexec", "mode=1777"]
            .map(str::to_owned)
            .into();
        mount.options.push(format!("size={size}"));
        mount
    }

    fn write_pod_files(&self, hostname: &str, dns: &[String]) -> Result<(), SandboxError> {
        let dir = self.pod_files_dir();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|source| SandboxError::Os {
                what: format!("writing {}", path.display()),
                source,
            })
        };
        std::fs::create_dir_all(&dir).map_err(|source| SandboxError::Os {
            what: format!("creating {}", dir.display()),
            source,
        })?;
        write("hostname", format!("{hostname}\n"))?;
        let mut resolv: String = dns.iter().map(|line| format!("{line}\n")).collect();
        if resolv.is_empty() {
            resolv.push_str("# no DNS configured for this pod\n");
        }
        write("resolv.conf", resolv)
    }

    /// Kills and removes every container, then undoes the pod's set-up.
    pub async fn destroy(self: &Arc<Self>) {
        let sandbox = self.clone();
        let _ = tokio::task::spawn_blocking(move || sandbox.destroy_blocking()).await;
    }

    fn destroy_blocking(&self) {
        let mut state = self.lock();
        for (id, container) in state.containers.drain() {
            if let Err(err) = container.remove(true) {
                tracing::warn!("removing container {id}: {}", Chain(&err));
            }
        }
        if let Some(pod) = state.pod.take() {
            for path in pod.shared_mounts.iter().rev() {
                unmount(path);
            }
            if let Err(err) = pod.cgroup.remove() {
                tracing::warn!("removing the sandbox cgroup: {}", Chain(&err));
            }
            // SAFETY: pidfd_send_signal on our pidfd, no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pod.holder.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            let _ = std::fs::remove_dir_all(self.pod_files_dir());
        }
    }

    /// DestroySandbox.
    ///
    /// # Errors
    ///
    /// [`SandboxError::NoSandbox`].
    pub async fn destroy_checked(self: &Arc<Self>) -> Result<(), SandboxError> {
        if self.lock().pod.is_none() {
            return Err(SandboxError::NoSandbox);
        }
        self.destroy().await;
        Ok(())
    }

    /// Runs `op` on a blocking thread with the state locked.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl FnOnce(&Sandbox, &mut State) -> Result<T, SandboxError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        let sandbox = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = sandbox.lock();
            op(&sandbox, &mut state)
        })
        .await
        .unwrap_or_else(|err| {
            Err(SandboxError::Os {
                what: "agent worker".into(),
                source: std::io::Error::other(err.to_string()),
            })
        })
    }

    /// CreateContainer.
    ///
    /// # Errors
    ///
    /// [`SandboxError`].
    pub async fn create_container(
        self: &Arc<Self>,
        id: String,
        spec: Vec<u8>,
        rootfs: Mount,
    ) -> Result<(), SandboxError> {
        self.blocking(move |sandbox, state| {
            let pod = state.pod.as_ref().ok_or(SandboxError::NoSandbox)?;
            if state.containers.contains_key(&id) {
                return Err(SandboxError::ContainerExists(id));
            }
            let placement = Placement {
                state_dir: &sandbox.paths.state_dir,
                sandbox_cgroup: pod.cgroup.path(),
                pod_namespaces: &pod.namespaces,
                programs: &sandbox.programs,
            };
            let container = Container::create(&id, &spec, &rootfs, placement, &sandbox.reaper)?;
            state.containers.insert(id, container);
            Ok(())
        })
        .await
    }

    /// Runs `op` on the container `id`, on a blocking thread.
    async fn with_container<T: Send + 'static>(
        self: &Arc<Self>,
        id: String,
        op: impl FnOnce(&mut Container, &Reaper) -> Result<T, ContainerError> + Send + 'static,
    ) -> Result<T, SandboxError> {
        self.blocking(move |sandbox, state| {
            let container = state
                .containers
                .get_mut(&id)
                .ok_or(SandboxError::NoContainer(id))?;
            Ok(op(container, &sandbox.reaper)?)
        })
        .await
    }

    /// PrepareTemplate: loads the device program of a container whose
    /// spec has the `linux` object `linux_json`, and makes and removes a
    /// pod's cgroups ([`crate::template`]). Refused once a sandbox exists:
    /// a template holds no pod. Returns the program's length in
    /// instructions and what the cgroups' warm-up saw.
    ///
    /// # Errors
    ///
    /// [`SandboxError`]: a sandbox, bad JSON or rules, a refused program, a
    /// cgroup that could not be made or removed.
    pub async fn prepare_template(
        self: &Arc<Self>,
        linux_json: Vec<u8>,
    ) -> Result<(usize, Warmed), SandboxError> {
        // Under the state's lock: no CreateSandbox comes in between.
        self.blocking(move |sandbox, state| {
            if let Some(pod) = &state.pod {
                return Err(SandboxError::SandboxExists(pod.id.clone()));
            }
            let length = crate::container::load_device_program(&linux_json, &sandbox.programs)?;
            let warmed = crate::template::warm_cgroups(&sandbox.paths.cgroup_root)?;
            Ok((length, warmed))
        })
        .await
    }

    /// StartContainer.
    ///
    /// # Errors
    ///
    /// [`SandboxError`].
    pub async fn start_container(self: &Arc<Self>, id: String) -> Result<(), SandboxError> {
        self.with_container(id, |c, _| c.start()).await
    }

    /// RemoveContainer.
    ///
    /// # Errors
    ///
    /// [`SandboxError`].
    pub async fn remove_container(
        self: &Arc<Self>,
        id: String,
        force: bool,
    ) -> Result<(), SandboxError> {
        self.blocking(move |_, state| {
            let container = state
                .containers
                .get(&id)
                .ok_or_else(|| SandboxError::NoContainer(id.clone()))?;
            // Read before the cgroup goes: an OOM kill of its init is
            // why containerd removes it this soon.
            let oom_kills = container.cgroup().oom_kills();
            container.remove(force)?;
            state.containers.remove(&id);
            state.oom.removed(&id, oom_kills);
            Ok(())
        })
        .await
    }

    /// ExecProcess.
    ///
    /// # Errors
    ///
    /// [`SandboxError`].
    pub async fn exec_process(
        self: &Arc<Self>,
        id: String,
        exec_id: String,
        process: Vec<u8>,
    ) -> Result<(), SandboxError> {
        self.with_container(id, move |c, reaper| c.exec(&exec_id, &process, reaper))
            .await
    }

    /// SignalProcess.
    ///
    /// # Errors
    ///
    /// [`SandboxError`].
    pub async fn signal_process(
        self: &Arc<Self>,
        id: String,
        exec_id: String,
        signal: u32,
        all: bool,
    ) -> Result<(), SandboxError> {
        self.with_container(id, move |c, _| c.signal(&exec_id, signal, all))
            .await
    }

    /// PauseContainer.
    ///
    /// # Errors
    ///
    /// [`SandboxError`].
    pub async fn pause_container(self: &Arc<Self>, id: String) -> Result<(), SandboxError> {
        self.with_container(id, |c, _| c.pause()).await
    }

    /// ResumeContainer.
    ///
    /// # Errors
    ///
    /// [`SandboxError`].
    pub async fn resume_container(self: &Arc<Self>, id: String) -> Result<(), SandboxError> {
        self.with_container(id, |c, _| c.resume()).await
    }

    /// UpdateContainer.
    ///
    /// # Errors
    ///
    /// [`SandboxError`].
    pub async fn update_container(
        self: &Arc<Self>,
        id: String,
        resources: Vec<u8>,
    ) -> Result<(), SandboxError> {
        self.with_container(id, move |c, _| c.update(&resources))
            .await
    }

    /// The container's cgroup, for stats and process lists.
    ///
    /// # Errors
    ///
    /// [`SandboxError::NoContainer`].
    pub fn container_cgroup(&self, id: &str) -> Result<Cgroup, SandboxError> {
        let state = self.lock();
        let container = state
            .containers
            .get(id)
            .ok_or_else(|| SandboxError::NoContainer(id.to_owned()))?;
        Ok(container.cgroup().clone())
    }

    /// A process's exit watch and streams.
    ///
    /// # Errors
    ///
    /// [`SandboxError::NoContainer`], [`ContainerError::NoProcess`].
    pub fn process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(ExitWatch, Arc<Streams>), SandboxError> {
        let state = self.lock();
        let container = state
            .containers
            .get(id)
            .ok_or_else(|| SandboxError::NoContainer(id.to_owned()))?;
        let process = container.process(exec_id)?;
        Ok((process.exit_watch(), process.streams()))
    }

    /// Waits until the process has ended.
    ///
    /// # Errors
    ///
    /// [`SandboxError::NoContainer`], [`ContainerError::NoProcess`].
    pub async fn wait_process(&self, id: &str, exec_id: &str) -> Result<Exit, SandboxError> {
        let (mut exit, _) = self.process(id, exec_id)?;
        loop {
            if let Some(status) = *exit.borrow_and_update() {
                return Ok(status);
            }
            if exit.changed().await.is_err() {
                // The reaper is gone: only at shutdown.
                return Err(SandboxError::Os {
                    what: "waiting".into(),
                    source: std::io::Error::other("the agent is shutting down"),
                });
            }
        }
    }

    /// The next container with an OOM kill the shim was not told of
    /// (see [`OomTracker`]), if any.
    pub fn next_oom(&self) -> Option<String> {
        let mut state = self.lock();
        let counts: Vec<(String, u64)> = state
            .containers
            .iter()
            .map(|(id, c)| (id.clone(), c.cgroup().oom_kills()))
            .collect();
        state.oom.next(counts)
    }
}

/// Mounts one of the sandbox's shared file systems.
fn mount_shared(mount: &Mount) -> Result<PathBuf, SandboxError> {
    let target = Path::new(&mount.destination);
    if !target.is_absolute() {
        return Err(SandboxError::InvalidSandbox(format!(
            "shared mount destination {:?} is not an absolute path",
            mount.destination
        )));
    }
    std::fs::create_dir_all(target).map_err(|source| SandboxError::Os {
        what: format!("creating {}", target.display()),
        source,
    })?;
    let options = crate::container::mount_options::MountOptions::parse(&mount.options);
    let (fstype, flags) = match mount.fstype.as_str() {
        "bind" => ("", libc::MS_BIND | libc::MS_REC | options.flags),
        "" => {
            return Err(SandboxError::InvalidSandbox(format!(
                "shared mount on {} has no type",
                mount.destination
            )))
        }
        other => (other, options.flags),
    };
    let source = c_path(&mount.source, "shared mount source")?;
    let target_c = c_path(&mount.destination, "shared mount destination")?;
    let fstype_c = c_path(fstype, "shared mount type")?;
    let data = c_path(&options.data, "shared mount options")?;
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype_c.as_ptr(),
            flags,
            if options.data.is_empty() {
                std::ptr::null()
            } else {
                data.as_ptr().cast()
            },
        )
    };
    if rc != 0 {
        return Err(SandboxError::InvalidSandbox(format!(
            "mounting {} ({}) on {}: {}",
            mount.source,
            mount.fstype,
            mount.destination,
            std::io::Error::last_os_error()
        )));
    }
    Ok(target.to_path_buf())
}
