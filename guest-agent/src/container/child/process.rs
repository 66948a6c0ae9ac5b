// SPDX-License-Identifier: Apache-2.0
//! The process part of the child, shared by a container's init and its
//! exec'd processes: signals, stdio or terminal, limits, user,
//! capabilities, seccomp, cwd, the start gate and execve. Each step runs
//! in the cloned child (see `mod.rs`): system calls on the plan's data, no
//! allocation.

use std::os::fd::RawFd;

use super::{check, close, errno, exit, fail, open, report, write_once, ChildFds, Step};
use crate::container::plan::{CapSets, ProcessPlan};

/// Sets the process up step by step and executes its program.
pub(super) fn run(process: &ProcessPlan, fds: &ChildFds) -> ! {
    reset_signals();
    attach_stdio(process, fds);
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN,
    // which the process may be about to lose: install it now (the rest
    // of the set-up must then be allowed by the profile, as with runc).
    if !process.no_new_privileges {
        install_seccomp(process, fds);
    }
    set_rlimits(process, fds);
    set_oom_score_adj(process, fds);
    if let Some(caps) = &process.caps {
        drop_bounding_set(caps, fds);
        keep_capabilities(true, Step::KeepCapabilities, fds);
    }
    set_user(process, fds);
    if let Some(caps) = &process.caps {
        keep_capabilities(false, Step::ClearKeepCapabilities, fds);
        set_capabilities(caps, fds);
        raise_ambient(caps, fds);
    }
    set_no_new_privileges(process, fds);
    set_umask_and_cwd(process, fds);
    wait_for_start(fds);
    if process.no_new_privileges {
        install_seccomp(process, fds);
    }
    exec(process, fds)
}

/// The program gets default signal dispositions and an empty mask (std
/// ignores SIGPIPE in the agent).
fn reset_signals() {
    // SAFETY: (the three calls) a valid signal and handler; a stack
    // sigset initialised by sigemptyset before sigprocmask reads it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty_set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty_set);
        libc::sigprocmask(libc::SIG_SETMASK, &empty_set, std::ptr::null_mut());
    }
}

/// A new session, with the pipes or the terminal as fds 0 to 2 (the
/// terminal also as the controlling one).
fn attach_stdio(process: &ProcessPlan, fds: &ChildFds) {
    // SAFETY: setsid has no preconditions.
    check(fds, unsafe { libc::setsid() }, Step::Stdio, 0);
    let stdio = if fds.console >= 0 {
        [open_terminal(process, fds); 3]
    } else {
        fds.stdio
    };
    for (target, &fd) in stdio.iter().enumerate() {
        // SAFETY: dup2 on descriptors; a bad one only fails.
        let rc = unsafe { libc::dup2(fd, target as libc::c_int) };
        check(fds, rc, Step::Stdio, target);
    }
    if fds.console >= 0 {
        // SAFETY: TIOCSCTTY takes an integer argument.
        let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
        check(fds, rc, Step::Stdio, 3);
    }
}

/// Opens a terminal in the container's /dev/ptmx, sends its master over
/// the console socket and returns the slave.
fn open_terminal(process: &ProcessPlan, fds: &ChildFds) -> RawFd {
    let master = open(
        c"/dev/ptmx",
        libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        0,
    );
    check(fds, master, Step::Terminal, 0);
    let unlock: libc::c_int = 0;
    let size = libc::winsize {
        ws_row: process.console_size.0,
        ws_col: process.console_size.1,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: (the three ioctls) each argument is what the request takes:
    // a live int, a live winsize, open flags.
    let slave = unsafe {
        let rc = libc::ioctl(master, libc::TIOCSPTLCK, &unlock);
        check(fds, rc, Step::Terminal, 1);
        let rc = libc::ioctl(master, libc::TIOCSWINSZ, &size);
        check(fds, rc, Step::Terminal, 2);
        libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY)
    };
    check(fds, slave, Step::Terminal, 3);
    if !send_fd(fds.console, master) {
        fail(fds, Step::Terminal, 4);
    }
    close(master);
    slave
}

