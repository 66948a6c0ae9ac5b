// SPDX-License-Identifier: Apache-2.0
//! `vmpod-vm`'s confinement as the shim arranges it: the `vmpod-jailer`
//! command line (the jail binds the kernel and initrd read-only, the pod's
//! sockets' directory, share and console), the pod's cgroup, which the
//! shim joins too (Kata's `sandbox_cgroup_only`) and leaves when the VM
//! ends, and what `delete` removes after a killed shim.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use tokio::process::Command;
use vmpod_jailer::cgroup::{self, CgroupPath, Joined};

use super::{PodDir, PodError, AGENT_LOG_PORT, GUEST_CID, SHARE_TAG};
use crate::config::{Config, Jail};
use crate::network::PodNetwork;
use crate::sizing::VmSize;

/// The jail's root, in the pod's directory: a mount point only inside the
/// jail's mount namespace, an empty directory on the host.
const JAIL_ROOT: &str = "root";
/// The pod's cgroup directories, one a line, for `delete` after a killed
/// shim (a file of the pod's directory).
pub const CGROUP_RECORD: &str = "cgroup";
/// The jails' id leases: one directory for the host, whatever a shim's
/// `state-dir`, as the ids are the host's.
pub const JAIL_IDS: &str = "/run/vmpod-jailer/ids";
/// vmpod-vm's own address space besides the guest's RAM (VmPeak measured
/// at 216 MiB above a 256 MiB guest with one vCPU; each thread's malloc
/// arena reserves up to 64 MiB more): a bound with room.
const VMM_ADDRESS_SPACE_MIB: u64 = 512;
/// More address space per vCPU (its thread's stack and malloc arena).
const VMM_ADDRESS_SPACE_PER_VCPU_MIB: u64 = 72;
/// Open files of a jailed vmpod-vm: the virtio-fs server holds one per
/// file the guest has looked up and not forgotten.
const VMM_OPEN_FILES: u64 = 65536;

/// Where the VM's files are as `vmpod-vm` sees them.
pub(super) struct VmPaths {
    pub(super) kernel: PathBuf,
    pub(super) initrd: PathBuf,
    pub(super) console: PathBuf,
    pub(super) vsock: PathBuf,
    pub(super) share: PathBuf,
    /// The control socket (`--api`), in the sockets' directory.
    pub(super) api: PathBuf,
    /// Where a cold-booted VM writes its snapshot, in the sockets'
    /// directory (which a jailed VMM can write).
    pub(super) snapshot: PathBuf,
    /// The template a VM is restored from (`--restore`).
    pub(super) template: PathBuf,
}

impl VmPaths {
    /// The pod's files as an unconfined `vmpod-vm` sees them: the host's.
    pub(super) fn host(config: &Config, dir: &PodDir, template: &Path) -> Self {
        VmPaths {
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            console: dir.console(),
            vsock: dir.vsock(),
            share: dir.shared(),
            api: dir.api_socket(),
            snapshot: dir.snapshot(),
            template: template.to_path_buf(),
        }
    }

    /// The same files as the jail binds them (the sockets' directory at
    /// `/run`, a template at `/template`).
    pub(super) fn jail() -> Self {
        VmPaths {
            kernel: "/kernel".into(),
            initrd: "/initrd".into(),
            console: "/console.log".into(),
            vsock: "/run/vsock.sock".into(),
            share: "/share".into(),
            api: "/run/api.sock".into(),
            snapshot: "/run/template".into(),
            template: "/template".into(),
        }
    }
}

/// How a pod's VM starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Launch<'a> {
    /// Booted, as templates off have it.
    Cold,
    /// Booted with its control socket, to be snapshotted as a template.
    ColdWithApi,
    /// Restored from the template in this host directory.
    Restore(&'a Path),
}

/// The kernel command line of every pod VM. The console keeps the kernel's
/// messages (not `quiet`): a guest process's fatal trap shows there
/// (README, "Known host faults"). The agent logs at the shim's level.
pub(super) fn guest_cmdline(log_level: &str) -> String {
    format!("console=ttyS0 reboot=k panic=1 vmpod.log_port={AGENT_LOG_PORT} vmpod.log_level={log_level}")
}

