// SPDX-License-Identifier: Apache-2.0
//! The init process's own steps, before the process part: namespaces to
//! join, the mount namespace (mounts, /dev, pivot_root, masked and
//! read-only paths), hostname and sysctls. Each runs in the cloned child
//! (see `mod.rs`): system calls on the plan's data, no allocation.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, RawFd};

use super::{check, close, errno, fail, make_dir, mount, open, write_once, ChildFds, Step};
use crate::container::plan::{InitPlan, MountStep};

/// setns into one namespace, the `index`th of the plan's list.
pub(super) fn join_namespace(fd: RawFd, nstype: libc::c_int, index: usize, fds: &ChildFds) {
    // SAFETY: setns takes a descriptor and a flag.
    let rc = unsafe { libc::setns(fd, nstype) };
    check(fds, rc, Step::JoinNamespace, index);
}

/// Joins the namespaces the spec names by path (not the PID namespace,
/// which the cloning thread joined).
pub(super) fn join_namespaces(plan: &InitPlan, fds: &ChildFds) {
    for (i, (fd, nstype)) in plan.join.iter().enumerate() {
        join_namespace(fd.as_raw_fd(), *nstype, i, fds);
    }
}

/// Makes `/` slave (or as the spec says) so that nothing mounted here
/// reaches the agent's namespace.
pub(super) fn set_root_propagation(plan: &InitPlan, fds: &ChildFds) {
    let rc = mount(c"", c"/", c"", plan.root_propagation, None);
    check(fds, rc, Step::RootPropagation, 0);
}

/// One of the spec's mounts: its mount point, the mount, then a bind
/// mount's own flags and the propagation.
pub(super) fn mount_one(step: &MountStep, i: usize, fds: &ChildFds) {
    for dir in &step.make_dirs {
        if !make_dir(dir) {
            fail(fds, Step::MountPoint, i);
        }
    }
    if step.make_file {
        let fd = open(
            &step.target,
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            0o644,
        );
        check(fds, fd, Step::MountPoint, i);
        close(fd);
    }
    let data = (!step.data.is_empty()).then_some(step.data.as_c_str());
    let rc = mount(&step.source, &step.target, &step.fstype, step.flags, data);
    check(fds, rc, Step::Mount, i);
    if let Some(flags) = step.bind_remount_flags {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | flags;
        let rc = mount(c"", &step.target, c"", flags, None);
        check(fds, rc, Step::BindRemount, i);
    }
    if step.propagation != 0 {
        let rc = mount(c"", &step.target, c"", step.propagation, None);
        check(fds, rc, Step::MountPropagation, i);
    }
}

/// Binds the agent's default devices onto empty files in the container's
/// /dev.
pub(super) fn bind_default_devices(plan: &InitPlan, fds: &ChildFds) {
    for (i, device) in plan.devices.iter().enumerate() {
        let fd = open(
            &device.target,
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
        close(fd);
        let rc = mount(
            &device.bind_source,
            &device.target,
            c"",
            libc::MS_BIND,
            None,
        );
        check(fds, rc, Step::Device, i);
    }
}

/// Makes the nodes of `linux.devices` with their owner and mode.
pub(super) fn make_device_nodes(plan: &InitPlan, fds: &ChildFds) {
    for (i, node) in plan.device_nodes.iter().enumerate() {
        for dir in &node.make_dirs {
            if !make_dir(dir) {
                fail(fds, Step::DeviceNode, i);
            }
        }
        let target = node.target.as_ptr();
        // SAFETY: (the three calls) target is a NUL-terminated path of the
        // plan; the rest are integers.
        unsafe {
            libc::unlink(target);
            check(
                fds,
                libc::mknod(target, node.mode, node.dev),
                Step::DeviceNode,
                i,
            );
            check(
                fds,
                libc::chown(target, node.uid, node.gid),
                Step::DeviceNode,
                i,
            );
            // The mode as given, not as the umask left it (as runc makes it).
            check(
                fds,
                libc::chmod(target, node.mode & 0o7777),
                Step::DeviceNode,
                i,
            );
        }
    }
}

/// The /dev symlinks; an image that already has them keeps its own.
pub(super) fn link_dev(plan: &InitPlan) {
    for (link, target) in &plan.dev_links {
        // SAFETY: two NUL-terminated paths of the plan.
        unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) };
    }
}

