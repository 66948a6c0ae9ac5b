// SPDX-License-Identifier: Apache-2.0
//! The jail's processes. The jailer (the process its caller waits on) leases
//! the id, joins the cgroup and the network namespace, unshares mount, IPC,
//! UTS and PID namespaces and builds the root; it forks the jail's init
//! (PID 1 of the new PID namespace), which enters the root and forks the
//! VMM (PID 2: not an init, so its signals act as usual), drops its
//! privileges and execs it. Init reaps, and hands the VMM's wait status to
//! the jailer through a pipe; the jailer ends the same way — the same exit
//! code, or killed by the same signal. Each process dies with its parent,
//! so the whole jail dies with the jailer's caller.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::cgroup::{self, CgroupError, CgroupPath};
use crate::ids::{IdError, IdLease, IdRange};
use crate::privileges::{self, Limits, PrivilegeError};
use crate::root::{RootError, RootSpec};
use crate::tap::{self, TapError};

/// Everything a jail is made of.
#[derive(Debug, Clone)]
pub struct JailSpec {
    /// The VMM binary (a host path, opened before the root is entered).
    pub exec_file: PathBuf,
    /// The VMM's arguments (paths as the jail sees them).
    pub args: Vec<OsString>,
    /// The ids to lease the jail's uid/gid from, and where the leases are.
    pub ids: IdRange,
    /// The leases' directory.
    pub lock_dir: PathBuf,
    /// The cgroup to join, if any.
    pub cgroup: Option<CgroupPath>,
    /// The network namespace to enter; none: a new, empty one.
    pub netns: Option<PathBuf>,
    /// Taps of that namespace handed to the jail's uid and gid.
    pub taps: Vec<String>,
    /// The root.
    pub root: RootSpec,
    /// The VMM's resource limits.
    pub limits: Limits,
}