/// The virtio devices of a pod VM with `nets` interfaces by kind, in
/// vmpod-vm's order (its snapshot identity's): a template's input.
pub(super) fn device_kinds(nets: usize) -> Vec<String> {
    let mut kinds = vec!["net".to_owned(); nets];
    kinds.extend([
        "vsock".to_owned(),
        format!("fs:{SHARE_TAG}"),
        "rng".to_owned(),
    ]);
    kinds
}

/// `vmpod-vm`'s arguments for `paths`, the `--net` values `nets` and the
/// way it starts.
pub(super) fn vmm_args(
    config: &Config,
    size: VmSize,
    paths: &VmPaths,
    nets: Vec<String>,
    launch: Launch<'_>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--kernel".into(),
        paths.kernel.clone().into(),
        "--initrd".into(),
        paths.initrd.clone().into(),
        "--vcpus".into(),
        size.vcpus.to_string().into(),
        "--memory".into(),
        size.memory_mib.to_string().into(),
        "--cpu-template".into(),
        config.cpu_template.clone().into(),
        "--cmdline".into(),
        guest_cmdline(&config.log_level).into(),
        "--serial".into(),
        [b"file:", paths.console.as_os_str().as_bytes()]
            .concat()
            .into_os_string(),
        "--vsock".into(),
        [
            format!("cid={GUEST_CID},socket=").as_bytes(),
            paths.vsock.as_os_str().as_bytes(),
        ]
        .concat()
        .into_os_string(),
        "--fs".into(),
        [
            format!("tag={SHARE_TAG},dir=").as_bytes(),
            paths.share.as_os_str().as_bytes(),
        ]
        .concat()
        .into_os_string(),
        // virtio-rng: the agent reseeds the guest's random pool from it at
        // CreateSandbox (a VM restored from a template has the template's).
        "--rng".into(),
    ];
    for net in nets {
        args.extend(["--net".into(), net.into()]);
    }
    match launch {
        Launch::Cold => {}
        Launch::ColdWithApi => {
            let api = [b"unix:", paths.api.as_os_str().as_bytes()].concat();
            args.extend(["--api".into(), api.into_os_string()]);
        }
        Launch::Restore(_) => {
            args.extend(["--restore".into(), paths.template.clone().into()]);
        }
    }
    args
}

trait IntoOsString {
    fn into_os_string(self) -> OsString;
}

impl IntoOsString for Vec<u8> {
    fn into_os_string(self) -> OsString {
        OsString::from_vec(self)
    }
}

/// `HOST:JAIL`, a jailer bind.
fn bind(host: &Path, jail: &Path) -> OsString {
    let mut bind = host.as_os_str().to_owned();
    bind.push(":");
    bind.push(jail);
    bind
}

/// The address-space limit of a VM of `size`, MiB.
fn address_space_mib(size: VmSize) -> u64 {
    u64::from(size.memory_mib)
        + VMM_ADDRESS_SPACE_MIB
        + VMM_ADDRESS_SPACE_PER_VCPU_MIB * u64::from(size.vcpus)
}

