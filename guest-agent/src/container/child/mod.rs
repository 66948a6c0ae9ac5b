// SPDX-License-Identifier: Apache-2.0
//! The cloned child, from clone3 to execve. It runs in a copy of a
//! multi-threaded agent, so it must not allocate or take locks: it only
//! makes system calls on the plan's prepared data, and reports a failure
//! as a fixed-size record on the report pipe (`spawn.rs` turns it into a
//! message).
//!
//! Each set-up step is a function of its own, in `init.rs` (the mount
//! namespace, up to the read-only root) and `process.rs` (the process, up
//! to execve), called in the order below.

mod holder;
mod init;
mod process;

use std::ffi::CStr;
use std::os::fd::RawFd;

pub use self::holder::hold_pod_namespaces;
use super::plan::{InitPlan, ProcessPlan};

/// A step of the child's set-up, as reported on the pipe: the report names
/// the step, and an index into that step's list in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    /// Set-up finished; waiting for start.
    Ready = 0,
    /// Joining a namespace.
    JoinNamespace,
    /// Making `/` slave or private in the new mount namespace.
    RootPropagation,
    /// Creating a mount point.
    MountPoint,
    /// Mounting one of the spec's mounts.
    Mount,
    /// Remounting a bind mount with its flags.
    BindRemount,
    /// Setting a mount's propagation.
    MountPropagation,
    /// Binding a default device (index into the plan's `devices`).
    Device,
    /// Making a node of `linux.devices` (index into `device_nodes`).
    DeviceNode,
    /// Setting the hostname.
    Hostname,
    /// pivot_root into the root file system (index: which of its calls).
    PivotRoot,
    /// Writing a sysctl.
    Sysctl,
    /// Masking a path.
    MaskPath,
    /// Making a path read-only.
    ReadonlyPath,
    /// Making the root read-only.
    ReadonlyRoot,
    /// Attaching stdio or the terminal.
    Stdio,
    /// Opening the terminal and sending its master.
    Terminal,
    /// setrlimit.
    Rlimit,
    /// oom_score_adj.
    OomScoreAdj,
    /// Dropping a capability from the bounding set (index: the capability).
    DropBoundingCapability,
    /// Keeping the permitted capabilities across the change of uid.
    KeepCapabilities,
    /// Groups, gid, uid.
    User,
    /// No longer keeping capabilities across a change of uid.
    ClearKeepCapabilities,
    /// capset of the effective, permitted and inheritable sets.
    SetCapabilities,
    /// Raising an ambient capability (index: the capability).
    RaiseAmbientCapability,
    /// no_new_privs.
    NoNewPrivileges,
    /// Installing the seccomp filters.
    Seccomp,
    /// Changing to the working directory.
    Cwd,
    /// execve of the program.
    Exec,
}

impl Step {
    /// Every step, in the order of their numbers.
    const ALL: [Step; 29] = [
        Step::Ready,
        Step::JoinNamespace,
        Step::RootPropagation,
        Step::MountPoint,
        Step::Mount,
        Step::BindRemount,
        Step::MountPropagation,
        Step::Device,
        Step::DeviceNode,
        Step::Hostname,
        Step::PivotRoot,
        Step::Sysctl,
        Step::MaskPath,
        Step::ReadonlyPath,
        Step::ReadonlyRoot,
        Step::Stdio,
        Step::Terminal,
        Step::Rlimit,
        Step::OomScoreAdj,
        Step::DropBoundingCapability,
        Step::KeepCapabilities,
        Step::User,
        Step::ClearKeepCapabilities,
        Step::SetCapabilities,
        Step::RaiseAmbientCapability,
        Step::NoNewPrivileges,
        Step::Seccomp,
        Step::Cwd,
        Step::Exec,
    ];

    /// The step a record names.
    pub fn from_u32(value: u32) -> Option<Step> {
        Step::ALL.get(value as usize).copied()
    }
}

/// What the child writes to the report pipe: a step (Ready, or the one
/// that failed), an index into the plan's list for that step, and errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Report {
    /// [`Step`] as u32.
    pub step: u32,
    /// Which mount, path or namespace.
    pub index: u32,
    /// errno, 0 for Ready.
    pub errno: i32,
}

impl Report {
    /// The step it names, if the number is one.
    pub fn step(&self) -> Option<Step> {
        Step::from_u32(self.step)
    }
}

/// The report's size on the pipe (a single write below PIPE_BUF is atomic).
pub const REPORT_LEN: usize = std::mem::size_of::<Report>();

