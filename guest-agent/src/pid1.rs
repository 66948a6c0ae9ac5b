// SPDX-License-Identifier: Apache-2.0
//! What the agent does as the guest's PID 1: the system file systems,
//! options from the kernel command line, power-off at the end.

use std::ffi::CStr;
use std::io;
use std::path::Path;

/// Failures while setting up the guest.
#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    /// A system file system did not mount.
    #[error("cannot mount {fstype} on {target}")]
    Mount {
        /// The file system type.
        fstype: &'static str,
        /// Where.
        target: &'static str,
        /// The kernel's refusal of the mount.
        #[source]
        source: io::Error,
    },
    /// A mount point could not be made.
    #[error("cannot create {path}")]
    MountPoint {
        /// The directory.
        path: &'static str,
        /// The file system's refusal of the directory.
        #[source]
        source: io::Error,
    },
}

/// The system file systems, in mount order: (type, target, flags, data).
const SYSTEM_MOUNTS: [(&CStr, &str, libc::c_ulong, &CStr); 8] = [
    (c"proc", "/proc", NOSUID_NODEV_NOEXEC, c""),
    (c"sysfs", "/sys", NOSUID_NODEV_NOEXEC, c""),
    (c"devtmpfs", "/dev", libc::MS_NOSUID, c"mode=0755"),
    (
        c"devpts",
        "/dev/pts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        c"newinstance,ptmxmode=0666,mode=0620,gid=5",
    ),
    (c"tmpfs", "/dev/shm", NOSUID_NODEV, c"mode=1777"),
    (c"tmpfs", "/run", NOSUID_NODEV, c"mode=0755"),
    (c"tmpfs", "/tmp", NOSUID_NODEV, c"mode=1777"),
    (c"cgroup2", "/sys/fs/cgroup", NOSUID_NODEV_NOEXEC, c""),
];
const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;
const NOSUID_NODEV_NOEXEC: libc::c_ulong = NOSUID_NODEV | libc::MS_NOEXEC;

/// The hostname until the sandbox sets its own.
const DEFAULT_HOSTNAME: &[u8] = b"vmpod";

/// Where the agent's own root goes when it starts on the initramfs.
const NEW_ROOT: &str = "/vmpod-root";

/// Moves the agent off the initramfs onto a tmpfs root of its own, as
/// switch_root does. pivot_root(2), which puts containers in their roots,
/// refuses to run while the caller's root is the initramfs itself. The
/// running agent needs no files of the old root afterwards.
///
/// # Errors
///
/// [`Pid1Error`] when the new root cannot be mounted or entered.
pub fn leave_initramfs() -> Result<(), Pid1Error> {
    const RAMFS_MAGIC: libc::c_long = 0x8584_58f6;
    const TMPFS_MAGIC: libc::c_long = 0x0102_1994;
    // SAFETY: an all-zero statfs is valid; statfs fills it.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    if unsafe { libc::statfs(c"/".as_ptr(), &mut fs) } != 0
        || !matches!(fs.f_type as libc::c_long, RAMFS_MAGIC | TMPFS_MAGIC)
    {
        return Ok(());
    }
    let fail = |source| Pid1Error::Mount {
        fstype: "tmpfs",
        target: NEW_ROOT,
        source,
    };
    std::fs::create_dir_all(NEW_ROOT).map_err(|source| Pid1Error::MountPoint {
        path: NEW_ROOT,
        source,
    })?;
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(fail(io::Error::last_os_error()))
        }
    };
    // SAFETY: NUL-terminated constant strings; mount keeps none of them.
    check(unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            c"/vmpod-root".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID,
            c"mode=0755".as_ptr().cast(),
        )
    })?;
    // SAFETY: as above; the new root is moved over "/" and entered.
    check(unsafe { libc::chdir(c"/vmpod-root".as_ptr()) })?;
    // SAFETY: as above.
    check(unsafe {
        libc::mount(
            c".".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        )
    })?;
    // SAFETY: as above.
    check(unsafe { libc::chroot(c".".as_ptr()) })?;
    // SAFETY: a NUL-terminated constant path.
    unsafe { libc::chdir(c"/".as_ptr()) };
    Ok(())
}

