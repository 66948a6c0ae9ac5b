// SPDX-License-Identifier: Apache-2.0
//! The holder of a sandbox's namespaces — UTS, IPC and PID, whose hostname
//! and sysctls it sets first — and PID 1 of the PID one. Every container sharing the
//! pod's PID namespace sees it as /proc/1, so nothing of the agent's must be reachable through
//! it: it keeps none of the agent's descriptors, its root is an empty
//! read-only tmpfs in a mount namespace of its own (so /proc/1/root and
//! /proc/1/cwd lead nowhere), it is not dumpable (only CAP_SYS_PTRACE
//! opens its /proc files), and it runs in seccomp's strict mode (read,
//! write, exit), so a process that does trace it cannot make it do
//! anything for it.

use std::ffi::{CStr, CString};
use std::os::fd::RawFd;

use super::{check, close, fail, mount, open, report, write_once, ChildFds, Step};

/// Sets the pod's `hostname` (if any) and writes its `sysctls` (paths
/// under /proc/sys, values) in its namespaces, confines the holder,
/// reports Ready and waits for ever: in a read on a pipe whose write end
/// it holds itself (pause(2) is not allowed in strict mode), its orphaned
/// children reaped by the kernel. The agent ends it with SIGKILL at
/// DestroySandbox.
pub fn hold_pod_namespaces(fds: &ChildFds, hostname: &CStr, sysctls: &[(CString, CString)]) -> ! {
    close_all_but(fds.report);
    if !hostname.is_empty() {
        let name = hostname.to_bytes();
        // SAFETY: pointer and length of a live string.
        let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        check(fds, rc, Step::Hostname, 0);
    }
    for (i, (path, value)) in sysctls.iter().enumerate() {
        let fd = open(path, libc::O_WRONLY | libc::O_CLOEXEC, 0);
        check(fds, fd, Step::Sysctl, i);
        if !write_once(fd, value) {
            fail(fds, Step::Sysctl, i);
        }
        close(fd);
    }
    empty_root(fds);
    reset_signals(fds);
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    check(fds, rc, Step::Seccomp, 0);
    let mut wait = [-1 as RawFd; 2];
    // SAFETY: pipe2 fills two descriptors.
    let rc = unsafe { libc::pipe2(wait.as_mut_ptr(), 0) };
    check(fds, rc, Step::Seccomp, 1);
    // SAFETY: prctl with integer arguments; after it, only read, write
    // and exit are allowed.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_STRICT as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    check(fds, rc, Step::Seccomp, 2);
    report(fds.report, Step::Ready, 0, 0);
    let mut byte = 0u8;
    loop {
        // SAFETY: a one-byte read into a live byte.
        unsafe { libc::read(wait[0], (&raw mut byte).cast(), 1) };
    }
}

/// Drops the signal handlers inherited from the agent (its runtime's and
/// glibc's own): one running in strict mode makes a system call it may
/// not and kills the holder, and with it every process of the pod's PID
/// namespace. With none, a signal sent from inside the namespace to its
/// PID 1 is ignored. SIGCHLD is ignored outright: orphans of the pod's
/// containers become the holder's children, and strict mode has no wait,
/// so the kernel reaps them (the pause container's job under runc) instead
/// of each staying a zombie for the pod's life. Raw `rt_sigaction`: glibc
/// refuses to touch its own signals (32, 33).
fn reset_signals(fds: &ChildFds) {
    /// The kernel's `struct sigaction` on x86_64 and aarch64.
    #[repr(C)]
    struct KernelSigaction {
        handler: libc::sighandler_t,
        flags: libc::c_ulong,
        restorer: usize,
        mask: u64,
    }
    for signal in 1..=libc::SIGRTMAX() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        let action = KernelSigaction {
            handler: if signal == libc::SIGCHLD {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            },
            flags: 0,
            restorer: 0,
            mask: 0,
        };
        // SAFETY: rt_sigaction reads a live struct of the kernel's layout
        // and the size of its mask; no old action is asked for.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                signal,
                &raw const action,
                std::ptr::null_mut::<KernelSigaction>(),
                std::mem::size_of::<u64>(),
            )
        };
        check(fds, rc as libc::c_int, Step::Seccomp, 3);
    }
}

/// Closes every descriptor inherited from the agent but `keep`.
fn close_all_but(keep: RawFd) {
    let keep = keep as u32;
    // SAFETY: close_range takes a range and flags.
    unsafe {
        if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, keep - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
    }
}

/// A private mount namespace whose root is an empty read-only tmpfs,
/// mounted on /dev (a directory every root has) and pivoted into; the
/// agent's root is detached.
fn empty_root(fds: &ChildFds) {
    let rc = mount(c"", c"/", c"", libc::MS_REC | libc::MS_PRIVATE, None);
    check(fds, rc, Step::RootPropagation, 0);
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let rc = mount(
        c"tmpfs",
        c"/dev",
        c"tmpfs",
        flags,
        Some(c"size=4k,mode=0500"),
    );
    check(fds, rc, Step::PivotRoot, 0);
    super::init::pivot_into(fds, c"/dev", 1);
}
