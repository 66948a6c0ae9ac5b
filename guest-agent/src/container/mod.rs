// SPDX-License-Identifier: Apache-2.0
//! A container: its root file system mount, cgroup, init process and
//! exec'd processes, with the lifecycle created → running → stopped
//! (and paused). Built the way an OCI runtime builds it, but in the agent:
//! one clone3 per process, straight into its namespaces and cgroup.

pub mod cgroup;
mod child;
pub mod device_cgroup;
pub mod mount_options;
pub mod paths;
pub mod plan;
mod rootfs;
pub mod seccomp;
pub mod spawn;

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::runtime::{LinuxResources, Process as OciProcess, Spec};
use vmpod_agent_api::messages::Mount;

use self::cgroup::{Cgroup, CgroupError};
use self::device_cgroup::DeviceCgroup;
use self::plan::{InitPlan, PlanError, ProcessPlan};
use self::spawn::{ChildSide, SpawnError, Spawned};
use crate::reaper::{Exit, ExitWatch, Reaper};
use crate::stdio::{StdioError, Streams};

/// Longest container or exec id.
const MAX_ID_LEN: usize = 128;

/// Where a container stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Its init waits for start.
    Created,
    /// Its init runs.
    Running,
    /// Frozen.
    Paused,
    /// Its init has exited.
    Stopped,
}

