// SPDX-License-Identifier: Apache-2.0
//! Cloning a container process: clone3 straight into its cgroup, with a
//! pidfd, from a thread of its own (which first joins the PID namespace of
//! an exec), with the reaper's registry locked so the exit cannot be
//! missed; then the report pipe protocol with the child.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::child::{self, ChildFds, Report, Step, PROGRESS, REPORT_LEN};
use super::plan::{InitPlan, ProcessPlan};
use crate::reaper::{ExitWatch, Reaper};

/// Failures to start a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A pipe, thread or clone failed in the agent.
    #[error("{what}")]
    Os {
        /// What the agent did.
        what: &'static str,
        /// The system call's error.
        #[source]
        source: std::io::Error,
    },
    /// The child reported a failed step.
    #[error("{step}")]
    Child {
        /// The step, with the item it was working on.
        step: String,
        /// The errno it got.
        #[source]
        source: std::io::Error,
    },
    /// The child ended without a report.
    #[error("the process ended during set-up")]
    Vanished,
}

fn os(what: &'static str) -> impl FnOnce(std::io::Error) -> SpawnError {
    move |source| SpawnError::Os { what, source }
}

/// A pipe with both ends close-on-exec.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid out-array of two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors; we own them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A started child: PID, pidfd, its exit and the parent's end of the
/// report pipe.
#[derive(Debug)]
pub struct Spawned {
    /// The PID in the agent's PID namespace.
    pub pid: libc::pid_t,
    /// A pidfd, for signals that cannot hit a recycled PID.
    pub pidfd: OwnedFd,
    /// Its exit.
    pub exit: ExitWatch,
    /// The parent's end of the report pipe.
    pub reports: File,
}

/// What the child runs after the clone.
enum Role<'a> {
    Init(&'a InitPlan),
    PodHolder {
        hostname: &'a CStr,
        sysctls: &'a [(CString, CString)],
    },
    Exec {
        ns: &'a [(RawFd, libc::c_int)],
        process: &'a ProcessPlan,
    },
}

/// clone_args of clone3 (linux/sched.h, version 2 with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

fn clone_into(
    role: &Role<'_>,
    extra_flags: u64,
    cgroup: Option<&File>,
    fds: &ChildFds,
    reaper: &Reaper,
) -> Result<(libc::pid_t, OwnedFd, ExitWatch), SpawnError> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: extra_flags | libc::CLONE_PIDFD as u64 | cgroup.map_or(0, |_| CLONE_INTO_CGROUP),
        pidfd: (&raw mut pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.map_or(0, |dir| dir.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    let mut registry = reaper.lock();
    // SAFETY: args is a valid clone_args of the size given. With no stack
    // the child continues on a copy of this thread's stack, like fork; it
    // only runs `child::run_*`, which make system calls on prepared data.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        match role {
            Role::Init(plan) => child::run_init(plan, fds),
            Role::Exec { ns, process } => child::run_exec(ns, process, fds),
            Role::PodHolder { hostname, sysctls } => {
                child::hold_pod_namespaces(fds, hostname, sysctls)
            }
        }
    }
    if pid < 0 {
        return Err(SpawnError::Os {
            what: "clone3",
            source: std::io::Error::last_os_error(),
        });
    }
    let pid = pid as libc::pid_t;
    let exit = Reaper::register(&mut registry, pid);
    drop(registry);
    // SAFETY: clone3 stored a new pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok((pid, pidfd, exit))
}

/// The child's ends of its stdio, closed in the agent once it is cloned.
#[derive(Debug)]
pub enum ChildSide {
    /// stdin, stdout, stderr of the process.
    Pipes([OwnedFd; 3]),
    /// The socket on which the child sends its terminal's master.
    Console(OwnedFd),
}

impl ChildSide {
    fn stdio(&self) -> [RawFd; 3] {
        match self {
            ChildSide::Pipes(fds) => [0, 1, 2].map(|i| fds[i].as_raw_fd()),
            ChildSide::Console(_) => [-1; 3],
        }
    }