/// Failures of making the jail (the VMM's own failures are its status).
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The VMM binary cannot be opened.
    #[error("{path}")]
    ExecFile {
        /// The binary.
        path: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// No id could be leased.
    #[error("leasing a uid/gid")]
    Id(#[source] IdError),
    /// The cgroup could not be joined.
    #[error("joining the pod's cgroup")]
    Cgroup(#[source] CgroupError),
    /// A namespace could not be entered or made.
    #[error("{0}")]
    Namespace(String, #[source] std::io::Error),
    /// A tap could not be handed to the jail's id.
    #[error("handing a tap to the jail")]
    Tap(#[source] TapError),
    /// The root could not be built or entered.
    #[error("the jail's root")]
    Root(#[source] RootError),
    /// The privileges could not be dropped.
    #[error("dropping privileges")]
    Privileges(#[source] PrivilegeError),
    /// A process of the jail could not be made.
    #[error("{0}")]
    Process(&'static str, #[source] std::io::Error),
}

/// How the VMM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it.
    Killed(i32),
}

/// Runs the VMM in the jail `spec` describes and returns how it ended. The
/// lease is released and the root's mount point removed (if the jailer made
/// it) before this returns; the cgroup is left to the caller, who may share
/// it (the shim does).
///
/// # Errors
/// [`JailError`] naming the step that failed before the VMM ran.
pub fn run(spec: &JailSpec) -> Result<Ended, JailError> {
    let exec = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(&spec.exec_file)
        .map_err(|source| JailError::ExecFile {
            path: spec.exec_file.display().to_string(),
            source,
        })?;
    let netns = spec
        .netns
        .as_ref()
        .map(|path| {
            File::open(path).map_err(|e| {
                JailError::Namespace(format!("network namespace {}", path.display()), e)
            })
        })
        .transpose()?;
    let made_root = !spec.root.dir.exists();
    let lease = IdLease::take(spec.ids, &spec.lock_dir).map_err(JailError::Id)?;
    let ended = confine_and_run(spec, &exec, netns.as_ref(), &lease);
    lease.release();
    if made_root {
        let dir = std::ffi::CString::new(spec.root.dir.as_os_str().as_bytes()).ok();
        if let Some(dir) = dir {
            // SAFETY: umount2 with a NUL-terminated path, in the jailer's
            // own mount namespace.
            unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&spec.root.dir);
    }
    ended
}

/// The steps after the lease: cgroup, namespaces, root, the two forks.
fn confine_and_run(
    spec: &JailSpec,
    exec: &File,
    netns: Option<&File>,
    lease: &IdLease,
) -> Result<Ended, JailError> {
    let id = lease.id;
    if let Some(path) = &spec.cgroup {
        cgroup::join(path, std::process::id()).map_err(JailError::Cgroup)?;
    }
    if let Some(namespace) = netns {
        // SAFETY: setns on an open namespace descriptor.
        if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(JailError::Namespace(
                "entering the pod's network namespace".into(),
                std::io::Error::last_os_error(),
            ));
        }
    }
    for name in &spec.taps {
        tap::hand_over(name, id).map_err(JailError::Tap)?;
    }
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWPID;
    if netns.is_none() {
        // No pod network: a namespace of its own, with loopback only (its
        // sockets are Unix sockets with paths, which cross namespaces).
        flags |= libc::CLONE_NEWNET;
    }
    // SAFETY: unshare with flags; the jailer is single-threaded.
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(JailError::Namespace(
            "unsharing the mount, IPC, UTS, PID (and network) namespaces".into(),
            std::io::Error::last_os_error(),
        ));
    }
    if let Some(dir) = spec.root.dir.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| JailError::Process("making the root's parent", e))?;
    }
    if !spec.root.dir.exists() {
        std::fs::create_dir(&spec.root.dir)
            .map_err(|e| JailError::Process("making the root's directory", e))?;
    }
    spec.root.build().map_err(JailError::Root)?;
    let (status_read, status_write) = pipe()?;
    // SAFETY: the jailer is single-threaded; the child only runs this
    // crate's code and ends with _exit.
    match unsafe { libc::fork() } {
        -1 => Err(JailError::Process("fork", std::io::Error::last_os_error())),
        0 => {
            drop(status_read);
            // Only the jailer holds the lease: killed, it frees the id at
            // once, and whoever waited for it may remove the file.
            // SAFETY: closes the child's copy of the lease's descriptor; the
            // child ends with _exit, which runs no destructor that would
            // close it again.
            unsafe { libc::close(lease.file().as_raw_fd()) };
            let code = match init(spec, exec, id, status_write) {
                Ok(()) => 0,
                Err(err) => {
                    eprintln!("vmpod-jailer: error: {}", vmpod_sys::error::chain(&err));
                    1
                }
            };
            // SAFETY: ends the child without running the jailer's destructors.
            unsafe { libc::_exit(code) }
        }
        init_pid => {
            drop(status_write);
            wait_for_init(init_pid, status_read)
        }
    }
}

/// A close-on-exec pipe.
fn pipe() -> Result<(File, File), JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(JailError::Process("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just made and are owned here only.
    Ok(unsafe {
        (
            File::from(OwnedFd::from_raw_fd(fds[0])),
            File::from(OwnedFd::from_raw_fd(fds[1])),
        )
    })
}

/// The jailer's wait: init ends after the VMM; its report is the VMM's
/// wait status (none: init failed before the VMM ran, and said why).
fn wait_for_init(init_pid: libc::pid_t, mut report: File) -> Result<Ended, JailError> {
    let mut status = [0u8; 4];
    let reported = report.read_exact(&mut status).is_ok();
    let init_status = wait(init_pid)?;
    if !reported {
        return Ok(match init_status {
            Ended::Exited(0) => Ended::Exited(1),
            other => other,
        });
    }
    Ok(decode(i32::from_ne_bytes(status)))
}

/// waitpid(2) for `pid`, through interruptions.
fn wait(pid: libc::pid_t) -> Result<Ended, JailError> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into `status`.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(decode(status));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(JailError::Process("waitpid", err));
        }
    }
}