/// Sets the UTS namespace's hostname, if the spec gives one.
pub(super) fn set_hostname(plan: &InitPlan, fds: &ChildFds) {
    if let Some(hostname) = &plan.hostname {
        let len = hostname.to_bytes().len();
        // SAFETY: hostname is `len` readable bytes.
        let rc = unsafe { libc::sethostname(hostname.as_ptr(), len) };
        check(fds, rc, Step::Hostname, 0);
    }
}

/// The container's root file system becomes its root.
pub(super) fn pivot_root(plan: &InitPlan, fds: &ChildFds) {
    pivot_into(fds, &plan.rootfs, 0);
}

/// Makes `dir` the root with pivot_root(".", "."): the old root ends up
/// stacked on the new one and is detached at once (as runc does). The four
/// calls report as
/// [`Step::PivotRoot`] from index `first` on. The sandbox's PID holder
/// pivots the same way into its empty root.
pub(super) fn pivot_into(fds: &ChildFds, dir: &CStr, first: usize) {
    // SAFETY: (the four calls) NUL-terminated paths: `dir` and constants.
    unsafe {
        check(fds, libc::chdir(dir.as_ptr()), Step::PivotRoot, first);
        check(
            fds,
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            Step::PivotRoot,
            first + 1,
        );
        check(
            fds,
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            Step::PivotRoot,
            first + 2,
        );
        check(fds, libc::chdir(c"/".as_ptr()), Step::PivotRoot, first + 3);
    }
}

/// Writes `linux.sysctl` under /proc/sys.
pub(super) fn write_sysctls(plan: &InitPlan, fds: &ChildFds) {
    for (i, (path, value)) in plan.sysctls.iter().enumerate() {
        let fd = open(path, libc::O_WRONLY | libc::O_CLOEXEC, 0);
        check(fds, fd, Step::Sysctl, i);
        if !write_once(fd, value) {
            fail(fds, Step::Sysctl, i);
        }
        close(fd);
    }
}

/// Hides `linux.maskedPaths`: a directory under an empty read-only tmpfs,
/// a file under /dev/null. A path that does not exist is left alone.
pub(super) fn mask_paths(plan: &InitPlan, fds: &ChildFds) {
    for (i, path) in plan.masked.iter().enumerate() {
        // SAFETY: an all-zero stat is a valid buffer for stat to fill.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a live buffer.
        if unsafe { libc::stat(path.as_ptr(), &mut stat) } == -1 {
            continue;
        }
        let rc = if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
            mount(c"tmpfs", path, c"tmpfs", libc::MS_RDONLY, None)
        } else {
            mount(c"/dev/null", path, c"", libc::MS_BIND, None)
        };
        check(fds, rc, Step::MaskPath, i);
    }
}

/// Makes `linux.readonlyPaths` read-only bind mounts of themselves; a path
/// that does not exist is left alone.
pub(super) fn make_paths_readonly(plan: &InitPlan, fds: &ChildFds) {
    for (i, path) in plan.readonly.iter().enumerate() {
        if mount(path, path, c"", libc::MS_BIND | libc::MS_REC, None) == -1 {
            if errno() == libc::ENOENT {
                continue;
            }
            fail(fds, Step::ReadonlyPath, i);
        }
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC;
        let rc = mount(path, path, c"", flags, None);
        check(fds, rc, Step::ReadonlyPath, i);
    }
}

/// Remounts the root read-only if `root.readonly` asks for it.
pub(super) fn make_root_readonly(plan: &InitPlan, fds: &ChildFds) {
    if plan.readonly_root {
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
        let rc = mount(c"", c"/", c"", flags, None);
        check(fds, rc, Step::ReadonlyRoot, 0);
    }
}
