// SPDX-License-Identifier: Apache-2.0
//! The installer end to end under the real containerd (Debian's 1.6), as
//! a node runs it for Kubernetes: `vmpod install` into a temporary root
//! whose containerd config has what a node's has for CRI pods (the CNI
//! directories, the pause image); containerd started with exactly the
//! config the installer wrote; the DaemonSet's OCI archive imports; a CRI
//! pod with handler `vmpod` runs through the installed shim, which reads
//! the installed `/etc/vmpod/config.toml` and boots the installed kernel,
//! initrd, `vmpod-vm` and `vmpod-jailer`, and a container of that image
//! runs in it; and uninstall then gives the root back byte for byte.
//!
//! containerd runs in mount and network namespaces of its own: the root's
//! `/usr/local` is bound over the host's, so that the node paths the
//! installer wrote (`/usr/local/bin/...`, `/usr/local/share/vmpod/...`)
//! resolve to what it installed, and the host's own are not touched; the
//! CNI bridge and the pod's addresses (192.0.2.0/24) stay in its network
//! namespace. The CRI client, the CNI network and the pod's configs are
//! the integration tests' (`vmpod_integration_tests::cri`).

// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, guest_artifacts, repo, skip, stripped_binaries, Fixture};
use k8s_cri::v1::{
    ContainerState, ContainerStatusRequest, CreateContainerRequest, DnsConfig, ExecSyncRequest,
    PodSandboxState, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StatusRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use vmpod_integration_tests::containerd::busybox_archive;
use vmpod_integration_tests::cri::config::cni_conflist;
use vmpod_integration_tests::cri::pod::{container_config, sandbox_config};
use vmpod_integration_tests::cri::{
    CriClient, CNI_BIN_DIR, CRI_NAMESPACE, PAUSE_COMMAND, PAUSE_IMAGE, VMPOD_HANDLER,
};

/// containerd answers within seconds; the bound is for loaded hosts.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// The DaemonSet's image, which the pod's container runs.
const DEPLOY_IMAGE: &str = "localhost/vmpod-deploy:latest";
/// The container: says hello, prints the guest's kernel, then waits for
/// SIGTERM (the image has busybox, without its applets' links).
const MAIN: &str = "echo hello from the pod VM; /bin/busybox cat /proc/version; \
                    trap 'exit 0' TERM; /bin/busybox sleep 2147483647 & wait";
/// The pod's hostname.
const HOSTNAME: &str = "installed-pod";
/// How long the container's first lines may take to reach its log.
const LOG_TIMEOUT: Duration = Duration::from_secs(120);

/// containerd and what it started, stopped on drop.
struct Running {
    child: Child,
    address: PathBuf,
}

impl Running {
    fn ctr(&self, args: &[&str], timeout: Duration) -> vmpod_sys::command::Outcome {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .args(["--namespace", CRI_NAMESPACE])
            .args(args);
        vmpod_sys::command::run_with_timeout(&mut cmd, None, timeout).unwrap()
    }

    /// Shims of this containerd (they outlive it when it is killed).
    fn shims(&self) -> Vec<i32> {
        let address = self.address.display().to_string();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    cmdline.starts_with("containerd-shim") && cmdline.contains(&address)
                })
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: a signal to our own, unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.shims() {
            // SAFETY: kill(2) on a pid; the shim's VM dies with it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The containerd config before install, as a node's for CRI pods: its
/// own root, state and sockets under `work`; the CRI plugin with the
/// pause image [`PAUSE_IMAGE`] and CNI from Debian's plugins, its network
/// list in `work/cni`. The installer adds the `vmpod` handler.
fn containerd_config(work: &Path) -> String {
    format!(
        "# containerd for the installer's test.\nversion = 2\nroot = \"{w}/containerd/root\"\nstate = \"{w}/containerd/state\"\n\
         disabled_plugins = [\"io.containerd.internal.v1.opt\", \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.zfs\"]\n\n\
         [grpc]\n  address = \"{w}/sock/containerd.sock\"\n\n[ttrpc]\n  address = \"{w}/sock/containerd.sock.ttrpc\"\n\n\
         [plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = {PAUSE_IMAGE:?}\n    \
         # The sandbox's OOM score (-998) needs CAP_SYS_RESOURCE, which a host in a container may lack.\n    \
         restrict_oom_score_adj = true\n    disable_apparmor = true\n    \
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      bin_dir = {CNI_BIN_DIR:?}\n      conf_dir = \"{w}/cni\"\n      max_conf_num = 1\n",
        w = work.display()
    )
}

fn prerequisites(fixture: &Fixture) -> Result<(PathBuf, PathBuf), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root".into());
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm is not usable: {e}"))?;
    for tool in ["containerd", "ctr", "unshare", "ip"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output();
        if !found.is_ok_and(|out| out.status.success()) {
            return Err(format!("{tool} is not installed"));
        }
    }
    let bridge = Path::new(CNI_BIN_DIR).join("bridge");
    if !bridge.is_file() {
        return Err(format!(
            "{} is missing (apt-get install containernetworking-plugins)",
            bridge.display()
        ));
    }
    let guest = guest_artifacts()?;
    stripped_binaries(&fixture.artifacts())?;
    Ok(guest)
}

#[test]
fn test_a_cri_pod_runs_through_the_installed_vmpod() {
    let test = "test_a_cri_pod_runs_through_the_installed_vmpod";
    let fixture = Fixture::new("cri");
    let (kernel_dir, initrd) = match prerequisites(&fixture) {
        Ok(guest) => guest,
        Err(why) => return skip(test, why),
    };
    for (name, from) in [
        ("vmlinux", kernel_dir.join("vmlinux")),
        ("vmpod-agent-initrd.cpio", initrd.clone()),
    ] {
        fs::copy(&from, fixture.artifacts().join(name)).unwrap();
    }
    let work = fixture.dir.clone();
    fs::create_dir_all(work.join("sock")).unwrap();
    fs::create_dir_all(work.join("cni")).unwrap();
    fs::create_dir_all(work.join("ipam")).unwrap();
    fs::write(
        work.join("cni/10-vmpod.conflist"),
        cni_conflist(&work.join("ipam")),
    )
    .unwrap();
    fixture.write(
        "/etc/containerd/config.toml",
        &containerd_config(&work),
        0o644,
    );
    // An admin's shim config: install keeps these keys.
    let pods = work.join("pods");
    fixture.write(
        "/etc/vmpod/config.toml",
        &format!("state-dir = \"{}\"\nagent-timeout = 600\n", pods.display()),
        0o644,
    );
    let before = fixture.snapshot();
    assert_ok(&fixture.install(&[]));

    let containerd = start_containerd(&fixture.root(), &work);
    let log_text = || fs::read_to_string(work.join("containerd.log")).unwrap_or_default();
    import_images(&containerd, &fixture, &kernel_dir, &initrd);
    let client = CriClient::connect(&containerd.address).unwrap();
    wait_cri_ready(&client, &log_text);
    run_pod(&client, &work, &log_text);
    assert!(
        containerd.shims().is_empty(),
        "a shim outlived RemovePodSandbox"
    );
    drop(client);
    drop(containerd);

    let out = fixture.uninstall();
    assert_ok(&out);
    let after = fixture.snapshot();
    assert_eq!(after, before, "uninstall did not give the root back");
    // The pod left the template of its shape (the shim's default), which
    // outlives pods; every other entry is a namespace's pods.
    let (templates, left): (Vec<_>, Vec<_>) = fs::read_dir(&pods)
        .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .partition(|path| path.ends_with(".templates"));
    let made: Vec<_> = templates
        .iter()
        .flat_map(|dir| fs::read_dir(dir).into_iter().flatten().flatten())
        .filter(|entry| entry.path().join("vmstate").is_file())
        .collect();
    assert_eq!(made.len(), 1, "the pod's template: {templates:?}");
    assert!(
        left.iter()
            .all(|ns| fs::read_dir(ns).is_ok_and(|mut d| d.next().is_none())),
        "pods left: {left:?}"
    );
}

/// containerd with the config the installer wrote below `root`, in a
/// mount namespace where `root`'s `/usr/local` is the host's, and a
/// network namespace of its own (its loopback up).
fn start_containerd(root: &Path, work: &Path) -> Running {
    let script = format!(
        "ip link set lo up && mount --bind '{}/usr/local' /usr/local && exec containerd --config '{}/etc/containerd/config.toml'",
        root.display(),
        root.display()
    );
    let log = work.join("containerd.log");
    let child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--net",
            "sh",
            "-c",
            &script,
        ])
        .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("VMPOD_CONFIG", root.join("etc/vmpod/config.toml"))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let containerd = Running {
        child,
        address: work.join("sock/containerd.sock"),
    };
    let start = Instant::now();
    while containerd.ctr(&["version"], Duration::from_secs(5)).status != Some(0) {
        assert!(
            start.elapsed() < START_TIMEOUT,
            "containerd did not start: {}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    containerd
}

/// The DaemonSet's image (built from this build's artifacts) and the
/// pause image, imported into CRI's namespace.
fn import_images(containerd: &Running, fixture: &Fixture, kernel_dir: &Path, initrd: &Path) {
    let work = &fixture.dir;
    let deploy = work.join("vmpod-deploy.tar");
    let out = Command::new(repo().join("deploy/build-image.sh"))
        .arg(&deploy)
        .env("VMPOD_BIN_DIR", fixture.artifacts())
        .env("VMPOD_KERNEL_DIR", kernel_dir)
        .env("VMPOD_AGENT_INITRD", initrd)
        .output()
        .unwrap();
    assert_ok(&out);
    let pause = busybox_archive(&work.join("pause-image"), PAUSE_IMAGE, &PAUSE_COMMAND).unwrap();
    for archive in [&deploy, &pause] {
        let import = containerd.ctr(
            &["images", "import", archive.to_str().unwrap()],
            Duration::from_secs(120),
        );
        assert_eq!(
            import.status,
            Some(0),
            "{} {}",
            import.stdout,
            import.stderr
        );
    }
    let images = containerd.ctr(&["images", "ls", "-q"], Duration::from_secs(10));
    for image in [DEPLOY_IMAGE, PAUSE_IMAGE] {
        assert!(
            images.stdout.lines().any(|l| l == image),
            "{image} is not among {}",
            images.stdout
        );
    }
}

/// Waits until the CRI plugin reports its runtime and network ready, as
/// the kubelet does.
fn wait_cri_ready(client: &CriClient, log_text: &dyn Fn() -> String) {
    let start = Instant::now();
    loop {
        let status =
            client.runtime(|mut c| async move { c.status(StatusRequest::default()).await });
        let ready = |kind: &str| {
            status.as_ref().is_ok_and(|s| {
                s.status
                    .as_ref()
                    .is_some_and(|s| s.conditions.iter().any(|c| c.r#type == kind && c.status))
            })
        };
        if ready("RuntimeReady") && ready("NetworkReady") {
            return;
        }
        assert!(
            start.elapsed() < START_TIMEOUT,
            "the CRI plugin is not ready: {status:?}\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A pod with handler `vmpod` through the installed runtime, in the
/// kubelet's order: RunPodSandbox (READY), a container of the DaemonSet's
/// image (its output in the CRI log, from the guest's kernel), ExecSync
/// (the pod's hostname, exit code), StopContainer, RemoveContainer,
/// StopPodSandbox, RemovePodSandbox.
fn run_pod(client: &CriClient, work: &Path, log_text: &dyn Fn() -> String) {
    let fail = |what: &str, e: tonic::Status| -> ! {
        panic!("{what}: {:?}: {}\n{}", e.code(), e.message(), log_text())
    };
    let log_dir = work.join("logs");
    fs::create_dir_all(&log_dir).unwrap();
    let config = sandbox_config("installed", HOSTNAME, &log_dir, DnsConfig::default());
    let request = RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: VMPOD_HANDLER.to_string(),
    };
    let pod = client
        .runtime(|mut c| async move { c.run_pod_sandbox(request).await })
        .unwrap_or_else(|e| fail("RunPodSandbox", e))
        .pod_sandbox_id;
    let request = PodSandboxStatusRequest {
        pod_sandbox_id: pod.clone(),
        verbose: false,
    };
    let status = client
        .runtime(|mut c| async move { c.pod_sandbox_status(request).await })
        .unwrap_or_else(|e| fail("PodSandboxStatus", e));
    let state = status.status.map(|s| s.state);
    assert_eq!(state, Some(PodSandboxState::SandboxReady as i32));

    let request = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container_config(
            "main",
            DEPLOY_IMAGE,
            &["/bin/busybox", "sh", "-c", MAIN],
        )),
        sandbox_config: Some(config),
    };
    let main = client
        .runtime(|mut c| async move { c.create_container(request).await })
        .unwrap_or_else(|e| fail("CreateContainer", e))
        .container_id;
    let request = StartContainerRequest {
        container_id: main.clone(),
    };
    client
        .runtime(|mut c| async move { c.start_container(request).await })
        .unwrap_or_else(|e| fail("StartContainer", e));
    check_container(client, &main, &log_dir.join("main_0.log"), log_text);
    remove_pod(client, &pod, &main, log_text);
}

/// The running container's CRI log (its lines, the guest kernel's
/// version) and an ExecSync in it (the pod's hostname, the exit code).
fn check_container(client: &CriClient, id: &str, log: &Path, log_text: &dyn Fn() -> String) {
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains("hello from the pod VM") && text.contains("Linux version") {
            break;
        }
        assert!(
            start.elapsed() < LOG_TIMEOUT,
            "the container's log {}: {text:?}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let request = ContainerStatusRequest {
        container_id: id.to_string(),
        verbose: false,
    };
    let status = client
        .runtime(|mut c| async move { c.container_status(request).await })
        .map(|s| s.status.map(|s| s.state));
    assert!(
        matches!(status, Ok(Some(state)) if state == ContainerState::ContainerRunning as i32),
        "ContainerStatus: {status:?}, want running\n{}",
        log_text()
    );
    let request = ExecSyncRequest {
        container_id: id.to_string(),
        cmd: ["/bin/busybox", "sh", "-c", "/bin/busybox hostname; exit 3"]
            .map(str::to_string)
            .to_vec(),
        timeout: 0,
    };
    let out = client.runtime(|mut c| async move { c.exec_sync(request).await });
    assert!(
        out.as_ref()
            .is_ok_and(|out| out.exit_code == 3 && out.stdout == format!("{HOSTNAME}\n").as_bytes()),
        "ExecSync: {out:?}, want {HOSTNAME} and exit code 3\n{}",
        log_text()
    );
}

/// StopContainer (it ends on SIGTERM), RemoveContainer, StopPodSandbox,
/// RemovePodSandbox: each must succeed.
fn remove_pod(client: &CriClient, pod: &str, main: &str, log_text: &dyn Fn() -> String) {
    let check = |what: &str, result: Result<(), tonic::Status>| {
        if let Err(e) = result {
            panic!("{what}: {:?}: {}\n{}", e.code(), e.message(), log_text());
        }
    };
    let request = StopContainerRequest {
        container_id: main.to_string(),
        timeout: 30,
    };
    check(
        "StopContainer",
        client
            .runtime(|mut c| async move { c.stop_container(request).await })
            .map(drop),
    );
    let request = RemoveContainerRequest {
        container_id: main.to_string(),
    };
    check(
        "RemoveContainer",
        client
            .runtime(|mut c| async move { c.remove_container(request).await })
            .map(drop),
    );
    let request = StopPodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    };
    check(
        "StopPodSandbox",
        client
            .runtime(|mut c| async move { c.stop_pod_sandbox(request).await })
            .map(drop),
    );
    let request = RemovePodSandboxRequest {
        pod_sandbox_id: pod.to_string(),
    };
    check(
        "RemovePodSandbox",
        client
            .runtime(|mut c| async move { c.remove_pod_sandbox(request).await })
            .map(drop),
    );
}