    fn console(&self) -> RawFd {
        match self {
            ChildSide::Pipes(_) => -1,
            ChildSide::Console(fd) => fd.as_raw_fd(),
        }
    }
}

/// Receives the terminal master the child sends on the console socket;
/// `None` if the child ended first.
fn receive_master(console: &OwnedFd) -> Result<Option<OwnedFd>, SpawnError> {
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&raw mut byte).cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the fields set below point to
    // live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    loop {
        // SAFETY: msg describes valid buffers for recvmsg to fill.
        let n = unsafe { libc::recvmsg(console.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n == 0 {
            return Ok(None);
        }
        if n > 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(SpawnError::Os {
                what: "receiving the terminal",
                source: err,
            });
        }
    }
    // SAFETY: msg was filled by recvmsg; CMSG_FIRSTHDR and CMSG_DATA stay
    // within msg_control, whose length the kernel set.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return Ok(None);
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
        Ok(Some(OwnedFd::from_raw_fd(fd)))
    }
}

/// Starts a container's init process in its new namespaces, inside
/// `cgroup`. It stops just before exec, until [`release`] is called. With a
/// console socket the terminal's master comes back as well.
///
/// # Errors
///
/// [`SpawnError`]: the failed agent call or the child's failed step.
pub fn spawn_init(
    plan: &InitPlan,
    cgroup: &File,
    stdio: ChildSide,
    console: Option<&OwnedFd>,
    reaper: &Reaper,
) -> Result<(Spawned, OwnedFd, Option<OwnedFd>), SpawnError> {
    let (report_read, report_write) = pipe().map_err(os("creating the report pipe"))?;
    let (start_read, start_write) = pipe().map_err(os("creating the start pipe"))?;
    let fds = ChildFds {
        report: report_write.as_raw_fd(),
        start: start_read.as_raw_fd(),
        stdio: stdio.stdio(),
        console: stdio.console(),
        trace: tracing::enabled!(tracing::Level::TRACE),
    };
    let join_pid = plan.join_pid.as_ref().map(AsRawFd::as_raw_fd);
    let (pid, pidfd, exit) = clone_on_own_thread(
        join_pid,
        &Role::Init(plan),
        plan.clone_flags,
        Some(cgroup),
        &fds,
        reaper,
    )?;
    drop(report_write);
    drop(start_read);
    drop(stdio);
    let master = console.map(receive_master).transpose()?.flatten();
    let mut reports = File::from(report_read);
    match read_report(&mut reports)? {
        Some(report) if report.step() == Some(Step::Ready) => Ok((
            Spawned {
                pid,
                pidfd,
                exit,
                reports,
            },
            start_write,
            master,
        )),
        Some(report) => Err(child_error(&report, Some(plan), None)),
        None => Err(SpawnError::Vanished),
    }
}

/// Lets a process created by [`spawn_init`] exec its program, and waits
/// until it did.
///
/// # Errors
///
/// [`SpawnError::Child`] when the exec failed.
pub fn release(
    spawned: &mut Spawned,
    start: OwnedFd,
    plan: &ProcessPlan,
) -> Result<(), SpawnError> {
    let mut start = File::from(start);
    std::io::Write::write_all(&mut start, &[1]).map_err(os("starting the process"))?;
    match read_report(&mut spawned.reports)? {
        None => Ok(()),
        Some(report) => Err(child_error(&report, None, Some(plan))),
    }
}

