// SPDX-License-Identifier: Apache-2.0
//! The cloned child, from clone3 to execve. It runs in a copy of a
//! multi-threaded agent, so it must not allocate or take locks: it only
//! makes system calls on the plan's prepared data, and reports a failure
//! as a fixed-size record on the report pipe (`spawn.rs` turns it into a
//! message).

use std::ffi::CStr;
use std::os::fd::RawFd;

use super::plan::{InitPlan, ProcessPlan};

/// A step of the child's set-up, as reported on failure.
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
    /// Creating a default device.
    Device,
    /// Setting the hostname.
    Hostname,
    /// pivot_root into the root file system.
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
    /// Groups, gid, uid.
    User,
    /// Capabilities.
    Capabilities,
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
    /// The step a record names.
    pub fn from_u32(value: u32) -> Option<Step> {
        const ALL: [Step; 24] = [
            Step::Ready,
            Step::JoinNamespace,
            Step::RootPropagation,
            Step::MountPoint,
            Step::Mount,
            Step::BindRemount,
            Step::MountPropagation,
            Step::Device,
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
            Step::User,
            Step::Capabilities,
            Step::NoNewPrivileges,
            Step::Seccomp,
            Step::Cwd,
            Step::Exec,
        ];
        ALL.get(value as usize).copied()
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

fn fail(fds: &ChildFds, step: Step, index: usize) -> ! {
    report(fds.report, step, index, errno());
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

fn ptr(s: &CStr) -> *const libc::c_char {
    s.as_ptr()
}

/// Sets up a container's init process and runs its program.
pub fn run_init(plan: &InitPlan, fds: &ChildFds) -> ! {
    // SAFETY: (the whole block) every call gets NUL-terminated strings of
    // the plan, which outlives the child, or plain integers.
    unsafe {
        for (i, (fd, nstype)) in plan.join.iter().enumerate() {
            use std::os::fd::AsRawFd;
            check(
                fds,
                libc::setns(fd.as_raw_fd(), *nstype),
                Step::JoinNamespace,
                i,
            );
        }
        let empty = c"";
        check(
            fds,
            libc::mount(
                ptr(empty),
                ptr(c"/"),
                ptr(empty),
                plan.root_propagation,
                std::ptr::null(),
            ),
            Step::RootPropagation,
            0,
        );
        for (i, step) in plan.mounts.iter().enumerate() {
            for dir in &step.make_dirs {
                if libc::mkdir(ptr(dir), 0o755) == -1 && errno() != libc::EEXIST {
                    fail(fds, Step::MountPoint, i);
                }
            }
            if step.make_file {
                let fd = libc::open(
                    ptr(&step.target),
                    libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                    0o644,
                );
                check(fds, fd, Step::MountPoint, i);
                libc::close(fd);
            }
            let data = if step.data.is_empty() {
                std::ptr::null()
            } else {
                step.data.as_ptr().cast()
            };
            check(
                fds,
                libc::mount(
                    ptr(&step.source),
                    ptr(&step.target),
                    ptr(&step.fstype),
                    step.flags,
                    data,
                ),
                Step::Mount,
                i,
            );
            if let Some(flags) = step.bind_remount_flags {
                check(
                    fds,
                    libc::mount(
                        ptr(empty),
                        ptr(&step.target),
                        ptr(empty),
                        libc::MS_BIND | libc::MS_REMOUNT | flags,
                        std::ptr::null(),
                    ),
                    Step::BindRemount,
                    i,
                );
            }
            if step.propagation != 0 {
                check(
                    fds,
                    libc::mount(
                        ptr(empty),
                        ptr(&step.target),
                        ptr(empty),
                        step.propagation,
                        std::ptr::null(),
                    ),
                    Step::MountPropagation,
                    i,
                );
            }
        }
        for (i, device) in plan.devices.iter().enumerate() {
            let fd = libc::open(
                ptr(&device.target),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o666,
            );
            if fd == -1 {
                // No /dev directory in the image and none mounted.
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(fds, Step::Device, i);
            }
            libc::close(fd);
            check(
                fds,
                libc::mount(
                    ptr(&device.bind_source),
                    ptr(&device.target),
                    ptr(empty),
                    libc::MS_BIND,
                    std::ptr::null(),
                ),
                Step::Device,
                i,
            );
        }
        for (i, node) in plan.device_nodes.iter().enumerate() {
            for dir in &node.make_dirs {
                if libc::mkdir(ptr(dir), 0o755) == -1 && errno() != libc::EEXIST {
                    fail(fds, Step::Device, 100 + i);
                }
            }
            libc::unlink(ptr(&node.target));
            check(
                fds,
                libc::mknod(ptr(&node.target), node.mode, node.dev),
                Step::Device,
                100 + i,
            );
            check(
                fds,
                libc::chown(ptr(&node.target), node.uid, node.gid),
                Step::Device,
                100 + i,
            );
            // The mode as given, not as the umask left it (as runc makes it).
            check(
                fds,
                libc::chmod(ptr(&node.target), node.mode & 0o7777),
                Step::Device,
                100 + i,
            );
        }
        for (link, target) in &plan.dev_links {
            // An image that already has them keeps its own.
            libc::symlink(ptr(target), ptr(link));
        }
        if let Some(hostname) = &plan.hostname {
            check(
                fds,
                libc::sethostname(hostname.as_ptr(), hostname.to_bytes().len()),
                Step::Hostname,
                0,
            );
        }
        // pivot_root(".", "."): the old root ends up stacked on the new one
        // and is detached at once (as runc does).
        check(fds, libc::chdir(ptr(&plan.rootfs)), Step::PivotRoot, 0);
        check(
            fds,
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            Step::PivotRoot,
            1,
        );
        check(
            fds,
            libc::umount2(ptr(c"."), libc::MNT_DETACH),
            Step::PivotRoot,
            2,
        );
        check(fds, libc::chdir(ptr(c"/")), Step::PivotRoot, 3);
        // Before /proc/sys may be made read-only.
        for (i, (path, value)) in plan.sysctls.iter().enumerate() {
            let fd = libc::open(ptr(path), libc::O_WRONLY | libc::O_CLOEXEC);
            check(fds, fd, Step::Sysctl, i);
            let len = value.to_bytes().len();
            if libc::write(fd, value.as_ptr().cast(), len) != len as isize {
                fail(fds, Step::Sysctl, i);
            }
            libc::close(fd);
        }
        for (i, path) in plan.masked.iter().enumerate() {
            let mut stat: libc::stat = std::mem::zeroed();
            if libc::stat(ptr(path), &mut stat) == -1 {
                continue;
            }
            let rc = if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::mount(
                    ptr(c"tmpfs"),
                    ptr(path),
                    ptr(c"tmpfs"),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                )
            } else {
                libc::mount(
                    ptr(c"/dev/null"),
                    ptr(path),
                    ptr(empty),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            check(fds, rc, Step::MaskPath, i);
        }
        for (i, path) in plan.readonly.iter().enumerate() {
            if libc::mount(
                ptr(path),
                ptr(path),
                ptr(empty),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) == -1
            {
                if errno() == libc::ENOENT {
                    continue;
                }
                fail(fds, Step::ReadonlyPath, i);
            }
            check(
                fds,
                libc::mount(
                    ptr(path),
                    ptr(path),
                    ptr(empty),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                    std::ptr::null(),
                ),
                Step::ReadonlyPath,
                i,
            );
        }
        if plan.readonly_root {
            check(
                fds,
                libc::mount(
                    ptr(empty),
                    ptr(c"/"),
                    ptr(empty),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ),
                Step::ReadonlyRoot,
                0,
            );
        }
    }
    run_process(&plan.process, fds)
}

/// PID 1 of a sandbox's shared PID namespace: it waits for ever (signals
/// without handlers do not reach a namespace's init) and takes the
/// namespace with it when the agent kills it at DestroySandbox. (No
/// parent-death signal: its parent is the short-lived cloning thread.)
pub fn hold_pid_namespace() -> ! {
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

/// Joins the namespaces of `ns_fds` (an exec into a running container;
/// the PID namespace was joined by the cloning thread), then runs the
/// process.
pub fn run_exec(ns_fds: &[(RawFd, libc::c_int)], process: &ProcessPlan, fds: &ChildFds) -> ! {
    for (i, (fd, nstype)) in ns_fds.iter().enumerate() {
        // SAFETY: setns takes a descriptor and a flag.
        check(
            fds,
            unsafe { libc::setns(*fd, *nstype) },
            Step::JoinNamespace,
            i,
        );
    }
    run_process(process, fds)
}

/// The process part: stdio, limits, user, capabilities, cwd, the start
/// gate, execve.
fn run_process(process: &ProcessPlan, fds: &ChildFds) -> ! {
    // SAFETY: (the whole block) system calls on the plan's prepared data
    // and on descriptors this child owns.
    unsafe {
        // std ignores SIGPIPE in the agent; the program gets the default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty_set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty_set);
        libc::sigprocmask(libc::SIG_SETMASK, &empty_set, std::ptr::null_mut());
        check(fds, libc::setsid(), Step::Stdio, 0);
        let stdio = if fds.console >= 0 {
            [open_terminal(process, fds); 3]
        } else {
            fds.stdio
        };
        for (target, &fd) in stdio.iter().enumerate() {
            check(
                fds,
                libc::dup2(fd, target as libc::c_int),
                Step::Stdio,
                target,
            );
        }
        if fds.console >= 0 {
            check(fds, libc::ioctl(0, libc::TIOCSCTTY, 0), Step::Stdio, 3);
        }
        // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN,
        // which the process may be about to lose: install it now (the rest
        // of the set-up must then be allowed by the profile, as with runc).
        if !process.no_new_privileges {
            install_seccomp(process, fds);
        }
        for (i, (resource, limit)) in process.rlimits.iter().enumerate() {
            check(fds, libc::setrlimit(*resource, limit), Step::Rlimit, i);
        }
        if let Some(adj) = &process.oom_score_adj {
            let fd = libc::open(
                ptr(c"/proc/self/oom_score_adj"),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            check(fds, fd, Step::OomScoreAdj, 0);
            let len = adj.to_bytes().len();
            if libc::write(fd, adj.as_ptr().cast(), len) != len as isize {
                fail(fds, Step::OomScoreAdj, 0);
            }
            libc::close(fd);
        }
        if let Some(caps) = &process.caps {
            for cap in 0..=caps.last_cap.min(63) {
                if caps.bounding & (1 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) == -1
                    && errno() != libc::EINVAL
                {
                    fail(fds, Step::Capabilities, cap as usize);
                }
            }
            // Keep the permitted set across the change of uid.
            check(
                fds,
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
                Step::Capabilities,
                64,
            );
        }
        // Raw system calls, not glibc's wrappers: those broadcast the
        // change to every thread glibc believes the process has, and after
        // a raw clone it still lists the agent's threads, so they wait for
        // answers that never come.
        let groups = libc::syscall(
            libc::SYS_setgroups,
            process.groups.len(),
            process.groups.as_ptr(),
        );
        check(fds, groups as libc::c_int, Step::User, 0);
        let gid = process.gid;
        let rc = libc::syscall(libc::SYS_setresgid, gid, gid, gid);
        check(fds, rc as libc::c_int, Step::User, 1);
        let uid = process.uid;
        let rc = libc::syscall(libc::SYS_setresuid, uid, uid, uid);
        check(fds, rc as libc::c_int, Step::User, 2);
        if let Some(caps) = &process.caps {
            check(
                fds,
                libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
                Step::Capabilities,
                65,
            );
            set_capabilities(caps.effective, caps.permitted, caps.inheritable, fds);
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            for cap in 0..=caps.last_cap.min(63) {
                if caps.ambient & (1 << cap) != 0 {
                    check(
                        fds,
                        libc::prctl(
                            libc::PR_CAP_AMBIENT,
                            libc::PR_CAP_AMBIENT_RAISE,
                            cap as libc::c_ulong,
                            0,
                            0,
                        ),
                        Step::Capabilities,
                        cap as usize,
                    );
                }
            }
        }
        if process.no_new_privileges {
            check(
                fds,
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                Step::NoNewPrivileges,
                0,
            );
        }
        if let Some(mask) = process.umask {
            libc::umask(mask);
        }
        check(fds, libc::chdir(ptr(&process.cwd)), Step::Cwd, 0);
        if fds.start >= 0 {
            report(fds.report, Step::Ready, 0, 0);
            let mut byte = 0u8;
            if libc::read(fds.start, (&raw mut byte).cast(), 1) != 1 {
                // The agent dropped the container before starting it.
                libc::_exit(127);
            }
        }
        if process.no_new_privileges {
            install_seccomp(process, fds);
        }
        // Nothing of the agent's but stdio crosses into the program; the
        // report pipe closes on a successful exec.
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        let mut last_errno = libc::ENOENT;
        for candidate in &process.exec_candidates {
            libc::execve(ptr(candidate), process.args.as_ptr(), process.env.as_ptr());
            let err = errno();
            // Keep looking along PATH only past missing files, as execvp.
            if err != libc::ENOENT && err != libc::ENOTDIR {
                last_errno = err;
                break;
            }
        }
        report(fds.report, Step::Exec, 0, last_errno);
        libc::_exit(127)
    }
}

/// Opens a terminal in the container's /dev/ptmx, sends its master over
/// the console socket and returns the slave.
fn open_terminal(process: &ProcessPlan, fds: &ChildFds) -> RawFd {
    // SAFETY: system calls on a constant path, descriptors this child owns
    // and stack buffers that outlive each call.
    unsafe {
        let master = libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        check(fds, master, Step::Terminal, 0);
        let unlock: libc::c_int = 0;
        check(
            fds,
            libc::ioctl(master, libc::TIOCSPTLCK, &unlock),
            Step::Terminal,
            1,
        );
        let size = libc::winsize {
            ws_row: process.console_size.0,
            ws_col: process.console_size.1,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        check(
            fds,
            libc::ioctl(master, libc::TIOCSWINSZ, &size),
            Step::Terminal,
            2,
        );
        let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
        check(fds, slave, Step::Terminal, 3);
        let mut byte = 0u8;
        let mut iov = libc::iovec {
            iov_base: (&raw mut byte).cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), master);
        if libc::sendmsg(fds.console, &raw const msg, 0) != 1 {
            fail(fds, Step::Terminal, 4);
        }
        libc::close(master);
        slave
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

/// capset with the 64-bit (version 3) layout.
fn set_capabilities(effective: u64, permitted: u64, inheritable: u64, fds: &ChildFds) {
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
    let data = [
        Data {
            effective: effective as u32,
            permitted: permitted as u32,
            inheritable: inheritable as u32,
        },
        Data {
            effective: (effective >> 32) as u32,
            permitted: (permitted >> 32) as u32,
            inheritable: (inheritable >> 32) as u32,
        },
    ];
    // SAFETY: header and data have the kernel's layout for version 3.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) };
    check(fds, rc as libc::c_int, Step::Capabilities, 66);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_report_steps_round_trip() {
        for value in 0..24 {
            let step = Step::from_u32(value).unwrap();
            assert_eq!(step as u32, value);
        }
        assert_eq!(Step::from_u32(24), None);
    }
}
