// SPDX-License-Identifier: Apache-2.0
//! containerd's CRI path, as the kubelet drives it: a [`Containerd`]
//! with its CRI plugin (runtime handlers `vmpod` and `runc`, a pause image
//! built here, CNI bridge networking from Debian's plugins) run inside a
//! network namespace of its own, and a CRI v1 client ([`CriClient`]).
//! Nothing reaches the host's network: the bridge, the pods' veths and
//! their addresses (192.0.2.0/24) live in that namespace.

pub mod client;
pub mod config;
pub mod pod;
pub mod stream;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ListPodSandboxRequest, RemovePodSandboxRequest, StatusRequest, StopPodSandboxRequest,
};

pub use client::CriClient;

use crate::containerd::{
    containerd_or_skip, count_mounts_below, processes_named, unix_sockets_below, Containerd,
    ContainerdOptions, BUSYBOX_IMAGE,
};
use crate::netns::Netns;

/// The containerd namespace of CRI's containers and images.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// The runtime handler of vmpod pods (a RuntimeClass's `handler`).
pub const VMPOD_HANDLER: &str = "vmpod";
/// The runtime handler of runc pods, for comparison.
pub const RUNC_HANDLER: &str = "runc";
/// The sandbox image [`CriHarness`] builds: busybox's shell as a pause
/// process, waiting until a signal ends it.
pub const PAUSE_IMAGE: &str = "docker.io/vmpod/pause:test";
/// The pause image's command: exits on SIGTERM and SIGINT as the
/// kubernetes pause does (CRI kills the sandbox with SIGKILL anyway).
pub const PAUSE_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "trap 'exit 0' TERM INT; sleep 2147483647 & wait",
];
/// Where Debian's containernetworking-plugins are.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// The CNI network's name.
pub const NETWORK_NAME: &str = "vmpod-cri-test";
/// The bridge the CNI makes in containerd's network namespace.
pub const BRIDGE: &str = "cni0";
/// The pods' addresses: TEST-NET-1, a documentation prefix.
pub const POD_SUBNET: &str = "192.0.2.0/24";
/// The bridge's address, the pods' gateway.
pub const POD_GATEWAY: &str = "192.0.2.1";
/// The cgroup parent of the pods [`pod::sandbox_config`] makes.
pub const CGROUP_PARENT: &str = "/vmpod-cri";
/// How long containerd's CRI plugin may take to report itself ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a pod's processes get to go after its removal.
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(20);

/// containerd with its CRI plugin in a network namespace of its own, the
/// busybox and pause images in [`CRI_NAMESPACE`], and a connected client.
/// Drop removes the pods left, stops containerd and removes everything.
#[derive(Debug)]
pub struct CriHarness {
    containerd: Containerd,
    client: CriClient,
    work: PathBuf,
    pods: Option<PathBuf>,
    netns: Netns,
}

/// Whether `test` can run the CRI harness (and, with `vmpod`, boot
/// pods): prints why not and returns false otherwise.
///
/// # Panics
/// Where ./test.sh installed everything (`VMPOD_REQUIRE_*`) and still
/// something is missing.
pub fn cri_or_skip(test: &str, vmpod: bool) -> bool {
    if !containerd_or_skip(test, &["ip"]) {
        return false;
    }
    let bridge = Path::new(CNI_BIN_DIR).join("bridge");
    if !bridge.is_file() {
        let reason = format!(
            "{} is missing (apt-get install containernetworking-plugins)",
            bridge.display()
        );
        assert!(
            std::env::var_os("VMPOD_REQUIRE_AGENT").is_none(),
            "{test}: {reason}"
        );
        eprintln!("SKIP {test}: {reason}");
        return false;
    }
    if !vmpod {
        return true;
    }
    if crate::guest_or_skip(test).is_none() {
        return false;
    }
    match std::env::var_os("VMPOD_AGENT_INITRD").map(PathBuf::from) {
        Some(initrd) if initrd.is_file() => true,
        other => {
            assert!(
                std::env::var_os("VMPOD_REQUIRE_GUEST").is_none(),
                "{test}: VMPOD_AGENT_INITRD {other:?} is not a built initrd"
            );
            eprintln!("skipped {test}: no agent initrd (run ./test.sh)");
            false
        }
    }
}