/// Starts `process` in the running container whose namespaces are
/// `ns` (PID namespace last, joined by the cloning thread), inside `cgroup`.
///
/// # Errors
///
/// [`SpawnError`]: the failed agent call or the child's failed step.
pub fn spawn_exec(
    process: &ProcessPlan,
    pid_ns: &File,
    ns: &[(OwnedFd, libc::c_int)],
    cgroup: &File,
    stdio: ChildSide,
    console: Option<&OwnedFd>,
    reaper: &Reaper,
) -> Result<(Spawned, Option<OwnedFd>), SpawnError> {
    let (report_read, report_write) = pipe().map_err(os("creating the report pipe"))?;
    let fds = ChildFds {
        report: report_write.as_raw_fd(),
        start: -1,
        stdio: stdio.stdio(),
        console: stdio.console(),
        trace: tracing::enabled!(tracing::Level::TRACE),
    };
    let raw_ns: Vec<(RawFd, libc::c_int)> = ns.iter().map(|(fd, t)| (fd.as_raw_fd(), *t)).collect();
    let (pid, pidfd, exit) = clone_on_own_thread(
        Some(pid_ns.as_raw_fd()),
        &Role::Exec {
            ns: &raw_ns,
            process,
        },
        0,
        Some(cgroup),
        &fds,
        reaper,
    )?;
    drop(report_write);
    drop(stdio);
    let master = console.map(receive_master).transpose()?.flatten();
    let mut reports = File::from(report_read);
    match read_report(&mut reports)? {
        None => Ok((
            Spawned {
                pid,
                pidfd,
                exit,
                reports,
            },
            master,
        )),
        Some(report) => Err(child_error(&report, None, Some(process))),
    }
}

/// Starts the process that holds a sandbox's UTS, IPC and PID namespaces
/// (the PID one's PID 1, which only waits, confined: `child/holder.rs`),
/// having set the pod's `hostname` and written its `sysctls` in them;
/// containers then join them.
///
/// # Errors
///
/// [`SpawnError`]: the clone, or the holder's failed step.
pub fn spawn_pod_holder(
    hostname: &CStr,
    sysctls: &[(CString, CString)],
    reaper: &Reaper,
) -> Result<(libc::pid_t, OwnedFd, ExitWatch), SpawnError> {
    let (report_read, report_write) = pipe().map_err(os("creating the report pipe"))?;
    let fds = ChildFds {
        report: report_write.as_raw_fd(),
        start: -1,
        stdio: [-1; 3],
        console: -1,
        trace: false,
    };
    let flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    let spawned = clone_on_own_thread(
        None,
        &Role::PodHolder { hostname, sysctls },
        flags as u64,
        None,
        &fds,
        reaper,
    )?;
    drop(report_write);
    // The holder keeps its end open (strict mode has no close): one
    // report, then nothing more is read.
    let mut reports = File::from(report_read);
    match read_report(&mut reports)? {
        Some(report) if report.step() == Some(Step::Ready) => Ok(spawned),
        Some(report) if report.step() == Some(Step::Sysctl) => Err(SpawnError::Child {
            step: format!(
                "writing {}",
                sysctls
                    .get(report.index as usize)
                    .map(|(path, _)| path.to_string_lossy())
                    .unwrap_or_default()
            ),
            source: std::io::Error::from_raw_os_error(report.errno),
        }),
        Some(report) => Err(child_error(&report, None, None)),
        None => Err(SpawnError::Vanished),
    }
}

/// Clones on a thread of its own, which first joins the PID namespace
/// `pid_ns` if one is given: setns(CLONE_NEWPID) only changes where the
/// calling thread's children go, and that thread ends right after.
fn clone_on_own_thread(
    pid_ns: Option<RawFd>,
    role: &Role<'_>,
    flags: u64,
    cgroup: Option<&File>,
    fds: &ChildFds,
    reaper: &Reaper,
) -> Result<(libc::pid_t, OwnedFd, ExitWatch), SpawnError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(fd) = pid_ns {
                    set_pid_namespace(fd)?;
                }
                clone_into(role, flags, cgroup, fds, reaper)
            })
            .join()
            .unwrap_or(Err(SpawnError::Vanished))
    })
}