fn decode(status: i32) -> Ended {
    if libc::WIFSIGNALED(status) {
        Ended::Killed(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    }
}

/// The jail's init (PID 1): enters the root, forks the VMM, reaps every
/// process until the VMM ends, and reports its raw wait status.
fn init(spec: &JailSpec, exec: &File, id: u32, mut report: File) -> Result<(), JailError> {
    privileges::die_with_parent(None).map_err(JailError::Privileges)?;
    if peer_closed(&report) {
        // The jailer died before the parent-death signal was armed.
        return Err(JailError::Process(
            "the jailer ended",
            std::io::ErrorKind::BrokenPipe.into(),
        ));
    }
    spec.root.enter().map_err(JailError::Root)?;
    let hostname = b"vmpod";
    // SAFETY: sethostname reads `hostname.len()` bytes, in the jail's UTS
    // namespace.
    unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    let argv = c_strings(&spec.exec_file, &spec.args)?;
    // SAFETY: init is single-threaded; the child drops privileges and
    // execs, or _exits.
    let vmm = match unsafe { libc::fork() } {
        -1 => return Err(JailError::Process("fork", std::io::Error::last_os_error())),
        0 => {
            let err = exec_vmm(spec, exec, id, &argv);
            eprintln!("vmpod-jailer: error: {}", vmpod_sys::error::chain(&err));
            // SAFETY: ends the child without running init's destructors.
            unsafe { libc::_exit(1) }
        }
        vmm => vmm,
    };
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == vmm {
            let _ = report.write_all(&status.to_ne_bytes());
            return Ok(());
        }
        if pid == -1 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(JailError::Process(
                "waitpid",
                std::io::Error::last_os_error(),
            ));
        }
    }
}

/// Whether the reading end of the pipe `writer` writes to is closed.
fn peer_closed(writer: &File) -> bool {
    let mut poll = libc::pollfd {
        fd: writer.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, without waiting.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready == 1 && poll.revents & libc::POLLERR != 0
}

/// The VMM's argv: its name, then the arguments.
fn c_strings(exec: &std::path::Path, args: &[OsString]) -> Result<Vec<CString>, JailError> {
    let nul = |_| {
        JailError::Process(
            "an argument holds a NUL byte",
            std::io::ErrorKind::InvalidInput.into(),
        )
    };
    let name = exec.file_name().unwrap_or(exec.as_os_str());
    std::iter::once(name)
        .chain(args.iter().map(OsString::as_os_str))
        .map(|arg| CString::new(arg.as_bytes()).map_err(nul))
        .collect()
}

/// In the VMM's process: limits, privileges, then `execveat` of the binary
/// opened before the root was entered. Returns only on failure.
fn exec_vmm(spec: &JailSpec, exec: &File, id: u32, argv: &[CString]) -> JailError {
    // SAFETY: getppid has no preconditions (init is PID 1 here).
    let init = unsafe { libc::getppid() };
    if let Err(err) = privileges::set_limits(spec.limits).and_then(|()| privileges::drop_to(id)) {
        return JailError::Privileges(err);
    }
    // After the uid change, which clears the parent-death signal.
    if let Err(err) = privileges::die_with_parent(Some(init)) {
        return JailError::Privileges(err);
    }
    let mut pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    pointers.push(std::ptr::null());
    // Only the VMM's log settings pass into the jail.
    let env_strings: Vec<CString> = ["RUST_LOG", "RUST_BACKTRACE"]
        .iter()
        .filter_map(|name| {
            let value = std::env::var_os(name)?;
            CString::new([name.as_bytes(), b"=", value.as_bytes()].concat()).ok()
        })
        .collect();
    let mut env: Vec<*const libc::c_char> = env_strings.iter().map(|e| e.as_ptr()).collect();
    env.push(std::ptr::null());
    let empty = c"";
    // SAFETY: execveat with a valid descriptor, an empty NUL-terminated path
    // and NULL-terminated argv/envp arrays of live C strings.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exec.as_raw_fd(),
            empty.as_ptr(),
            pointers.as_ptr(),
            env.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    JailError::Process("execveat of the VMM", std::io::Error::last_os_error())
}
