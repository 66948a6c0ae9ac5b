// SPDX-License-Identifier: Apache-2.0
//! Loads a device program with bpf(BPF_PROG_LOAD) and attaches it to a
//! cgroup with bpf(BPF_PROG_ATTACH, BPF_CGROUP_DEVICE). The cgroup keeps
//! the program and it goes with the cgroup when it is removed; the agent
//! keeps its descriptor to attach it to the next container of the same
//! rules ([`super::cache`]) and to replace it on an update.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::program::Insn;

/// bpf(2) commands (linux/bpf.h `enum bpf_cmd`).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
/// `BPF_PROG_TYPE_CGROUP_DEVICE`.
const PROG_TYPE_CGROUP_DEVICE: u32 = 15;
/// `BPF_CGROUP_DEVICE` attach type.
const ATTACH_CGROUP_DEVICE: u32 = 6;
/// `BPF_F_ALLOW_MULTI`: programs of the parent cgroups still run (every
/// one must allow), and the container cannot replace this one.
const F_ALLOW_MULTI: u32 = 2;
/// `BPF_F_REPLACE`: in the place of the program `replace_bpf_fd`.
const F_REPLACE: u32 = 4;
/// The program's name in bpftool and /proc/PID/fdinfo.
const PROG_NAME: &[u8] = b"vmpod_devices";
/// The verifier's log, read only to explain a refused program.
const LOG_SIZE: usize = 64 * 1024;

/// Failures of loading or attaching a device program.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The kernel refused the program (no CONFIG_CGROUP_BPF, or the
    /// verifier); `verifier` is the last line of its log before the
    /// statistics.
    #[error("loading the device cgroup program: {verifier}")]
    Load {
        /// The verifier's last words, if it logged any.
        verifier: String,
        /// The bpf(2) error.
        #[source]
        source: io::Error,
    },
    /// The cgroup refused the program.
    #[error("attaching the device cgroup program")]
    Attach {
        /// The bpf(2) error.
        #[source]
        source: io::Error,
    },
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// bpf(cmd, attr, size of attr).
///
/// # Safety
///
/// `attr` must be the attribute struct of `cmd`, with every pointer in it
/// valid for the call.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: the caller guarantees attr matches cmd; its size is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn load_program(program: &[Insn], log: Option<&mut [u8]>) -> io::Result<OwnedFd> {
    let insn_cnt =
        u32::try_from(program.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut prog_name = [0u8; 16];
    prog_name[..PROG_NAME.len()].copy_from_slice(PROG_NAME);
    let (log_level, log_size, log_buf) = match log {
        Some(log) => (1, log.len() as u32, log.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let attr = ProgLoadAttr {
        prog_type: PROG_TYPE_CGROUP_DEVICE,
        insn_cnt,
        insns: program.as_ptr() as u64,
        license: c"Apache-2.0".as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name,
        expected_attach_type: ATTACH_CGROUP_DEVICE,
        ..ProgLoadAttr::default()
    };
    // SAFETY: a BPF_PROG_LOAD attr whose instructions, license and log
    // buffer outlive the call.
    let fd = unsafe { bpf(BPF_PROG_LOAD, &attr)? };
    // SAFETY: BPF_PROG_LOAD returned a new descriptor (O_CLOEXEC) that
    // nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Loads the program; when the kernel refuses it, loads it once more with
/// the verifier's log to say why.
pub(super) fn load(program: &[Insn]) -> Result<OwnedFd, AttachError> {
    let source = match load_program(program, None) {
        Ok(fd) => return Ok(fd),
        Err(source) => source,
    };
    let mut log = vec![0u8; LOG_SIZE];
    let _ = load_program(program, Some(&mut log));
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let verifier = String::from_utf8_lossy(&log[..end])
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty() && !line.starts_with("processed "))
        .unwrap_or("the kernel gave no reason")
        .to_owned();
    Err(AttachError::Load { verifier, source })
}

/// Attaches the loaded `program` to the cgroup open as `cgroup`, so that
/// it decides every device access of the cgroup's processes.
///
/// # Errors
///
/// [`AttachError::Attach`].
pub fn attach(cgroup: impl AsFd, program: BorrowedFd<'_>) -> Result<(), AttachError> {
    attach_to(cgroup.as_fd(), program, None)
}

/// Puts the loaded `program` in the place of `old` on the cgroup, in one
/// step (BPF_F_REPLACE): the cgroup is never without a program.
///
/// # Errors
///
/// [`AttachError::Attach`]; `old` stays.
pub fn replace(
    cgroup: impl AsFd,
    old: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
) -> Result<(), AttachError> {
    attach_to(cgroup.as_fd(), program, Some(old))
}

fn attach_to(
    cgroup: BorrowedFd<'_>,
    program: BorrowedFd<'_>,
    old: Option<BorrowedFd<'_>>,
) -> Result<(), AttachError> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: ATTACH_CGROUP_DEVICE,
        attach_flags: F_ALLOW_MULTI | old.map_or(0, |_| F_REPLACE),
        replace_bpf_fd: old.map_or(0, |fd| fd.as_raw_fd() as u32),
    };
    // SAFETY: a BPF_PROG_ATTACH attr of live descriptors.
    unsafe { bpf(BPF_PROG_ATTACH, &attr) }.map_err(|source| AttachError::Attach { source })?;
    Ok(())
}