/// Makes this thread's future children members of the PID namespace `fd`.
fn set_pid_namespace(fd: RawFd) -> Result<(), SpawnError> {
    // SAFETY: setns takes a descriptor and a flag; CLONE_NEWPID only
    // changes this thread's namespace for children.
    if unsafe { libc::setns(fd, libc::CLONE_NEWPID) } != 0 {
        return Err(SpawnError::Os {
            what: "joining the PID namespace",
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The next report, or `None` at the end of the pipe (the child exec'd or
/// died). Progress reports are logged and skipped.
fn read_report(reports: &mut File) -> Result<Option<Report>, SpawnError> {
    loop {
        match read_one_report(reports)? {
            Some(report) if report.errno == PROGRESS => {
                tracing::trace!("child: done {:?} #{}", report.step(), report.index);
            }
            other => return Ok(other),
        }
    }
}

fn read_one_report(reports: &mut File) -> Result<Option<Report>, SpawnError> {
    let mut bytes = [0u8; REPORT_LEN];
    let mut got = 0;
    while got < REPORT_LEN {
        match reports.read(&mut bytes[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(SpawnError::Vanished),
            Ok(n) => got += n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(SpawnError::Os {
                    what: "reading the child's report",
                    source,
                })
            }
        }
    }
    let word = |i: usize| u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    Ok(Some(Report {
        step: word(0),
        index: word(4),
        errno: word(8) as i32,
    }))
}

/// The child's report as an error naming what it was doing.
fn child_error(
    report: &Report,
    init: Option<&InitPlan>,
    process: Option<&ProcessPlan>,
) -> SpawnError {
    let process = process.or(init.map(|plan| &plan.process));
    let step = match report.step() {
        Some(step) => describe(step, report.index as usize, init, process),
        None => "setting up the process".to_owned(),
    };
    SpawnError::Child {
        step,
        source: std::io::Error::from_raw_os_error(report.errno),
    }
}

/// What the child was doing at `step` on the `index`th item of its list
/// in the plan.
fn describe(
    step: Step,
    index: usize,
    init: Option<&InitPlan>,
    process: Option<&ProcessPlan>,
) -> String {
    let text = |s: Option<&std::ffi::CString>| {
        s.map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mount_target = || text(init.and_then(|p| p.mounts.get(index)).map(|m| &m.target));
    match step {
        Step::MountPoint => format!("creating mount point {}", mount_target()),
        Step::Mount => format!("mounting {}", mount_target()),
        Step::BindRemount => format!("remounting bind mount {}", mount_target()),
        Step::MountPropagation => format!("setting propagation of {}", mount_target()),
        Step::MaskPath => format!("masking {}", text(init.and_then(|p| p.masked.get(index)))),
        Step::ReadonlyPath => format!(
            "making {} read-only",
            text(init.and_then(|p| p.readonly.get(index)))
        ),
        Step::Device => format!(
            "creating {}",
            text(init.and_then(|p| p.devices.get(index)).map(|d| &d.target))
        ),
        Step::DeviceNode => format!(
            "creating {}",
            text(
                init.and_then(|p| p.device_nodes.get(index))
                    .map(|d| &d.target)
            )
        ),
        Step::Sysctl => format!(
            "writing {}",
            text(
                init.and_then(|p| p.sysctls.get(index))
                    .map(|(path, _)| path)
            )
        ),
        Step::Cwd => format!("changing to cwd {}", text(process.map(|p| &p.cwd))),
        Step::Exec => format!(
            "executing {}",
            text(process.and_then(|p| p.args.strings().first()))
        ),
        Step::JoinNamespace => "joining a namespace".to_owned(),
        Step::RootPropagation => "setting the propagation of /".to_owned(),
        Step::Hostname => "setting the hostname".to_owned(),
        Step::PivotRoot => "pivot_root into the root file system".to_owned(),
        Step::ReadonlyRoot => "making the root read-only".to_owned(),
        Step::Stdio => "attaching stdio".to_owned(),
        Step::Terminal => "opening the terminal in the container".to_owned(),
        Step::Rlimit => "setting rlimits".to_owned(),
        Step::OomScoreAdj => "setting oom_score_adj".to_owned(),
        Step::User => "setting the user and groups".to_owned(),
        Step::DropBoundingCapability
        | Step::KeepCapabilities
        | Step::ClearKeepCapabilities
        | Step::SetCapabilities
        | Step::RaiseAmbientCapability => "setting capabilities".to_owned(),
        Step::NoNewPrivileges => "setting no_new_privs".to_owned(),
        Step::Seccomp => "installing the seccomp filter".to_owned(),
        Step::Ready => "setting up the process".to_owned(),
    }
}