impl CriHarness {
    /// Starts containerd with its CRI plugin for `test`; with `vmpod_shim`,
    /// this build's shim serves handler [`VMPOD_HANDLER`] with its config
    /// ([`Containerd::vmpod_shim_options`]) plus the TOML lines `extra`.
    ///
    /// # Errors
    /// A message naming the step that failed.
    pub fn start(test: &str, vmpod_shim: bool, extra: &str) -> Result<CriHarness, String> {
        let work = std::env::temp_dir().join(format!("vmpod-cri-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        let cni = work.join("cni");
        for dir in [&cni, &work.join("ipam"), &work.join("logs")] {
            fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        }
        fs::write(
            cni.join("10-vmpod-cri.conflist"),
            config::cni_conflist(&work.join("ipam")),
        )
        .map_err(|e| format!("cannot write the CNI config: {e}"))?;
        let (mut opts, pods) = if vmpod_shim {
            // The shim's default state directory below `work`: CRI's
            // 64-digit ids make the pods' socket paths long, which the shim
            // takes at any length.
            let shim = work.join("shim");
            let opts = Containerd::vmpod_shim_options(&shim, extra, false)?;
            (opts, Some(shim.join("pods")))
        } else {
            (ContainerdOptions::default(), None)
        };
        opts.cri = Some(config::plugin_toml(PAUSE_IMAGE, &cni)?);
        let netns = Netns::create(&format!("vmpod-cri-{}-{test}", std::process::id()));
        // containerd, the CNI plugins it runs and the shims it starts all
        // inherit the namespace of the thread that spawns it.
        let containerd = netns.run(|| Containerd::start(opts))?;
        let client = CriClient::connect(containerd.address())?;
        let harness = CriHarness {
            containerd,
            client,
            work,
            pods,
            netns,
        };
        harness
            .containerd
            .import_busybox_as(CRI_NAMESPACE, BUSYBOX_IMAGE, &["sh"])?;
        harness
            .containerd
            .import_busybox_as(CRI_NAMESPACE, PAUSE_IMAGE, &PAUSE_COMMAND)?;
        harness.wait_ready()?;
        Ok(harness)
    }

    /// Waits until the CRI plugin reports its runtime and its network
    /// ready, as the kubelet does before it runs pods.
    fn wait_ready(&self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let status = self
                .client
                .runtime(|mut c| async move { c.status(StatusRequest { verbose: false }).await });
            let conditions = status
                .as_ref()
                .ok()
                .and_then(|s| s.status.as_ref())
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            let ready = |kind: &str| conditions.iter().any(|c| c.r#type == kind && c.status);
            if ready("RuntimeReady") && ready("NetworkReady") {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(format!(
                    "the CRI plugin is not ready after {READY_TIMEOUT:?}: {status:?}; log:\n{}",
                    self.containerd.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The CRI client.
    pub fn client(&self) -> &CriClient {
        &self.client
    }

    /// The containerd serving the CRI.
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// The vmpod shim's `state-dir` (pod directories), if it serves.
    pub fn pods_dir(&self) -> Option<&Path> {
        self.pods.as_deref()
    }

    /// A fresh log directory for pod `name` (the kubelet makes
    /// `/var/log/pods/<namespace>_<name>_<uid>`).
    ///
    /// # Errors
    /// A message if it cannot be made.
    pub fn log_dir(&self, name: &str) -> Result<PathBuf, String> {
        let dir = self.work.join("logs").join(name);
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        Ok(dir)
    }

    /// The network namespace containerd runs in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// Asserts that nothing of any pod is left (within 20 s): no shim, no
    /// `vmpod-vm`, no mount, no socket or pod directory of the shim, no
    /// port on the bridge, no address lease, and none of `netns_paths`
    /// (the pods' network namespaces).
    ///
    /// # Panics
    /// Naming what is left.
    pub fn assert_nothing_left(&self, when: &str, netns_paths: &[PathBuf]) {
        assert_gone_in_time(when, || self.leftovers(netns_paths));
    }

    fn leftovers(&self, netns_paths: &[PathBuf]) -> Vec<String> {
        let mut left = Vec::new();
        let shims = self.containerd.shim_pids();
        if !shims.is_empty() {
            left.push(format!("shims {shims:?}"));
        }
        let mounts = count_mounts_below(self.containerd.dir());
        if mounts != 0 {
            left.push(format!("{mounts} mounts below containerd's directory"));
        }
        if let Some(pods) = &self.pods {
            left.extend(pod_leftovers(pods));
        }
        let ports = self.bridge_ports();
        if !ports.is_empty() {
            left.push(format!("bridge ports {ports:?}"));
        }
        let leases = leases(&self.work.join("ipam").join(NETWORK_NAME));
        if !leases.is_empty() {
            left.push(format!("address leases {leases:?}"));
        }
        left.extend(
            netns_paths
                .iter()
                .filter(|path| path.exists())
                .map(|path| format!("network namespace {}", path.display())),
        );
        left
    }

    /// The interfaces on the CNI's bridge (none before the first pod made
    /// it).
    pub fn bridge_ports(&self) -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args([
                "-n",
                &self.netns.name,
                "-o",
                "link",
                "show",
                "master",
                BRIDGE,
            ])
            .output();
        match out {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|line| line.split(": ").nth(1).map(str::to_string))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Stops and removes every pod still there, as the kubelet's garbage
    /// collector would.
    fn remove_pods(&self) {
        let pods = self
            .client
            .runtime(|mut c| async move {
                c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                    .await
            })
            .map(|list| list.items)
            .unwrap_or_default();
        for pod in pods {
            let id = pod.id;
            let stop = StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            let remove = RemovePodSandboxRequest {
                pod_sandbox_id: id.clone(),
            };
            if let Err(e) = self
                .client
                .runtime(|mut c| async move { c.stop_pod_sandbox(stop).await })
                .and_then(|_| {
                    self.client
                        .runtime(|mut c| async move { c.remove_pod_sandbox(remove).await })
                })
            {
                eprintln!("cleanup: pod {id}: {}", e.message());
            }
        }
    }
}

impl Drop for CriHarness {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("containerd's log (tail):\n{}", self.containerd.log_tail(80));
        }
        self.remove_pods();
        if let Err(e) = self.containerd.stop() {
            eprintln!("cleanup: {e}");
        }
        for cgroup in ["/sys/fs/cgroup/vmpod-cri", "/run/containerd/runc/k8s.io"] {
            // Empty unless another test's pods are in it.
            let _ = fs::remove_dir(cgroup);
        }
        if let Some(pods) = &self.pods {
            let _ = fs::remove_dir_all(pods);
        }
        let _ = fs::remove_dir_all(&self.work);
    }
}

/// What is left of the vmpod pods under the state directory `pods`.
fn pod_leftovers(pods: &Path) -> Vec<String> {
    let mut left = Vec::new();
    let named = pods.display().to_string();
    // An unconfined vmpod-vm names the pods' directory on its command
    // line; a jailed one's paths are the jail's, but its vmpod-jailer,
    // which lives as long as it, names the directory.
    for program in ["vmpod-vm", "vmpod-jailer"] {
        let pids: Vec<u32> = processes_named(program)
            .into_iter()
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&named))
            })
            .collect();
        if !pids.is_empty() {
            left.push(format!("{program} {pids:?}"));
        }
    }
    let mounts = count_mounts_below(pods);
    if mounts != 0 {
        left.push(format!("{mounts} mounts below {}", pods.display()));
    }
    let sockets = unix_sockets_below(pods);
    if !sockets.is_empty() {
        left.push(format!("sockets {sockets:?}"));
    }
    let dirs: Vec<PathBuf> = fs::read_dir(pods.join(CRI_NAMESPACE))
        .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    if !dirs.is_empty() {
        left.push(format!("pod directories {dirs:?}"));
    }
    left
}

/// The addresses host-local holds in `dir` (one file per address; its
/// `lock` and `last_reserved_ip.*` are bookkeeping).
fn leases(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name != "lock" && !name.starts_with("last_reserved_ip"))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts that `leftovers` (what a removed pod left on the host, one
/// line each) is empty within [`LEFTOVER_TIMEOUT`]: teardown ends in
/// processes and the kernel after the CRI call returned.
///
/// # Panics
/// After `when`, naming what is left.
pub fn assert_gone_in_time(when: &str, mut leftovers: impl FnMut() -> Vec<String>) {
    let deadline = Instant::now() + LEFTOVER_TIMEOUT;
    loop {
        let left = leftovers();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: left behind: {}",
            left.join("; ")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