/// The programs run in the host's kernel: a scratch cgroup v2 gets one,
/// and a forked process in it opens and makes device nodes.
#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::fs::File;
    use std::io::Read;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::container::device_cgroup::{compile, spec_rules, Access, DeviceKind, Rule};

    /// What the process in the cgroup tries.
    enum Probe {
        Open(CString, libc::c_int),
        Mknod(CString, libc::dev_t),
    }

    /// A scratch cgroup and a directory of device nodes made outside it.
    struct Scratch {
        cgroup: PathBuf,
        nodes: PathBuf,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.cgroup);
            let _ = std::fs::remove_dir_all(&self.nodes);
        }
    }

    /// Why the kernel tests cannot run here, if they cannot.
    fn skip_reason(nodes: &Path) -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Some("attaching cgroup programs needs root".into());
        }
        let c = CString::new(nodes.as_os_str().as_bytes()).ok()?;
        // SAFETY: an all-zero statvfs is valid; statvfs fills it.
        let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut fs) } == 0 && fs.f_flag & libc::ST_NODEV != 0 {
            return Some(format!("{} is mounted nodev", nodes.display()));
        }
        None
    }

    fn cgroup2_mount() -> Option<PathBuf> {
        vmpod_sys::mountinfo::mounts()
            .ok()?
            .into_iter()
            .find(|mount| mount.fs_type == "cgroup2")
            .map(|mount| mount.point)
    }

    /// A scratch cgroup and node directory for test `name`, or why not.
    fn scratch(name: &str) -> Result<Scratch, String> {
        let nodes = std::env::temp_dir().join(format!("vmpod-devcg-{}-{name}", std::process::id()));
        if let Some(reason) = skip_reason(&std::env::temp_dir()) {
            return Err(reason);
        }
        let root = cgroup2_mount().ok_or("no cgroup2 hierarchy is mounted")?;
        let cgroup = root.join(format!("vmpod-devcg-{}-{name}", std::process::id()));
        std::fs::create_dir(&cgroup).map_err(|err| format!("{}: {err}", cgroup.display()))?;
        let scratch = Scratch { cgroup, nodes };
        let _ = std::fs::remove_dir_all(&scratch.nodes);
        std::fs::create_dir(&scratch.nodes).unwrap();
        for (name, dev) in [
            ("mem", libc::makedev(1, 1)),
            ("null", libc::makedev(1, 3)),
            ("kmsg", libc::makedev(1, 11)),
        ] {
            let path = CString::new(scratch.nodes.join(name).as_os_str().as_bytes()).unwrap();
            // SAFETY: a NUL-terminated path.
            let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, dev) };
            assert_eq!(rc, 0, "mknod {name}: {}", io::Error::last_os_error());
        }
        Ok(scratch)
    }

    impl Scratch {
        fn node(&self, name: &str) -> CString {
            CString::new(self.nodes.join(name).as_os_str().as_bytes()).unwrap()
        }

        /// Runs `probes` in a process of the cgroup: 0 or the errno of
        /// each.
        fn run(&self, probes: &[Probe]) -> Vec<i32> {
            let procs = std::fs::OpenOptions::new()
                .write(true)
                .open(self.cgroup.join("cgroup.procs"))
                .unwrap();
            let mut fds = [0; 2];
            // SAFETY: pipe fills two descriptors.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            let mut results = [0i32; 16];
            assert!(probes.len() <= results.len());
            // SAFETY: the child only makes system calls on data prepared
            // here, then _exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                // SAFETY: writes and probes on live descriptors and
                // NUL-terminated paths; no allocation after fork.
                unsafe {
                    if libc::write(procs.as_raw_fd(), c"0".as_ptr().cast(), 1) != 1 {
                        libc::_exit(2);
                    }
                    for (probe, result) in probes.iter().zip(results.iter_mut()) {
                        let rc = match probe {
                            Probe::Open(path, flags) => libc::open(path.as_ptr(), *flags),
                            Probe::Mknod(path, dev) => {
                                libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, *dev)
                            }
                        };
                        *result = if rc < 0 { *libc::__errno_location() } else { 0 };
                    }
                    let len = std::mem::size_of_val(&results);
                    libc::write(fds[1], results.as_ptr().cast(), len);
                    libc::_exit(0);
                }
            }
            assert!(pid > 0, "fork: {}", io::Error::last_os_error());
            // SAFETY: the parent's write end, closed once.
            unsafe { libc::close(fds[1]) };
            // SAFETY: the read end, owned from here.
            let mut reader = unsafe { File::from_raw_fd(fds[0]) };
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).unwrap();
            let mut status = 0;
            // SAFETY: waits for our child.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            assert_eq!(status, 0, "the probing process failed");
            bytes
                .chunks_exact(4)
                .take(probes.len())
                .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
    }

    macro_rules! scratch_or_skip {
        ($name:expr) => {
            match scratch($name) {
                Ok(scratch) => scratch,
                Err(reason) => {
                    eprintln!("SKIP {}: {reason}", $name);
                    return;
                }
            }
        };
    }

    #[test]
    fn test_runc_defaults_refuse_mem_and_kmsg_in_the_kernel() {
        let scratch = scratch_or_skip!("defaults");
        let linux = serde_json::from_value(serde_json::json!({
            "resources": {"devices": [{"allow": false, "access": "rwm"}]}
        }))
        .unwrap();
        let program = compile(&spec_rules(&linux).unwrap()).unwrap();
        let program = load(&program).unwrap();
        attach(File::open(&scratch.cgroup).unwrap(), program.as_fd()).unwrap();
        let results = scratch.run(&[
            Probe::Open(c"/dev/null".to_owned(), libc::O_RDWR),
            Probe::Open(scratch.node("null"), libc::O_RDWR),
            Probe::Open(scratch.node("mem"), libc::O_RDONLY),
            Probe::Open(scratch.node("kmsg"), libc::O_RDONLY),
            Probe::Open(scratch.node("kmsg"), libc::O_WRONLY),
            // runc lets any node be made; opening it is what it refuses.
            Probe::Mknod(scratch.node("made"), libc::makedev(1, 1)),
            Probe::Open(scratch.node("made"), libc::O_RDWR),
        ]);
        let eperm = libc::EPERM;
        assert_eq!(results, vec![0, 0, eperm, eperm, eperm, 0, eperm]);
    }

    #[test]
    fn test_privileged_rules_allow_every_device_in_the_kernel() {
        let scratch = scratch_or_skip!("privileged");
        // What containerd writes for --privileged.
        let linux = serde_json::from_value(serde_json::json!({
            "resources": {"devices": [{"allow": true, "access": "rwm"}]}
        }))
        .unwrap();
        let program = compile(&spec_rules(&linux).unwrap()).unwrap();
        let program = load(&program).unwrap();
        attach(File::open(&scratch.cgroup).unwrap(), program.as_fd()).unwrap();
        let results = scratch.run(&[
            Probe::Open(scratch.node("kmsg"), libc::O_RDWR),
            Probe::Mknod(scratch.node("made"), libc::makedev(240, 0)),
            Probe::Open(scratch.node("made"), libc::O_RDONLY),
        ]);
        // Every open reaches the driver: major 240 has none.
        assert_eq!(results, vec![0, 0, libc::ENXIO]);
    }

    #[test]
    fn test_spec_rules_decide_in_order_in_the_kernel() {
        let scratch = scratch_or_skip!("order");
        let rule = |allow, kind, major, minor, access| Rule {
            allow,
            kind,
            major,
            minor,
            access,
        };
        let rules = [
            rule(false, DeviceKind::All, None, None, Access::ALL),
            rule(true, DeviceKind::Char, Some(1), Some(3), Access::ALL),
            rule(false, DeviceKind::Char, Some(1), Some(3), Access::WRITE),
            rule(true, DeviceKind::Char, Some(1), None, Access::READ),
            rule(false, DeviceKind::Char, Some(1), Some(1), Access::READ),
            rule(true, DeviceKind::Block, None, None, Access::MKNOD),
        ];
        let program = compile(&rules).unwrap();
        let program = load(&program).unwrap();
        attach(File::open(&scratch.cgroup).unwrap(), program.as_fd()).unwrap();
        let eperm = libc::EPERM;
        let results = scratch.run(&[
            Probe::Open(scratch.node("null"), libc::O_RDONLY),
            // Write was denied after rwm: read+write is refused.
            Probe::Open(scratch.node("null"), libc::O_WRONLY),
            Probe::Open(scratch.node("null"), libc::O_RDWR),
            // c 1:* r allows kmsg for reading only; c 1:1 r denies mem.
            Probe::Open(scratch.node("kmsg"), libc::O_RDONLY),
            Probe::Open(scratch.node("kmsg"), libc::O_WRONLY),
            Probe::Open(scratch.node("mem"), libc::O_RDONLY),
            // mknod: only 1:3 and block devices.
            Probe::Mknod(scratch.node("char"), libc::makedev(1, 5)),
        ]);
        assert_eq!(results, vec![0, eperm, eperm, 0, eperm, eperm, eperm]);
        assert!(!scratch.nodes.join("char").exists());
    }

    #[test]
    fn test_a_replaced_program_no_longer_decides() {
        let scratch = scratch_or_skip!("replace");
        let cgroup = File::open(&scratch.cgroup).unwrap();
        let deny_all = load(&compile(&[]).unwrap()).unwrap();
        attach(&cgroup, deny_all.as_fd()).unwrap();
        let null = [Probe::Open(scratch.node("null"), libc::O_RDWR)];
        assert_eq!(scratch.run(&null), vec![libc::EPERM]);
        let allow_null = [Rule {
            allow: true,
            kind: DeviceKind::Char,
            major: Some(1),
            minor: Some(3),
            access: Access::ALL,
        }];
        // Both attached would still refuse: every program must allow.
        let allow_null = load(&compile(&allow_null).unwrap()).unwrap();
        replace(&cgroup, deny_all.as_fd(), allow_null.as_fd()).unwrap();
        assert_eq!(scratch.run(&null), vec![0]);
        // The replaced program is no longer attached: it cannot be replaced
        // again.
        assert!(replace(&cgroup, deny_all.as_fd(), deny_all.as_fd()).is_err());
    }

    #[test]
    fn test_one_loaded_program_decides_for_two_cgroups() {
        let first = scratch_or_skip!("shared-1");
        let second = scratch_or_skip!("shared-2");
        let allow_null = [Rule {
            allow: true,
            kind: DeviceKind::Char,
            major: Some(1),
            minor: Some(3),
            access: Access::READ,
        }];
        let program = load(&compile(&allow_null).unwrap()).unwrap();
        attach(File::open(&first.cgroup).unwrap(), program.as_fd()).unwrap();
        attach(File::open(&second.cgroup).unwrap(), program.as_fd()).unwrap();
        drop(program);
        for scratch in [&first, &second] {
            let results = scratch.run(&[
                Probe::Open(scratch.node("null"), libc::O_RDONLY),
                Probe::Open(scratch.node("null"), libc::O_WRONLY),
            ]);
            assert_eq!(results, vec![0, libc::EPERM]);
        }
    }

    #[test]
    fn test_a_refused_program_says_why() {
        // An exit without R0 set: the verifier refuses it.
        let bad = [Insn {
            code: 0x95,
            regs: 0,
            off: 0,
            imm: 0,
        }];
        let err = load(&bad).map(drop);
        if let Err(AttachError::Load { source, .. }) = &err {
            if source.raw_os_error() == Some(libc::EPERM) {
                eprintln!("SKIP refused program: bpf(2) is not allowed here");
                return;
            }
        }
        let err = err.unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("loading the device cgroup program: "),
            "{text}"
        );
        assert!(text.contains("R0"), "{text}");
    }
}