/// Failures of container operations; each names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// A malformed id.
    #[error(
        "{kind} id {id:?} must be 1 to {MAX_ID_LEN} of {}",
        vmpod_sys::id::RULE
    )]
    Id {
        /// "container" or "exec".
        kind: &'static str,
        /// The id.
        id: String,
    },
    /// The spec is not JSON of an OCI spec.
    #[error("the {what} is not valid: {message}")]
    Json {
        /// Which document.
        what: &'static str,
        /// serde's message.
        message: String,
    },
    /// The spec cannot be run.
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The rootfs mount is unusable.
    #[error("rootfs: {0}")]
    Rootfs(String),
    /// A cgroup operation failed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// The device cgroup program could not be loaded or attached.
    #[error(transparent)]
    DeviceCgroup(#[from] device_cgroup::AttachError),
    /// Stdio could not be set up or used.
    #[error(transparent)]
    Stdio(#[from] StdioError),
    /// The process could not be started.
    #[error("starting the process")]
    Spawn(#[from] SpawnError),
    /// The operation does not fit the container's state.
    #[error("container {id} is {status:?}; cannot {verb}")]
    IncorrectStatus {
        /// The container.
        id: String,
        /// Its state.
        status: Status,
        /// The operation.
        verb: &'static str,
    },
    /// No such exec id.
    #[error("container {container} has no process {exec}")]
    NoProcess {
        /// The container.
        container: String,
        /// The exec id.
        exec: String,
    },
    /// An exec id in use.
    #[error("container {container} already has a process {exec}")]
    DuplicateExec {
        /// The container.
        container: String,
        /// The exec id.
        exec: String,
    },
    /// The process has exited.
    #[error("process {0} has already exited")]
    Exited(String),
    /// A signal number out of range.
    #[error("signal {0} is not a valid signal number")]
    Signal(u32),
    /// A system call of the agent failed.
    #[error("{what}")]
    Os {
        /// What the agent did.
        what: String,
        /// The system call's error.
        #[source]
        source: std::io::Error,
    },
}

/// Checks a container or exec id: it becomes a path component and a
/// cgroup name.
///
/// # Errors
///
/// [`ContainerError::Id`].
pub fn validate_id(kind: &'static str, id: &str) -> Result<(), ContainerError> {
    if vmpod_sys::id::is_valid(id, MAX_ID_LEN) {
        Ok(())
    } else {
        Err(ContainerError::Id {
            kind,
            id: id.to_owned(),
        })
    }
}

/// One process of a container.
#[derive(Debug)]
pub struct Process {
    spawned: Spawned,
    streams: Arc<Streams>,
}

impl Process {
    /// The PID, as the agent sees it.
    pub fn pid(&self) -> libc::pid_t {
        self.spawned.pid
    }

    /// Its exit, once it has one.
    pub fn exit_watch(&self) -> ExitWatch {
        self.spawned.exit.clone()
    }

    /// Its exit, if it has ended.
    pub fn exited(&self) -> Option<Exit> {
        *self.spawned.exit.borrow()
    }

    /// Its stdio.
    pub fn streams(&self) -> Arc<Streams> {
        self.streams.clone()
    }

    fn signal(&self, signal: libc::c_int) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal on our pidfd, no siginfo.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.spawned.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A container of the sandbox.
#[derive(Debug)]
pub struct Container {
    id: String,
    dir: PathBuf,
    rootfs: PathBuf,
    cgroup: Cgroup,
    devices: DeviceCgroup,
    init: Process,
    init_process: ProcessPlan,
    start: Option<OwnedFd>,
    execs: HashMap<String, Process>,
    started: bool,
    /// Whether it joined a PID namespace (the pod's) instead of having its
    /// own, whose end would take its other processes with its init.
    shares_pid_namespace: bool,
}

/// Where a container's pieces go.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    /// The agent's state directory (container roots go below).
    pub state_dir: &'a Path,
    /// The sandbox's cgroup (container cgroups go below).
    pub sandbox_cgroup: &'a Path,
    /// The pod's namespaces.
    pub pod_namespaces: &'a plan::PodNamespaces,
    /// The device programs the agent has loaded.
    pub programs: &'a Arc<device_cgroup::Programs>,
}

fn json<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, ContainerError> {
    serde_json::from_slice(bytes).map_err(|err| ContainerError::Json {
        what,
        message: err.to_string(),
    })
}

/// `bytes` as `what`, its device cgroup rules (at the JSON pointer
/// `rules`) checked first, so that a bad type letter is refused naming its
/// field.
fn json_with_rules<T: serde::de::DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    rules: &str,
) -> Result<T, ContainerError> {
    let value: serde_json::Value = json(what, bytes)?;
    device_cgroup::check_rule_types(value.pointer(rules)).map_err(PlanError::from)?;
    serde_json::from_value(value).map_err(|err| ContainerError::Json {
        what,
        message: err.to_string(),
    })
}

/// Loads into `programs` the device program a container whose spec has
/// the `linux` object `linux_json` (JSON) would get, before any such
/// container: a template VM loads its first pod's this way, so that the
/// pods restored from it find the program loaded. Returns the program's
/// length in instructions.
///
/// # Errors
///
/// [`ContainerError`]: bad JSON or device rules, a program the kernel
/// refuses.
pub fn load_device_program(
    linux_json: &[u8],
    programs: &device_cgroup::Programs,
) -> Result<usize, ContainerError> {
    let linux: oci_spec::runtime::Linux =
        json_with_rules("OCI linux object", linux_json, "/resources/devices")?;
    let program = device_cgroup::spec_program(&linux).map_err(PlanError::from)?;
    programs.get_or_load(&program)?;
    Ok(program.len())
}

/// Undoes the set-up steps done so far when a create fails half-way.
#[derive(Default)]
struct Rollback {
    rootfs: Option<PathBuf>,
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
}

impl Rollback {
    fn run(self) {
        if let Some(cgroup) = &self.cgroup {
            let _ = cgroup.kill_all();
            let _ = cgroup.remove();
        }
        if let Some(rootfs) = &self.rootfs {
            unmount(rootfs);
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Detaches the mount at `path` (lazily, so that nothing holds it up).
pub(crate) fn unmount(path: &Path) {
    if let Ok(path) = CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Stdio for a new process: pipes now, or a console socket on which the
/// child sends the terminal it opens.
fn child_stdio(
    terminal: bool,
) -> Result<(Option<Streams>, Option<OwnedFd>, ChildSide), ContainerError> {
    if terminal {
        let (console, child_side) = Streams::console_socket()?;
        Ok((None, Some(console), child_side))
    } else {
        let (streams, child_side) = Streams::pipes()?;
        Ok((Some(streams), None, child_side))
    }
}

/// The agent's streams once the process is cloned.
fn agent_streams(
    pipes: Option<Streams>,
    master: Option<OwnedFd>,
) -> Result<Streams, ContainerError> {
    match (pipes, master) {
        (Some(streams), _) => Ok(streams),
        (None, Some(master)) => Ok(Streams::terminal(master)?),
        (None, None) => Err(ContainerError::Spawn(SpawnError::Vanished)),
    }
}

impl Container {
    /// Creates a container from its OCI spec (JSON) on `rootfs`: mounts
    /// the root, creates the cgroup with the spec's resources and starts
    /// the init process up to the point of exec. A failure leaves nothing
    /// behind.
    ///
    /// # Errors
    ///
    /// [`ContainerError`] naming the spec field or step at fault.
    pub fn create(
        id: &str,
        spec_json: &[u8],
        rootfs: &Mount,
        placement: Placement<'_>,
        reaper: &Reaper,
    ) -> Result<Container, ContainerError> {
        validate_id("container", id)?;
        let spec: Spec = json_with_rules("OCI spec", spec_json, "/linux/resources/devices")?;
        let mut rollback = Rollback::default();
        match Self::build(id, &spec, rootfs, placement, reaper, &mut rollback) {
            Ok(container) => Ok(container),
            Err(err) => {
                rollback.run();
                Err(err)
            }
        }
    }

    fn build(
        id: &str,
        spec: &Spec,
        rootfs: &Mount,
        placement: Placement<'_>,
        reaper: &Reaper,
        rollback: &mut Rollback,
    ) -> Result<Container, ContainerError> {
        let dir = placement.state_dir.join(id);
        let root = dir.join("rootfs");
        std::fs::create_dir_all(&root).map_err(|source| ContainerError::Os {
            what: format!("creating {}", root.display()),
            source,
        })?;
        rollback.dir = Some(dir.clone());
        rootfs::mount(rootfs, &root)?;
        rollback.rootfs = Some(root.clone());
        tracing::debug!("container {id}: root file system mounted");
        let plan = plan::plan_init(spec, &root, placement.pod_namespaces)?;
        tracing::debug!("container {id}: planned");
        let cgroup = Cgroup::create(placement.sandbox_cgroup, id)?;
        rollback.cgroup = Some(cgroup.clone());
        if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            cgroup.apply(resources)?;
        }
        let cgroup_dir = cgroup.open()?;
        let nodes = spec.linux().as_ref().and_then(|l| l.devices().clone());
        let devices =
            DeviceCgroup::attach(&cgroup_dir, &plan.device_program, nodes, placement.programs)?;
        tracing::debug!("container {id}: cgroup ready");
        let (pipes, console, child_side) = child_stdio(plan.process.terminal)?;
        let (spawned, start, master) =
            spawn::spawn_init(&plan, &cgroup_dir, child_side, console.as_ref(), reaper)?;
        let streams = agent_streams(pipes, master)?;
        tracing::debug!("container {id}: init process {} ready", spawned.pid);
        let shares_pid_namespace = plan.join_pid.is_some();
        let InitPlan { process, .. } = plan;
        Ok(Container {
            id: id.to_owned(),
            dir,
            rootfs: root,
            cgroup,
            devices,
            init: Process {
                spawned,
                streams: Arc::new(streams),
            },
            init_process: process,
            start: Some(start),
            execs: HashMap::new(),
            started: false,
            shares_pid_namespace,
        })
    }

    /// The container's state.
    pub fn status(&self) -> Status {
        if self.init.exited().is_some() {
            Status::Stopped
        } else if !self.started {
            Status::Created
        } else if self.cgroup.is_frozen() {
            Status::Paused
        } else {
            Status::Running
        }
    }

    fn incorrect(&self, verb: &'static str) -> ContainerError {
        ContainerError::IncorrectStatus {
            id: self.id.clone(),
            status: self.status(),
            verb,
        }
    }

    /// Lets the init process exec its program.
    ///
    /// # Errors
    ///
    /// [`ContainerError::IncorrectStatus`] unless created; the exec's
    /// failure.
    pub fn start(&mut self) -> Result<(), ContainerError> {
        if self.status() != Status::Created {
            return Err(self.incorrect("start"));
        }
        let start = self.start.take().ok_or_else(|| self.incorrect("start"))?;
        self.started = true;
        spawn::release(&mut self.init.spawned, start, &self.init_process)?;
        tracing::debug!("container {}: started", self.id);
        if self.shares_pid_namespace {
            self.end_with_init();
        }
        Ok(())
    }

    /// Once the init of a container without a PID namespace of its own
    /// ends, ends the container's other processes, as runc does: the kernel
    /// ends a namespace's processes only with its PID 1, and a process left
    /// behind (a `sleep &` of the init's) would hold the container's output
    /// open, so that its exit never reached containerd.
    fn end_with_init(&self) {
        let mut exit = self.init.exit_watch();
        let cgroup = self.cgroup.clone();
        tokio::spawn(async move {
            if exit.wait_for(Option::is_some).await.is_ok() {
                let killed = tokio::task::spawn_blocking(move || cgroup.kill_all()).await;
                if let Ok(Err(err)) = killed {
                    tracing::warn!(
                        "ending the processes its init left: {}",
                        vmpod_sys::error::Chain(&err)
                    );
                }
            }
        });
    }

    /// The process `exec_id` (empty for init).
    ///
    /// # Errors
    ///
    /// [`ContainerError::NoProcess`].
    pub fn process(&self, exec_id: &str) -> Result<&Process, ContainerError> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .ok_or_else(|| ContainerError::NoProcess {
                container: self.id.clone(),
                exec: exec_id.to_owned(),
            })
    }

    /// Runs another process (an OCI process, JSON) in the container's
    /// namespaces and cgroup.
    ///
    /// # Errors
    ///
    /// [`ContainerError`]: the id, the state, the process spec, the spawn.
    pub fn exec(
        &mut self,
        exec_id: &str,
        process_json: &[u8],
        reaper: &Reaper,
    ) -> Result<(), ContainerError> {
        validate_id("exec", exec_id)?;
        if self.status() != Status::Running {
            return Err(self.incorrect("exec"));
        }
        if self.execs.contains_key(exec_id) {
            return Err(ContainerError::DuplicateExec {
                container: self.id.clone(),
                exec: exec_id.to_owned(),
            });
        }
        let process: OciProcess = json("OCI process", process_json)?;
        let mut plan = plan::plan_process(&process)?;
        // The container's seccomp profile holds for every process in it.
        plan.seccomp = self.init_process.seccomp.clone();
        let (pipes, console, child_side) = child_stdio(plan.terminal)?;
        let pid = self.init.pid();
        let open = |name: &str| {
            File::open(format!("/proc/{pid}/ns/{name}")).map_err(|source| ContainerError::Os {
                what: format!("opening the container's {name} namespace"),
                source,
            })
        };
        let mut namespaces = Vec::new();
        for (name, kind) in [
            ("ipc", libc::CLONE_NEWIPC),
            ("uts", libc::CLONE_NEWUTS),
            ("net", libc::CLONE_NEWNET),
            ("cgroup", libc::CLONE_NEWCGROUP),
            // Last: after it, paths are the container's.
            ("mnt", libc::CLONE_NEWNS),
        ] {
            namespaces.push((OwnedFd::from(open(name)?), kind));
        }
        let pid_ns = open("pid")?;
        let cgroup_dir = self.cgroup.open()?;
        let (spawned, master) = spawn::spawn_exec(
            &plan,
            &pid_ns,
            &namespaces,
            &cgroup_dir,
            child_side,
            console.as_ref(),
            reaper,
        )?;
        let streams = agent_streams(pipes, master)?;
        self.execs.insert(
            exec_id.to_owned(),
            Process {
                spawned,
                streams: Arc::new(streams),
            },
        );
        Ok(())
    }

    /// Sends `signal` to one process, or with `all` to every process of
    /// the container.
    ///
    /// # Errors
    ///
    /// [`ContainerError::Signal`], [`ContainerError::Exited`].
    pub fn signal(&self, exec_id: &str, signal: u32, all: bool) -> Result<(), ContainerError> {
        let number = libc::c_int::try_from(signal)
            .ok()
            .filter(|&n| (1..=libc::SIGRTMAX()).contains(&n))
            .ok_or(ContainerError::Signal(signal))?;
        if all {
            // A frozen process only gets SIGKILL once thawed.
            for pid in self.cgroup.pids() {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid as libc::pid_t, number) };
            }
            return Ok(());
        }
        let process = self.process(exec_id)?;
        let name = if exec_id.is_empty() {
            &self.id
        } else {
            exec_id
        };
        if process.exited().is_some() {
            return Err(ContainerError::Exited(name.to_owned()));
        }
        process
            .signal(number)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ESRCH) => ContainerError::Exited(name.to_owned()),
                _ => ContainerError::Os {
                    what: format!("signalling {name}"),
                    source,
                },
            })
    }

    /// Freezes the container.
    ///
    /// # Errors
    ///
    /// [`ContainerError::IncorrectStatus`] unless running; the freezer's
    /// failure.
    pub fn pause(&self) -> Result<(), ContainerError> {
        if self.status() != Status::Running {
            return Err(self.incorrect("pause"));
        }
        Ok(self.cgroup.set_frozen(true)?)
    }

    /// Thaws the container.
    ///
    /// # Errors
    ///
    /// [`ContainerError::IncorrectStatus`] unless paused.
    pub fn resume(&self) -> Result<(), ContainerError> {
        if self.status() != Status::Paused {
            return Err(self.incorrect("resume"));
        }
        Ok(self.cgroup.set_frozen(false)?)
    }

    /// Applies new resources to the running container's cgroup. Device
    /// rules, when given, replace the device program in one step (the
    /// spec's device nodes and the defaults stay allowed).
    ///
    /// # Errors
    ///
    /// [`ContainerError`]: a stopped container, bad JSON or rules, a
    /// refused value.
    pub fn update(&mut self, resources_json: &[u8]) -> Result<(), ContainerError> {
        if self.status() == Status::Stopped {
            return Err(self.incorrect("update"));
        }
        let resources: LinuxResources =
            json_with_rules("OCI resources", resources_json, "/devices")?;
        let program = resources
            .devices()
            .as_deref()
            .map(|rules| self.devices.compile_update(rules))
            .transpose()
            .map_err(PlanError::from)?;
        self.cgroup.apply(&resources)?;
        if let Some(program) = program {
            self.devices.replace(self.cgroup.open()?, &program)?;
        }
        Ok(())
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// Whether any of its processes still runs.
    fn has_live_processes(&self) -> bool {
        self.init.exited().is_none() || self.execs.values().any(|p| p.exited().is_none())
    }

    /// Removes the container: refused while processes run, unless `force`,
    /// which kills them. Unmounts its root, removes its cgroup and state.
    ///
    /// # Errors
    ///
    /// [`ContainerError::IncorrectStatus`] while running without `force`;
    /// [`ContainerError::Cgroup`] if the processes do not go.
    pub fn remove(&self, force: bool) -> Result<(), ContainerError> {
        let alive = self.has_live_processes() || !self.cgroup.pids().is_empty();
        if alive && !force && self.started {
            return Err(self.incorrect("remove (it still runs; use force)"));
        }
        if self.cgroup.is_frozen() {
            self.cgroup.set_frozen(false)?;
        }
        self.cgroup.kill_all()?;
        self.cgroup.remove()?;
        unmount(&self.rootfs);
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ids_outside_the_rule_are_refused() {
        for good in ["a", "c1", "my-container_2.x", &"x".repeat(128)] {
            assert!(validate_id("container", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(129),
        ] {
            assert!(validate_id("container", bad).is_err(), "{bad}");
        }
        assert_eq!(
            validate_id("exec", "a/b").unwrap_err().to_string(),
            "exec id \"a/b\" must be 1 to 128 of [A-Za-z0-9_.-], not starting with '.'"
        );
    }
}