/// The child's file descriptors.
#[derive(Debug, Clone, Copy)]
pub struct ChildFds {
    /// Write end of the report pipe (close-on-exec).
    pub report: RawFd,
    /// Read end of the start pipe, or -1 to exec at once.
    pub start: RawFd,
    /// The process's stdin, stdout and stderr; -1 with a terminal.
    pub stdio: [RawFd; 3],
    /// The console socket for a terminal's master, or -1.
    pub console: RawFd,
    /// Report every step done (errno [`PROGRESS`]), for `RUST_LOG=trace`.
    pub trace: bool,
}

/// The errno of a report that only says a step is done.
pub const PROGRESS: i32 = -1;

fn errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn report(fd: RawFd, step: Step, index: usize, errno: i32) {
    let record = Report {
        step: step as u32,
        index: index as u32,
        errno,
    };
    // SAFETY: the record is plain data of REPORT_LEN bytes.
    unsafe { libc::write(fd, (&raw const record).cast(), REPORT_LEN) };
}

/// Reports `step` failed with the current errno and ends the child.
fn fail(fds: &ChildFds, step: Step, index: usize) -> ! {
    report(fds.report, step, index, errno());
    exit()
}

/// Ends the child at once.
fn exit() -> ! {
    // SAFETY: _exit ends the process without running the agent's
    // destructors or atexit handlers, which belong to the parent.
    unsafe { libc::_exit(127) }
}

/// Like `check` in C: fails the step when a call returned -1.
fn check(fds: &ChildFds, rc: libc::c_int, step: Step, index: usize) {
    if rc == -1 {
        fail(fds, step, index);
    }
    if fds.trace {
        report(fds.report, step, index, PROGRESS);
    }
}

/// mount(2); `data` `None` passes no file-system data.
fn mount(
    source: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> libc::c_int {
    let data = data.map_or(std::ptr::null(), |data| data.as_ptr().cast());
    // SAFETY: the strings are NUL-terminated and outlive the call; data
    // is one of them or null.
    unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data,
        )
    }
}

/// open(2) of `path` with a mode for `O_CREAT`.
fn open(path: &CStr, flags: libc::c_int, mode: libc::mode_t) -> libc::c_int {
    // SAFETY: a NUL-terminated path that outlives the call.
    unsafe { libc::open(path.as_ptr(), flags, mode) }
}

/// Closes a descriptor this child opened.
fn close(fd: RawFd) {
    // SAFETY: the descriptor is the child's own and not used afterwards.
    unsafe { libc::close(fd) };
}

/// mkdir(2) with mode 0755; an existing directory is fine.
fn make_dir(path: &CStr) -> bool {
    // SAFETY: a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkdir(path.as_ptr(), 0o755) };
    rc != -1 || errno() == libc::EEXIST
}

/// Writes all of `text` to `fd` in one call, as /proc files take it.
fn write_once(fd: RawFd, text: &CStr) -> bool {
    let len = text.to_bytes().len();
    // SAFETY: text is `len` readable bytes.
    let written = unsafe { libc::write(fd, text.as_ptr().cast(), len) };
    written == len as isize
}

/// Sets up a container's init process and runs its program.
pub fn run_init(plan: &InitPlan, fds: &ChildFds) -> ! {
    init::join_namespaces(plan, fds);
    init::set_root_propagation(plan, fds);
    for (i, step) in plan.mounts.iter().enumerate() {
        init::mount_one(step, i, fds);
    }
    init::bind_default_devices(plan, fds);
    init::make_device_nodes(plan, fds);
    init::link_dev(plan);
    init::set_hostname(plan, fds);
    init::pivot_root(plan, fds);
    // Before /proc/sys may be made read-only.
    init::write_sysctls(plan, fds);
    init::mask_paths(plan, fds);
    init::make_paths_readonly(plan, fds);
    init::make_root_readonly(plan, fds);
    process::run(&plan.process, fds)
}

/// Joins the namespaces of `ns_fds` (an exec into a running container;
/// the PID namespace was joined by the cloning thread), then runs the
/// process.
pub fn run_exec(ns_fds: &[(RawFd, libc::c_int)], process: &ProcessPlan, fds: &ChildFds) -> ! {
    for (i, (fd, nstype)) in ns_fds.iter().enumerate() {
        init::join_namespace(*fd, *nstype, i, fds);
    }
    process::run(process, fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_report_steps_round_trip() {
        for (value, step) in Step::ALL.iter().enumerate() {
            assert_eq!(*step as u32, value as u32);
            assert_eq!(Step::from_u32(value as u32), Some(*step));
        }
        assert_eq!(Step::from_u32(Step::ALL.len() as u32), None);
    }

    #[test]
    fn test_report_names_its_step() {
        let report = Report {
            step: Step::DeviceNode as u32,
            index: 2,
            errno: libc::EPERM,
        };
        assert_eq!(report.step(), Some(Step::DeviceNode));
        let unknown = Report {
            step: u32::MAX,
            ..report
        };
        assert_eq!(unknown.step(), None);
    }
}
