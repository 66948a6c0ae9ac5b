// SPDX-License-Identifier: Apache-2.0
//! Turns an OCI spec into a plan: every path, flag, string and number the
//! new process needs, checked and converted before it is cloned. The child
//! (`child.rs`) then only makes system calls on this data: after a clone in
//! a multi-threaded agent it must not allocate.

use std::ffi::{CString, NulError};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{LinuxNamespaceType, Process, Spec};

use super::mount_options::MountOptions;
use super::paths::{resolve_in_root, PathError};

/// PATH for finding the program when the process environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The device nodes every container gets, bound from the agent's /dev.
pub const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The symlinks every container's /dev gets: (link, target).
pub const DEFAULT_DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// A spec the agent cannot run, with the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The spec has no `process`.
    #[error("the spec has no process")]
    NoProcess,
    /// `process.args` is missing or empty.
    #[error("process.args is empty")]
    NoArgs,
    /// A string holds a NUL byte.
    #[error("{field} contains a NUL byte")]
    Nul {
        /// The field.
        field: &'static str,
    },
    /// A path that must be absolute is not.
    #[error("{field} {path:?} is not an absolute path")]
    NotAbsolute {
        /// The field.
        field: &'static str,
        /// Its value.
        path: String,
    },
    /// An environment entry without `=`.
    #[error("process.env entry {0:?} is not NAME=VALUE")]
    Env(String),
    /// A namespace kind the agent does not create.
    #[error("{0} namespaces are not supported")]
    Namespace(&'static str),
    /// A namespace path that cannot be opened.
    #[error("namespace path {path}: {source}")]
    NamespacePath {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A hostname without a UTS namespace of its own.
    #[error("hostname is set but the spec has no new uts namespace")]
    HostnameWithoutUts,
    /// An unknown capability name.
    #[error("unknown capability {0}")]
    Capability(String),
    /// The seccomp profile cannot be compiled.
    #[error(transparent)]
    Seccomp(#[from] super::seccomp::SeccompError),
    /// A device entry the agent cannot make.
    #[error("linux.devices: {0}")]
    Device(String),
    /// A sysctl that is not namespaced (it would change the whole guest).
    #[error("linux.sysctl: {0:?} is not a namespaced sysctl")]
    Sysctl(String),
    /// A mount with neither a type nor `bind`.
    #[error("mount on {0} has no type")]
    MountType(String),
    /// A mount destination or cwd that does not resolve inside the root.
    #[error(transparent)]
    Path(#[from] PathError),
    /// Creating a mount point in the root file system failed.
    #[error("cannot create mount point {path}: {source}")]
    MountPoint {
        /// The host path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// NUL-terminated strings and the NULL-terminated pointer array execve
/// takes, built before the clone.
#[derive(Debug)]
pub struct CStrArray {
    strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the heap buffers of `strings`, which the
// struct owns and never changes; moving the struct to another thread moves
// neither the buffers nor what the pointers mean.
unsafe impl Send for CStrArray {}

// SAFETY: nothing changes the strings or the pointers after `new`, so
// shared references on several threads only read.
unsafe impl Sync for CStrArray {}

impl CStrArray {
    fn new(strings: Vec<CString>) -> Self {
        let mut pointers: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        CStrArray { strings, pointers }
    }

    /// The array for execve.
    pub fn as_ptr(&self) -> *const *const libc::c_char {
        self.pointers.as_ptr()
    }

    /// The strings.
    pub fn strings(&self) -> &[CString] {
        &self.strings
    }
}

/// Capability sets as bit masks (bit N = capability N).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    /// The bounding set.
    pub bounding: u64,
    /// The effective set.
    pub effective: u64,
    /// The permitted set.
    pub permitted: u64,
    /// The inheritable set.
    pub inheritable: u64,
    /// The ambient set.
    pub ambient: u64,
    /// The highest capability number the kernel knows.
    pub last_cap: u32,
}

/// The process part of a plan: shared by a container's init and its
/// exec'd processes.
#[derive(Debug)]
pub struct ProcessPlan {
    /// argv.
    pub args: CStrArray,
    /// envp.
    pub env: CStrArray,
    /// Where to look for argv\[0\], in order (PATH search done here).
    pub exec_candidates: Vec<CString>,
    /// The working directory, container-absolute.
    pub cwd: CString,
    /// User and groups.
    pub uid: libc::uid_t,
    /// Primary group.
    pub gid: libc::gid_t,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    /// The umask, if the spec sets one.
    pub umask: Option<libc::mode_t>,
    /// (resource, limits) for setrlimit.
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// Capability sets; `None` leaves them as they are.
    pub caps: Option<CapSets>,
    /// `process.noNewPrivileges`.
    pub no_new_privileges: bool,
    /// `/proc/self/oom_score_adj` text, if set.
    pub oom_score_adj: Option<CString>,
    /// A terminal instead of pipes.
    pub terminal: bool,
    /// The terminal's (rows, columns).
    pub console_size: (u16, u16),
    /// The container's seccomp filters, in installation order.
    pub seccomp: Vec<Vec<seccompiler::sock_filter>>,
}

/// One mount in the new mount namespace.
#[derive(Debug)]
pub struct MountStep {
    /// mount(2) source ("" for none).
    pub source: CString,
    /// Host path of the destination (under the root).
    pub target: CString,
    /// mount(2) type ("" for a bind mount).
    pub fstype: CString,
    /// mount(2) flags of the first call.
    pub flags: libc::c_ulong,
    /// File-system data.
    pub data: CString,
    /// A bind mount whose own flags (ro, nosuid, ...) need a remount.
    pub bind_remount_flags: Option<libc::c_ulong>,
    /// Propagation to set after mounting (0 for none).
    pub propagation: libc::c_ulong,
    /// Directories to create first, outermost first (mount points that lie
    /// on a file system mounted by an earlier step).
    pub make_dirs: Vec<CString>,
    /// Create the destination as an empty file (a file bind-mounted).
    pub make_file: bool,
}

/// A device node or default device in the container's /dev.
#[derive(Debug)]
pub struct DeviceStep {
    /// Host path of the node under the root.
    pub target: CString,
    /// Bind this agent device onto it.
    pub bind_source: CString,
}

/// A device node of `linux.devices`, made with mknod.
#[derive(Debug)]
pub struct DeviceNode {
    /// Host path of the node under the root.
    pub target: CString,
    /// Directories the child makes first, in order (on a file system it
    /// mounts, such as the /dev tmpfs).
    pub make_dirs: Vec<CString>,
    /// S_IFCHR/S_IFBLK/S_IFIFO and the permission bits.
    pub mode: libc::mode_t,
    /// makedev(major, minor).
    pub dev: libc::dev_t,
    /// Owner.
    pub uid: libc::uid_t,
    /// Group.
    pub gid: libc::gid_t,
}

/// Everything a container's init process does between clone and exec.
#[derive(Debug)]
pub struct InitPlan {
    /// CLONE_NEW* flags for clone3.
    pub clone_flags: u64,
    /// Namespaces joined instead of created (setns in the child).
    pub join: Vec<(OwnedFd, libc::c_int)>,
    /// A PID namespace to join (setns on the cloning thread).
    pub join_pid: Option<OwnedFd>,
    /// The UTS namespace's hostname.
    pub hostname: Option<CString>,
    /// The root file system, already mounted (host path).
    pub rootfs: CString,
    /// Propagation of `/` in the new mount namespace.
    pub root_propagation: libc::c_ulong,
    /// The spec's mounts, in order.
    pub mounts: Vec<MountStep>,
    /// Default devices.
    pub devices: Vec<DeviceStep>,
    /// `linux.devices`.
    pub device_nodes: Vec<DeviceNode>,
    /// `linux.sysctl`: (path under /proc/sys, value), written after
    /// pivot_root.
    pub sysctls: Vec<(CString, CString)>,
    /// /dev symlinks: (link host path, target).
    pub dev_links: Vec<(CString, CString)>,
    /// `linux.maskedPaths`, container-absolute.
    pub masked: Vec<CString>,
    /// `linux.readonlyPaths`, container-absolute.
    pub readonly: Vec<CString>,
    /// `root.readonly`.
    pub readonly_root: bool,
    /// The process.
    pub process: ProcessPlan,
}

fn cstring(field: &'static str, value: impl Into<Vec<u8>>) -> Result<CString, PlanError> {
    CString::new(value).map_err(|_: NulError| PlanError::Nul { field })
}

fn path_cstring(field: &'static str, path: &Path) -> Result<CString, PlanError> {
    cstring(field, path.as_os_str().as_encoded_bytes())
}

/// The process part of a plan. The program is looked up along the
/// process's PATH by the child, inside the container's root.
///
/// # Errors
///
/// [`PlanError`] naming the field at fault.
pub fn plan_process(process: &Process) -> Result<ProcessPlan, PlanError> {
    let args = process
        .args()
        .as_ref()
        .filter(|a| !a.is_empty())
        .ok_or(PlanError::NoArgs)?;
    let args: Vec<CString> = args
        .iter()
        .map(|a| cstring("process.args", a.as_str()))
        .collect::<Result<_, _>>()?;
    let env = process.env().clone().unwrap_or_default();
    for entry in &env {
        if !entry.contains('=') {
            return Err(PlanError::Env(entry.clone()));
        }
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_owned();
    let env: Vec<CString> = env
        .into_iter()
        .map(|e| cstring("process.env", e))
        .collect::<Result<_, _>>()?;
    let program = args[0].to_bytes();
    let exec_candidates = if program.contains(&b'/') {
        vec![args[0].clone()]
    } else {
        path_var
            .split(':')
            .filter(|dir| !dir.is_empty())
            .map(|dir| {
                let mut path = dir.as_bytes().to_vec();
                path.push(b'/');
                path.extend_from_slice(program);
                cstring("process.env PATH", path)
            })
            .collect::<Result<_, _>>()?
    };
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(PlanError::NotAbsolute {
            field: "process.cwd",
            path: cwd.display().to_string(),
        });
    }
    let user = process.user();
    let rlimits = process
        .rlimits()
        .iter()
        .flatten()
        .map(|limit| {
            (
                rlimit_resource(&limit.typ().to_string()),
                libc::rlimit {
                    rlim_cur: limit.soft(),
                    rlim_max: limit.hard(),
                },
            )
        })
        .collect();
    let caps = match process.capabilities() {
        Some(caps) => {
            let mask = |set: &Option<oci_spec::runtime::Capabilities>| -> Result<u64, PlanError> {
                let mut bits = 0;
                for cap in set.iter().flatten() {
                    let name = format!("CAP_{cap}");
                    let parsed = caps::Capability::from_str(&name)
                        .map_err(|_| PlanError::Capability(name.clone()))?;
                    bits |= 1u64 << parsed.index();
                }
                Ok(bits)
            };
            let permitted = mask(caps.permitted())?;
            let inheritable = mask(caps.inheritable())?;
            let ambient = mask(caps.ambient())?;
            // The kernel raises an ambient capability only if it is both
            // permitted and inheritable; runc skips the others too.
            let raisable = ambient & permitted & inheritable;
            if raisable != ambient {
                tracing::warn!(
                    "ambient capabilities {:#x} are not both permitted and inheritable: not raised",
                    ambient & !raisable
                );
            }
            Some(CapSets {
                bounding: mask(caps.bounding())?,
                effective: mask(caps.effective())?,
                permitted,
                inheritable,
                ambient: raisable,
                last_cap: last_capability(),
            })
        }
        None => None,
    };
    Ok(ProcessPlan {
        args: CStrArray::new(args),
        env: CStrArray::new(env),
        exec_candidates,
        cwd: path_cstring("process.cwd", cwd)?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        rlimits,
        caps,
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        oom_score_adj: process
            .oom_score_adj()
            .map(|adj| cstring("process.oomScoreAdj", adj.to_string()))
            .transpose()?,
        terminal: process.terminal().unwrap_or(false),
        console_size: process.console_size().map_or((24, 80), |size| {
            (
                u16::try_from(size.height()).unwrap_or(u16::MAX),
                u16::try_from(size.width()).unwrap_or(u16::MAX),
            )
        }),
        seccomp: Vec::new(),
    })
}

/// The RLIMIT_* number of an OCI rlimit type name.
fn rlimit_resource(name: &str) -> libc::__rlimit_resource_t {
    match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => libc::RLIMIT_NOFILE,
    }
}

/// The kernel's highest capability number.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(40)
}

/// A namespace to join, by its path (`/proc/PID/ns/KIND`, a bind mount).
fn open_namespace(path: &Path) -> Result<OwnedFd, PlanError> {
    std::fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| PlanError::NamespacePath {
            path: path.display().to_string(),
            source,
        })
}

fn namespace_flag(kind: LinuxNamespaceType) -> Result<libc::c_int, PlanError> {
    Ok(match kind {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::User => return Err(PlanError::Namespace("user")),
        LinuxNamespaceType::Time => return Err(PlanError::Namespace("time")),
    })
}

/// The plan for a container's init process, on the root file system
/// mounted at `rootfs` (a host path). Mount points that lie in the image
/// are created here, after resolving them inside it.
///
/// # Errors
///
/// [`PlanError`] naming the field at fault.
/// With `shared_pid`, a new PID namespace asked for is the sandbox's
/// shared one instead.
pub fn plan_init(
    spec: &Spec,
    rootfs: &Path,
    shared_pid: Option<&Path>,
) -> Result<InitPlan, PlanError> {
    let process = spec.process().as_ref().ok_or(PlanError::NoProcess)?;
    let mut process = plan_process(process)?;
    let linux = spec.linux().clone().unwrap_or_default();
    if let Some(profile) = linux.seccomp() {
        process.seccomp = super::seccomp::compile(profile)?;
    }
    // The container always gets a mount namespace of its own: the agent's
    // mounts must not change under it.
    let mut clone_flags = libc::CLONE_NEWNS as u64;
    let mut join = Vec::new();
    let mut join_pid = None;
    for namespace in linux.namespaces().iter().flatten() {
        let flag = namespace_flag(namespace.typ())?;
        match namespace.path() {
            None => clone_flags |= flag as u64,
            Some(path) => {
                let fd = open_namespace(path)?;
                if flag == libc::CLONE_NEWPID {
                    join_pid = Some(fd);
                } else if flag != libc::CLONE_NEWNS {
                    join.push((fd, flag));
                }
            }
        }
    }
    if let Some(path) = shared_pid {
        if clone_flags & libc::CLONE_NEWPID as u64 != 0 {
            clone_flags &= !(libc::CLONE_NEWPID as u64);
            join_pid = Some(open_namespace(path)?);
        }
    }
    let hostname = spec
        .hostname()
        .as_deref()
        .filter(|name| !name.is_empty())
        .map(|name| cstring("hostname", name))
        .transpose()?;
    if hostname.is_some() && clone_flags & libc::CLONE_NEWUTS as u64 == 0 {
        return Err(PlanError::HostnameWithoutUts);
    }

    let mut mounts = Vec::new();
    // Host paths of earlier mounts: what lies below them is created in the
    // child, on the mounted file system, not in the image.
    let mut mounted: Vec<PathBuf> = Vec::new();
    for mount in spec.mounts().iter().flatten() {
        let destination = mount.destination();
        if !destination.is_absolute() {
            return Err(PlanError::NotAbsolute {
                field: "mounts.destination",
                path: destination.display().to_string(),
            });
        }
        let options = MountOptions::parse(mount.options().as_deref().unwrap_or_default());
        let fstype = match mount.typ().as_deref() {
            _ if options.bind => "",
            Some("bind") => "",
            // Only cgroup v2 exists in the guest.
            Some("cgroup") => "cgroup2",
            Some(other) if !other.is_empty() => other,
            _ => return Err(PlanError::MountType(destination.display().to_string())),
        };
        let bind = fstype.is_empty();
        let source = mount.source().clone().unwrap_or_default();
        let target = resolve_in_root(rootfs, destination, &mounted)?;
        let source_is_file = bind && std::fs::metadata(&source).is_ok_and(|m| !m.is_dir());
        let (make_dirs, make_file) = match dirs_below_earlier_mount(
            "mounts.destination",
            &target,
            &mounted,
            source_is_file,
        )? {
            Some(dirs) => (dirs, source_is_file),
            None => {
                create_mount_point(&target, source_is_file)?;
                (Vec::new(), false)
            }
        };
        mounts.push(mount_step(
            &source, &target, fstype, &options, bind, make_dirs, make_file,
        )?);
        mounted.push(target);
    }

    let device_nodes = linux
        .devices()
        .iter()
        .flatten()
        .map(|device| device_node(device, rootfs, &mounted))
        .collect::<Result<Vec<_>, _>>()?;
    // A default device the spec lists (as `--privileged` lists the host's)
    // is the spec's node, as in runc.
    let dev = resolve_in_root(rootfs, Path::new("/dev"), &mounted)?;
    let devices = DEFAULT_DEVICES
        .iter()
        .map(|name| {
            Ok(DeviceStep {
                target: path_cstring("/dev", &dev.join(name))?,
                bind_source: cstring("/dev", format!("/dev/{name}"))?,
            })
        })
        .filter(|step: &Result<DeviceStep, PlanError>| {
            step.as_ref().map_or(true, |step| {
                device_nodes.iter().all(|node| node.target != step.target)
            })
        })
        .collect::<Result<_, PlanError>>()?;
    let sysctls = linux
        .sysctl()
        .iter()
        .flatten()
        .map(|(key, value)| sysctl(key, value, clone_flags))
        .collect::<Result<Vec<_>, _>>()?;
    let dev_links = DEFAULT_DEV_LINKS
        .iter()
        .map(|(link, target)| {
            Ok((
                path_cstring("/dev", &dev.join(link))?,
                cstring("/dev", *target)?,
            ))
        })
        .collect::<Result<_, PlanError>>()?;
    let container_paths = |field: &'static str, paths: &Option<Vec<String>>| {
        paths
            .iter()
            .flatten()
            .map(|p| {
                if !p.starts_with('/') {
                    return Err(PlanError::NotAbsolute {
                        field,
                        path: p.clone(),
                    });
                }
                cstring(field, p.as_str())
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let root_propagation = match linux.rootfs_propagation().as_deref() {
        Some(name) => {
            let parsed = MountOptions::parse(&[name]);
            if parsed.propagation == 0 {
                libc::MS_SLAVE | libc::MS_REC
            } else {
                parsed.propagation
            }
        }
        None => libc::MS_SLAVE | libc::MS_REC,
    };
    Ok(InitPlan {
        clone_flags,
        join,
        join_pid,
        hostname,
        rootfs: path_cstring("root", rootfs)?,
        root_propagation,
        mounts,
        devices,
        device_nodes,
        sysctls,
        dev_links,
        masked: container_paths("linux.maskedPaths", linux.masked_paths())?,
        readonly: container_paths("linux.readonlyPaths", linux.readonly_paths())?,
        readonly_root: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        process,
    })
}

fn device_node(
    device: &oci_spec::runtime::LinuxDevice,
    rootfs: &Path,
    mounted: &[PathBuf],
) -> Result<DeviceNode, PlanError> {
    use oci_spec::runtime::LinuxDeviceType;
    let path = device.path();
    if !path.is_absolute() {
        return Err(PlanError::NotAbsolute {
            field: "linux.devices.path",
            path: path.display().to_string(),
        });
    }
    let kind = match device.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(PlanError::Device(format!(
                "{} has type \"a\", which only device cgroup rules take",
                path.display()
            )))
        }
    };
    let number = |value: i64, what: &str| {
        u32::try_from(value).map_err(|_| {
            PlanError::Device(format!(
                "{}: {what} {value} is out of range",
                path.display()
            ))
        })
    };
    let dev = libc::makedev(
        number(device.major(), "major")?,
        number(device.minor(), "minor")?,
    );
    let target = resolve_in_root(rootfs, path, mounted)?;
    // Its directories (/dev/net of /dev/net/tun), as runc makes them.
    let make_dirs = match dirs_below_earlier_mount("linux.devices.path", &target, mounted, true)? {
        Some(dirs) => dirs,
        None => {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|source| PlanError::MountPoint {
                    path: parent.display().to_string(),
                    source,
                })?;
            }
            Vec::new()
        }
    };
    Ok(DeviceNode {
        target: path_cstring("linux.devices.path", &target)?,
        make_dirs,
        mode: kind | (device.file_mode().unwrap_or(0o666) & 0o7777),
        dev,
        uid: device.uid().unwrap_or(0),
        gid: device.gid().unwrap_or(0),
    })
}