/// `vmpod-jailer`'s command line for the pod's VM: in the pod's network
/// namespace (its taps handed to the jail's id; without one, a namespace
/// with loopback only), in `cgroup`, with `vmpod-vm`'s arguments in the
/// jail's terms (`--net` without `netns=`: the jail is in it already).
pub(super) fn command(
    config: &Config,
    jail: &Jail,
    dir: &PodDir,
    size: VmSize,
    network: Option<&PodNetwork>,
    cgroup: Option<&CgroupPath>,
    launch: Launch<'_>,
) -> Command {
    let paths = VmPaths::jail();
    let mut command = Command::new(&jail.jailer);
    command
        .arg("--exec-file")
        .arg(&config.vmm)
        .arg("--root")
        .arg(dir.root.join(JAIL_ROOT))
        .arg("--ids")
        .arg(jail.ids.to_string())
        .arg("--lock-dir")
        .arg(JAIL_IDS)
        .arg("--address-space")
        .arg(address_space_mib(size).to_string())
        .arg("--open-files")
        .arg(VMM_OPEN_FILES.to_string());
    if let Some(cgroup) = cgroup {
        command
            .arg("--cgroup")
            .arg(Path::new("/").join(cgroup.relative()));
    }
    let mut nets = Vec::new();
    if let Some(network) = network {
        command.arg("--netns").arg(&network.netns);
        for endpoint in &network.endpoints {
            command.arg("--tap").arg(&endpoint.tap);
            nets.push(format!(
                "tap={},mac={},mtu={}",
                endpoint.tap, endpoint.mac, endpoint.mtu
            ));
        }
    }
    let vsock_dir = paths.vsock.parent().unwrap_or(Path::new("/"));
    command
        .arg("--ro-bind")
        .arg(bind(&config.kernel, &paths.kernel))
        .arg("--ro-bind")
        .arg(bind(&config.initrd, &paths.initrd));
    if let Launch::Restore(template) = launch {
        command
            .arg("--ro-bind")
            .arg(bind(template, &paths.template));
    }
    command
        .arg("--bind")
        .arg(bind(&dir.sockets(), vsock_dir))
        .arg("--bind")
        .arg(bind(&dir.shared(), &paths.share))
        .arg("--bind")
        .arg(bind(&dir.console(), &paths.console))
        .arg("--")
        .args(vmm_args(config, size, &paths, nets, launch));
    command
}