/// Sends `fd` as SCM_RIGHTS with one byte on the socket `socket`.
fn send_fd(socket: RawFd, fd: RawFd) -> bool {
    let mut byte = 0u8;
    let mut iov = libc::iovec {
        iov_base: (&raw mut byte).cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 8];
    // SAFETY: an all-zero msghdr is valid; the fields set next point to
    // live stack buffers, and CMSG_FIRSTHDR/CMSG_DATA stay inside
    // `control`, which has room for one descriptor's header and data.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        libc::sendmsg(socket, &raw const msg, 0) == 1
    }
}

/// `process.rlimits`.
fn set_rlimits(process: &ProcessPlan, fds: &ChildFds) {
    for (i, (resource, limit)) in process.rlimits.iter().enumerate() {
        // SAFETY: a resource number and a live rlimit.
        let rc = unsafe { libc::setrlimit(*resource, limit) };
        check(fds, rc, Step::Rlimit, i);
    }
}

/// `process.oomScoreAdj`, written to /proc/self/oom_score_adj.
fn set_oom_score_adj(process: &ProcessPlan, fds: &ChildFds) {
    if let Some(adj) = &process.oom_score_adj {
        let fd = open(
            c"/proc/self/oom_score_adj",
            libc::O_WRONLY | libc::O_CLOEXEC,
            0,
        );
        check(fds, fd, Step::OomScoreAdj, 0);
        if !write_once(fd, adj) {
            fail(fds, Step::OomScoreAdj, 0);
        }
        close(fd);
    }
}

/// Drops every capability outside the bounding set (EINVAL: one the
/// kernel does not have).
fn drop_bounding_set(caps: &CapSets, fds: &ChildFds) {
    for cap in 0..=caps.last_cap.min(63) {
        if caps.bounding & (1 << cap) != 0 {
            continue;
        }
        // SAFETY: PR_CAPBSET_DROP takes a capability number.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc == -1 && errno() != libc::EINVAL {
            fail(fds, Step::DropBoundingCapability, cap as usize);
        }
    }
}

/// PR_SET_KEEPCAPS: whether the permitted set survives the change of uid.
fn keep_capabilities(keep: bool, step: Step, fds: &ChildFds) {
    // SAFETY: PR_SET_KEEPCAPS takes 0 or 1.
    let rc = unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, libc::c_ulong::from(keep), 0, 0, 0) };
    check(fds, rc, step, 0);
}

/// Groups, gid, uid. Raw system calls, not glibc's wrappers: those
/// broadcast the change to every thread glibc believes the process has,
/// and after a raw clone it still lists the agent's threads, so they wait
/// for answers that never come.
fn set_user(process: &ProcessPlan, fds: &ChildFds) {
    let (uid, gid) = (process.uid, process.gid);
    // SAFETY: (the three calls) setgroups gets the length and address of
    // the plan's list; the others take ids.
    unsafe {
        let rc = libc::syscall(
            libc::SYS_setgroups,
            process.groups.len(),
            process.groups.as_ptr(),
        );
        check(fds, rc as libc::c_int, Step::User, 0);
        let rc = libc::syscall(libc::SYS_setresgid, gid, gid, gid);
        check(fds, rc as libc::c_int, Step::User, 1);
        let rc = libc::syscall(libc::SYS_setresuid, uid, uid, uid);
        check(fds, rc as libc::c_int, Step::User, 2);
    }
}

/// capset with the 64-bit (version 3) layout.
fn set_capabilities(caps: &CapSets, fds: &ChildFds) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| Data {
        effective: (caps.effective >> shift) as u32,
        permitted: (caps.permitted >> shift) as u32,
        inheritable: (caps.inheritable >> shift) as u32,
    };
    let data = [half(0), half(32)];
    // SAFETY: header and data have the kernel's layout for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    check(fds, rc as libc::c_int, Step::SetCapabilities, 0);
}