/// A sysctl as its /proc/sys path, if it belongs to a namespace the
/// container has of its own (as runc checks).
fn sysctl(key: &str, value: &str, clone_flags: u64) -> Result<(CString, CString), PlanError> {
    let has = |flag: libc::c_int| clone_flags & flag as u64 != 0;
    let ipc = key.starts_with("kernel.msg")
        || key.starts_with("kernel.sem")
        || key.starts_with("kernel.shm")
        || key.starts_with("fs.mqueue.");
    let uts = key == "kernel.hostname" || key == "kernel.domainname";
    let net = key.starts_with("net.");
    let allowed = (ipc && has(libc::CLONE_NEWIPC))
        || (uts && has(libc::CLONE_NEWUTS))
        || (net && has(libc::CLONE_NEWNET));
    if !allowed || key.contains('/') || key.split('.').any(|part| part.is_empty() || part == "..") {
        return Err(PlanError::Sysctl(key.to_owned()));
    }
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    Ok((
        cstring("linux.sysctl", path)?,
        cstring("linux.sysctl", value)?,
    ))
}

fn mount_step(
    source: &Path,
    target: &Path,
    fstype: &str,
    options: &MountOptions,
    bind: bool,
    make_dirs: Vec<CString>,
    make_file: bool,
) -> Result<MountStep, PlanError> {
    let own_flags = options.flags & !libc::MS_REC;
    Ok(MountStep {
        source: path_cstring("mounts.source", source)?,
        target: path_cstring("mounts.destination", target)?,
        fstype: cstring("mounts.type", fstype)?,
        flags: if bind {
            libc::MS_BIND | (options.flags & libc::MS_REC)
        } else {
            options.flags
        },
        data: cstring("mounts.options", options.data.as_str())?,
        bind_remount_flags: (bind && own_flags != 0).then_some(own_flags),
        propagation: options.propagation,
        make_dirs,
        make_file,
    })
}