/// Makes the pod's share a shared mount (a bind of itself where it is not
/// a mount point yet), so that what the shim mounts into it after the VM
/// started — a later container's rootfs — propagates into the jail, whose
/// mount namespace is a slave of the host's. The bind goes with the pod's
/// directory ([`PodDir::remove`] unmounts everything below it).
pub(super) fn share_propagates(id: &str, dir: &PodDir) -> Result<(), Box<PodError>> {
    let share = dir.shared();
    let failed = |err| Box::new(super::host_error(id, "make a shared mount of", &share)(err));
    let canonical = share.canonicalize().map_err(failed)?;
    let mounted = vmpod_sys::mountinfo::mounts()
        .map_err(failed)?
        .iter()
        .any(|mount| mount.point == canonical);
    let path = std::ffi::CString::new(canonical.as_os_str().as_bytes())
        .map_err(|err| failed(err.into()))?;
    let mount = |source: *const libc::c_char, flags| {
        // SAFETY: mount(2) with NUL-terminated strings alive for the call
        // (or null where mount accepts it).
        let rc = unsafe {
            libc::mount(
                source,
                path.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(failed(std::io::Error::last_os_error()))
        }
    };
    if !mounted {
        mount(path.as_ptr(), libc::MS_BIND)?;
    }
    mount(std::ptr::null(), libc::MS_SHARED)
}

/// Moves the shim into the pod's cgroup and records its directories for
/// `delete`.
pub(super) fn join_pod_cgroup(
    id: &str,
    dir: &PodDir,
    path: &CgroupPath,
) -> Result<Joined, Box<PodError>> {
    let joined = cgroup::join(path, std::process::id()).map_err(|source| PodError::Cgroup {
        pod: id.to_owned(),
        source,
    })?;
    let record: Vec<u8> = joined
        .dirs
        .iter()
        .flat_map(|dir| [dir.as_os_str().as_bytes(), b"\n"].concat())
        .collect();
    let record_path = dir.root.join(CGROUP_RECORD);
    if let Err(err) = std::fs::write(&record_path, record) {
        leave_pod_cgroup(id, dir, Some(&joined));
        return Err(Box::new(super::host_error(id, "write", &record_path)(err)));
    }
    tracing::info!(pod = id, cgroup = %path.relative().display(), "joined the pod's cgroup");
    Ok(joined)
}

/// Moves the shim back where it was and removes the pod's cgroup (the
/// VM has ended), logging what fails.
pub(super) fn leave_pod_cgroup(id: &str, dir: &PodDir, joined: Option<&Joined>) {
    let Some(joined) = joined else {
        return;
    };
    for previous in joined.previous.iter().flatten() {
        if let Err(err) = cgroup::move_process(previous, std::process::id()) {
            tracing::warn!(pod = id, "{}", vmpod_sys::error::chain(&err));
        }
    }
    if let Err(err) = cgroup::remove(&joined.dirs) {
        tracing::warn!(
            pod = id,
            "removing the pod's cgroup: {}",
            vmpod_sys::error::chain(&err)
        );
    }
    let _ = std::fs::remove_file(dir.root.join(CGROUP_RECORD));
}

/// Removes the id leases no live jail holds: the pod's own, once its jailer
/// was killed (a jailer that ends by itself removes its lease).
pub(super) fn remove_stale_leases(id: &str) {
    if let Err(err) = vmpod_jailer::ids::remove_stale(Path::new(JAIL_IDS)) {
        tracing::warn!(pod = id, "removing stale id leases: {err}");
    }
}

/// After a killed shim (its VM killed too): removes the pod's cgroup that
/// the record names, and the id leases no live jail holds.
///
/// # Errors
/// A cgroup directory that cannot be removed.
pub fn kill_jail_leftovers(pod: &PodDir) -> std::io::Result<()> {
    if let Ok(record) = std::fs::read(pod.root.join(CGROUP_RECORD)) {
        let dirs: Vec<PathBuf> = record
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| PathBuf::from(OsString::from_vec(line.to_vec())))
            .collect();
        cgroup::remove(&dirs)
            .map_err(|err| std::io::Error::other(vmpod_sys::error::chain(&err)))?;
    }
    vmpod_jailer::ids::remove_stale(Path::new(JAIL_IDS))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            jail: Some(Jail {
                jailer: "/vmpod-jailer".into(),
                ids: "1000-1009".parse().unwrap(),
            }),
            templates: Some("/s/.templates".into()),
            ..Config::for_tests(
                Path::new("/k"),
                Path::new("/i"),
                Path::new("/vmpod-vm"),
                Path::new("/s"),
            )
        }
    }

    /// The command's arguments, space-joined.
    fn args(command: &Command) -> String {
        let args: Vec<String> = command
            .as_std()
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        args.join(" ")
    }

    #[test]
    fn test_a_launch_boots_with_the_api_or_restores_the_template_bound_read_only() {
        let (config, dir) = (config(), PodDir::new(Path::new("/s"), "ns", "pod"));
        let size = VmSize {
            vcpus: 1,
            memory_mib: 256,
        };
        let jail = config.jail.clone().unwrap();
        let template = Path::new("/s/.templates/abc");
        let launch = |launch| args(&command(&config, &jail, &dir, size, None, None, launch));
        let cold = launch(Launch::Cold);
        assert!(
            !cold.contains("--api") && !cold.contains("--restore"),
            "{cold}"
        );
        assert!(!cold.contains("/template"), "{cold}");
        let with_api = launch(Launch::ColdWithApi);
        assert!(
            with_api.ends_with("--rng --api unix:/run/api.sock"),
            "{with_api}"
        );
        let restore = launch(Launch::Restore(template));
        assert!(
            restore.contains("--ro-bind /s/.templates/abc:/template --bind"),
            "{restore}"
        );
        assert!(restore.ends_with("--rng --restore /template"), "{restore}");
        // Unconfined, the paths are the host's.
        let paths = VmPaths::host(&config, &dir, template);
        let unconfined: Vec<String> =
            vmm_args(&config, size, &paths, Vec::new(), Launch::Restore(template))
                .iter()
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect();
        assert!(unconfined.ends_with(&["--restore".into(), "/s/.templates/abc".into()]));
        let with_api: Vec<String> =
            vmm_args(&config, size, &paths, Vec::new(), Launch::ColdWithApi)
                .iter()
                .map(|arg| arg.to_string_lossy().into_owned())
                .collect();
        assert!(with_api.ends_with(&["--api".into(), "unix:/s/ns/pod/run/api.sock".into()]));
        assert_eq!(
            device_kinds(2),
            ["net", "net", "vsock", "fs:vmpod", "rng"],
            "the order of vmpod-vm's snapshot identity"
        );
    }
}