/// Mounts the system file systems, enables every cgroup v2 controller for
/// the containers' cgroups and sets a hostname.
///
/// # Errors
///
/// [`Pid1Error`] when a file system does not mount.
pub fn set_up_system() -> Result<(), Pid1Error> {
    leave_initramfs()?;
    for (fstype, target, flags, data) in SYSTEM_MOUNTS {
        std::fs::create_dir_all(target).map_err(|source| Pid1Error::MountPoint {
            path: target,
            source,
        })?;
        let target_c = std::ffi::CString::new(target).expect("constant paths have no NUL");
        // SAFETY: all pointers are NUL-terminated strings that outlive the
        // call; mount does not keep them.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                flags,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            let source = io::Error::last_os_error();
            // An initrd's kernel may have mounted devtmpfs already.
            if source.raw_os_error() != Some(libc::EBUSY) {
                return Err(Pid1Error::Mount {
                    fstype: fstype.to_str().unwrap_or("?"),
                    target,
                    source,
                });
            }
        }
    }
    let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx.vmpod")
        .and_then(|()| std::fs::rename("/dev/ptmx.vmpod", "/dev/ptmx"));
    enable_cgroup_controllers(Path::new("/sys/fs/cgroup"));
    // SAFETY: the pointer and length describe a live constant.
    unsafe { libc::sethostname(DEFAULT_HOSTNAME.as_ptr().cast(), DEFAULT_HOSTNAME.len()) };
    Ok(())
}

/// Turns on, for the children of `dir`, every controller `dir` offers. A
/// controller the kernel refuses is left off (and the containers' figures
/// for it are then missing).
pub fn enable_cgroup_controllers(dir: &Path) {
    let Ok(controllers) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    for controller in controllers.split_whitespace() {
        if let Err(err) =
            std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"))
        {
            tracing::warn!("cgroup controller {controller} stays off: {err}");
        }
    }
}

/// Options for the agent on the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelOptions {
    /// `vmpod.agent_port=N`: the vsock port to serve on.
    pub agent_port: u32,
    /// `vmpod.log_port=N`: the host's vsock port for the logs.
    pub log_port: Option<u32>,
    /// `vmpod.log_level=LEVEL`: the least level logged (the shim's).
    pub log_level: Option<&'static str>,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions {
            agent_port: vmpod_agent_api::AGENT_VSOCK_PORT,
            log_port: None,
            log_level: None,
        }
    }
}

impl KernelOptions {
    /// The options of `/proc/cmdline`; defaults where it has none.
    pub fn read() -> Self {
        std::fs::read_to_string("/proc/cmdline")
            .map(|line| Self::parse(&line))
            .unwrap_or_default()
    }

    /// The options among the words of a kernel command line. Words that
    /// are not ours, and values that do not parse (logged), are ignored.
    pub fn parse(cmdline: &str) -> Self {
        let mut options = KernelOptions::default();
        for word in cmdline.split_whitespace() {
            let port = |value: &str| match value.parse::<u32>() {
                Ok(port) if port != 0 && port != u32::MAX => Some(port),
                _ => {
                    eprintln!("vmpod-agent: ignoring {word}: not a vsock port");
                    None
                }
            };
            if let Some(value) = word.strip_prefix("vmpod.agent_port=") {
                if let Some(port) = port(value) {
                    options.agent_port = port;
                }
            } else if let Some(value) = word.strip_prefix("vmpod.log_port=") {
                options.log_port = port(value);
            } else if let Some(value) = word.strip_prefix("vmpod.log_level=") {
                options.log_level = vmpod_agent_api::LOG_LEVELS
                    .into_iter()
                    .find(|level| *level == value);
                if options.log_level.is_none() {
                    eprintln!(
                        "vmpod-agent: ignoring {word}: not one of {:?}",
                        vmpod_agent_api::LOG_LEVELS
                    );
                }
            }
        }
        options
    }
}

/// Makes the agent the reaper of every orphan below it (PID 1 is anyway;
/// on a host the agent's containers are then its children).
///
/// # Errors
///
/// The `prctl` failure.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer argument only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ends the VM: PID 1 must not exit.
pub fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // Only reached when reboot failed: keep PID 1 alive.
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_kernel_options_take_only_ours() {
        assert_eq!(
            KernelOptions::parse("console=ttyS0 noxsave").agent_port,
            1024
        );
        assert_eq!(
            KernelOptions::parse("quiet vmpod.agent_port=2000 x=1").agent_port,
            2000
        );
        for bad in [
            "vmpod.agent_port=",
            "vmpod.agent_port=0",
            "vmpod.agent_port=abc",
        ] {
            assert_eq!(KernelOptions::parse(bad).agent_port, 1024, "{bad}");
        }
    }

    #[test]
    fn test_kernel_options_take_a_known_log_level_only() {
        assert_eq!(KernelOptions::parse("quiet").log_level, None);
        assert_eq!(
            KernelOptions::parse("vmpod.log_level=debug").log_level,
            Some("debug")
        );
        for bad in [
            "vmpod.log_level=",
            "vmpod.log_level=loud",
            "vmpod.log_level=debug,h2=trace",
        ] {
            assert_eq!(KernelOptions::parse(bad).log_level, None, "{bad}");
        }
    }
}