/// Below a file system this plan mounts first (the latest that holds
/// `target`), a path can only be made by the child, once that file system
/// is there: the directories it makes down to `target` (not `target`
/// itself when it is to be a file). None when no such mount holds it.
fn dirs_below_earlier_mount(
    field: &'static str,
    target: &Path,
    mounted: &[PathBuf],
    target_is_file: bool,
) -> Result<Option<Vec<CString>>, PlanError> {
    let Some(earlier) = mounted
        .iter()
        .filter(|earlier| target.starts_with(earlier) && target != **earlier)
        .max_by_key(|earlier| earlier.as_os_str().len())
    else {
        return Ok(None);
    };
    let below: Vec<_> = target
        .strip_prefix(earlier)
        .unwrap_or(target)
        .components()
        .collect();
    let mut dirs = Vec::new();
    let mut dir = earlier.clone();
    for (i, part) in below.iter().enumerate() {
        dir.push(part);
        if i + 1 < below.len() || !target_is_file {
            dirs.push(path_cstring(field, &dir)?);
        }
    }
    Ok(Some(dirs))
}

/// Creates a mount point (a directory, or an empty file for a file bind
/// mount) in the image, if it is missing.
fn create_mount_point(target: &Path, file: bool) -> Result<(), PlanError> {
    let error = |source| PlanError::MountPoint {
        path: target.display().to_string(),
        source,
    };
    if file {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(error)?;
        }
        if std::fs::symlink_metadata(target).is_err() {
            std::fs::File::create(target).map_err(error)?;
        }
        Ok(())
    } else {
        std::fs::create_dir_all(target).map_err(error)
    }
}