/// Clears the ambient set and raises the plan's ambient capabilities.
fn raise_ambient(caps: &CapSets, fds: &ChildFds) {
    // SAFETY: PR_CAP_AMBIENT_CLEAR_ALL takes no further arguments.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    for cap in 0..=caps.last_cap.min(63) {
        if caps.ambient & (1 << cap) == 0 {
            continue;
        }
        let raise = libc::PR_CAP_AMBIENT_RAISE;
        // SAFETY: PR_CAP_AMBIENT_RAISE takes a capability number.
        let rc = unsafe { libc::prctl(libc::PR_CAP_AMBIENT, raise, cap as libc::c_ulong, 0, 0) };
        check(fds, rc, Step::RaiseAmbientCapability, cap as usize);
    }
}

/// `process.noNewPrivileges`.
fn set_no_new_privileges(process: &ProcessPlan, fds: &ChildFds) {
    if process.no_new_privileges {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes 1.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        check(fds, rc, Step::NoNewPrivileges, 0);
    }
}

/// The umask, if the spec sets one, and the working directory.
fn set_umask_and_cwd(process: &ProcessPlan, fds: &ChildFds) {
    if let Some(mask) = process.umask {
        // SAFETY: umask takes a mode.
        unsafe { libc::umask(mask) };
    }
    // SAFETY: a NUL-terminated path of the plan.
    let rc = unsafe { libc::chdir(process.cwd.as_ptr()) };
    check(fds, rc, Step::Cwd, 0);
}

/// With a start pipe: reports Ready and waits for the byte of start (an
/// init waits for StartContainer); ends the child if none comes.
fn wait_for_start(fds: &ChildFds) {
    if fds.start < 0 {
        return;
    }
    report(fds.report, Step::Ready, 0, 0);
    let mut byte = 0u8;
    // SAFETY: reads one byte into a live stack byte.
    if unsafe { libc::read(fds.start, (&raw mut byte).cast(), 1) } != 1 {
        // The agent dropped the container before starting it.
        exit();
    }
}

/// Installs the process's seccomp filters.
fn install_seccomp(process: &ProcessPlan, fds: &ChildFds) {
    #[repr(C)]
    struct SockFprog {
        len: libc::c_ushort,
        filter: *const seccompiler::sock_filter,
    }
    for (i, program) in process.seccomp.iter().enumerate() {
        let Ok(len) = libc::c_ushort::try_from(program.len()) else {
            fail(fds, Step::Seccomp, i);
        };
        let fprog = SockFprog {
            len,
            filter: program.as_ptr(),
        };
        // SAFETY: fprog points to `len` instructions of a live program.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &raw const fprog,
            )
        };
        check(fds, rc as libc::c_int, Step::Seccomp, i);
    }
}

/// Closes the agent's descriptors on exec and executes the first of the
/// plan's candidates that exists, as execvp does along PATH; reports the
/// failure if none runs.
fn exec(process: &ProcessPlan, fds: &ChildFds) -> ! {
    // Nothing of the agent's but stdio crosses into the program; the
    // report pipe closes on a successful exec.
    // SAFETY: close_range takes a range and a flag.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let mut last_errno = libc::ENOENT;
    for candidate in &process.exec_candidates {
        // SAFETY: a NUL-terminated path and NULL-terminated arrays of
        // NUL-terminated strings, all owned by the plan.
        unsafe {
            libc::execve(
                candidate.as_ptr(),
                process.args.as_ptr(),
                process.env.as_ptr(),
            )
        };
        let err = errno();
        // Keep looking along PATH only past missing files, as execvp.
        if err != libc::ENOENT && err != libc::ENOTDIR {
            last_errno = err;
            break;
        }
    }
    report(fds.report, Step::Exec, 0, last_errno);
    exit()
}
