// SPDX-License-Identifier: Apache-2.0
//! Failure paths with handler `vmpod`: two pods side by side, booted at the
//! same time, each serving ExecSync as itself; then one pod's VM is killed
//! from outside (SIGKILL to its `vmpod-vm`, as the OOM killer or an
//! operator would). Its containers must report EXITED, its sandbox
//! NOTREADY, the shim must say so in one line, and StopPodSandbox +
//! RemovePodSandbox must leave nothing of it, while the other pod serves on
//! and is then torn down normally.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ContainerState, DnsConfig, PodSandboxState, RemoveContainerRequest, RunPodSandboxRequest,
    StopContainerRequest,
};
use vmpod_integration_tests::containerd::{count_mounts_below, processes_named, BUSYBOX_IMAGE};
use vmpod_integration_tests::cri::pod::{container_config, sandbox_config};
use vmpod_integration_tests::cri::{
    assert_gone_in_time, CriClient, CriHarness, CRI_NAMESPACE, VMPOD_HANDLER,
};

use crate::calls::{fail, Pod, GUEST_DEADLINE};
use crate::life::shim_warnings;

/// The pod whose VM the test kills, and the one that lives on: their names
/// and hostnames.
const KILLED: &str = "pod-killed";
const KEPT: &str = "pod-kept";
/// Each pod's container: waits, ending on SIGTERM.
const MAIN: &str = "trap 'exit 0' TERM; sleep 2147483647 & wait";
/// What an ExecSync looks at: the hostname, then eth0's address.
const LOOK_AROUND: &str = "hostname; ip -4 -o addr show eth0";
/// The exit code the shim gives a process whose VM went away under it
/// (`vmpod_shim::process::LOST_STATUS`).
const LOST_STATUS: i32 = 255;
/// StopContainer's grace period for the kept pod's container, which obeys
/// SIGTERM.
const GRACE_S: i64 = 60;

/// Two pods side by side; one's VM killed; both removed; nothing left.
pub fn side_by_side_one_killed(harness: &CriHarness) {
    let [killed, kept] = run_pods(harness, [KILLED, KEPT]);
    let containers: Vec<String> = [&killed, &kept]
        .iter()
        .map(|pod| {
            pod.create_and_start(container_config("main", BUSYBOX_IMAGE, &["sh", "-c", MAIN]))
        })
        .collect();
    let (killed_main, kept_main) = (&containers[0], &containers[1]);
    for (pod, main) in [(&killed, killed_main), (&kept, kept_main)] {
        pod.wait_state(main, ContainerState::ContainerRunning);
    }
    let killed_ip = check_exec(&killed, killed_main, KILLED, None);
    let kept_ip = check_exec(&kept, kept_main, KEPT, None);
    assert_ne!(killed_ip, kept_ip, "two pods with one address");
    let killed_left = PodTraces::of(&killed);
    let kept_netns = kept.netns_path();
    let warnings_before = shim_warnings(harness).len();

    let vm = kill_vm(harness, &killed.id);
    eprintln!("killed vmpod-vm {vm} of pod {}", killed.id);
    let exited = killed.wait_state(killed_main, ContainerState::ContainerExited);
    assert!(
        exited.exit_code == LOST_STATUS && exited.reason == "Error" && exited.finished_at > 0,
        "the killed pod's container: exit code {} reason {:?} finished at {}, want \
         {LOST_STATUS} \"Error\"",
        exited.exit_code,
        exited.reason,
        exited.finished_at
    );
    wait_not_ready(&killed);
    check_exec(&kept, kept_main, KEPT, Some(&kept_ip));

    remove_pod(&killed, killed_main, 0);
    killed_left.assert_gone(harness);
    let warnings: Vec<String> = shim_warnings(harness).split_off(warnings_before);
    assert!(
        warnings.len() == 1 && warnings[0].contains(&killed.id) && warnings[0].contains("SIGKILL"),
        "the VM's end: want one warning naming the pod and the signal, got:\n{}",
        warnings.join("\n")
    );
    assert_eq!(
        harness.bridge_ports().len(),
        1,
        "the bridge after the killed pod's removal"
    );
    check_exec(&kept, kept_main, KEPT, Some(&kept_ip));

    remove_pod(&kept, kept_main, GRACE_S);
    harness.assert_nothing_left("after both pods", &[killed_left.netns.clone(), kept_netns]);
    let warnings: Vec<String> = shim_warnings(harness).split_off(warnings_before + 1);
    assert!(
        warnings.is_empty(),
        "the kept pod's normal end logged warnings:\n{}",
        warnings.join("\n")
    );
}

/// RunPodSandbox of pods `names` (each its own hostname) at the same time,
/// each on a client of its own, as a kubelet's pod workers call; each is
/// then READY.
fn run_pods<'a>(harness: &'a CriHarness, names: [&str; 2]) -> [Pod<'a>; 2] {
    let configs = names.map(|name| {
        let log_dir = harness.log_dir(name).expect("log directory");
        sandbox_config(name, name, &log_dir, DnsConfig::default())
    });
    let address = harness.containerd().address();
    let start = Instant::now();
    let ids: Vec<Result<String, String>> = std::thread::scope(|scope| {
        let runs: Vec<_> = configs
            .iter()
            .map(|config| {
                scope.spawn(move || {
                    let client = CriClient::connect(address)?;
                    let request = RunPodSandboxRequest {
                        config: Some(config.clone()),
                        runtime_handler: VMPOD_HANDLER.to_string(),
                    };
                    client
                        .runtime(|mut c| async move { c.run_pod_sandbox(request).await })
                        .map(|ran| ran.pod_sandbox_id)
                        .map_err(|e| format!("RunPodSandbox: {:?}: {}", e.code(), e.message()))
                })
            })
            .collect();
        runs.into_iter()
            .map(|run| run.join().expect("a RunPodSandbox thread panicked"))
            .collect()
    });
    eprintln!("two RunPodSandbox at once took {:?}", start.elapsed());
    let mut pods = ids.into_iter().zip(configs).map(|(id, config)| {
        let id = id.unwrap_or_else(|e| {
            panic!(
                "{e}\ncontainerd's log:\n{}",
                harness.containerd().log_tail(60)
            )
        });
        Pod::ready(harness, id, config).0
    });
    let first = pods.next().expect("two pods");
    let second = pods.next().expect("two pods");
    [first, second]
}

/// ExecSync in `pod`'s container `id`: the pod's own hostname and, on
/// eth0, the pod IP PodSandboxStatus reports (which must be `ip`, when
/// given); returns that IP.
fn check_exec(pod: &Pod, id: &str, hostname: &str, ip: Option<&str>) -> String {
    let status = pod.status().status.expect("a sandbox status");
    let reported = status.network.map(|n| n.ip).unwrap_or_default();
    if let Some(ip) = ip {
        assert_eq!(reported, ip, "{hostname}: the pod IP changed");
    }
    let out = pod
        .exec(id, &["sh", "-c", LOOK_AROUND], 0)
        .unwrap_or_else(|e| fail(pod.harness, &format!("ExecSync in {hostname}"), &e));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.exit_code == 0
            && stdout.lines().next() == Some(hostname)
            && stdout.contains(&format!("inet {reported}/24")),
        "ExecSync in {hostname}: {out:?}, want its hostname and {reported}/24 on eth0"
    );
    reported
}

/// Waits until PodSandboxStatus says NOTREADY (containerd marks the
/// sandbox so once its pause process's exit reaches it).
fn wait_not_ready(pod: &Pod) {
    let deadline = Instant::now() + GUEST_DEADLINE;
    loop {
        let status = pod.status().status.expect("a sandbox status");
        if status.state == PodSandboxState::SandboxNotready as i32 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pod {}: still {:?} after its VM was killed\n{}",
            pod.id,
            PodSandboxState::try_from(status.state),
            pod.harness.containerd().log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// StopContainer of `main` with `grace_s` (none for one that has exited
/// already, as the kubelet does), RemoveContainer, StopPodSandbox (then
/// NOTREADY), RemovePodSandbox; the pod is no longer listed.
fn remove_pod(pod: &Pod, main: &str, grace_s: i64) {
    let client = pod.harness.client();
    if grace_s > 0 {
        let request = StopContainerRequest {
            container_id: main.to_string(),
            timeout: grace_s,
        };
        client
            .runtime(|mut c| async move { c.stop_container(request).await })
            .unwrap_or_else(|e| fail(pod.harness, "StopContainer", &e));
    }
    let request = RemoveContainerRequest {
        container_id: main.to_string(),
    };
    client
        .runtime(|mut c| async move { c.remove_container(request).await })
        .unwrap_or_else(|e| fail(pod.harness, "RemoveContainer", &e));
    pod.stop_and_remove();
}

/// What one pod has on the host while it runs: its shim directory (the
/// VM's sockets, the share and its mounts, the jail's root), its network
/// namespace (its taps and veth live there) and its cgroup.
struct PodTraces {
    id: String,
    dir: PathBuf,
    netns: PathBuf,
    cgroup: PathBuf,
}

impl PodTraces {
    fn of(pod: &Pod) -> PodTraces {
        let dir = pod
            .harness
            .pods_dir()
            .expect("the vmpod shim's state directory")
            .join(CRI_NAMESPACE)
            .join(&pod.id);
        assert!(dir.is_dir(), "no pod directory {}", dir.display());
        let status = pod.status();
        let info: serde_json::Value =
            serde_json::from_str(status.info.get("info").expect("verbose info")).expect("JSON");
        let cgroup = info["runtimeSpec"]["linux"]["cgroupsPath"]
            .as_str()
            .expect("the sandbox spec's cgroupsPath");
        PodTraces {
            id: pod.id.clone(),
            dir,
            netns: pod.netns_path(),
            cgroup: PathBuf::from(cgroup.trim_start_matches('/')),
        }
    }

    /// Asserts that, within the harness's leftover timeout, nothing of the
    /// pod is left: no shim or jail naming it, no directory, mount or
    /// socket of it, no network namespace, no cgroup in any hierarchy.
    fn assert_gone(&self, harness: &CriHarness) {
        assert_gone_in_time(&format!("pod {}", self.id), || self.leftovers(harness));
    }

    fn leftovers(&self, harness: &CriHarness) -> Vec<String> {
        let mut left = Vec::new();
        let shims: Vec<u32> = harness
            .containerd()
            .shim_pids()
            .into_iter()
            .filter(|pid| cmdline(*pid).contains(&self.id))
            .collect();
        if !shims.is_empty() {
            left.push(format!("its shim {shims:?}"));
        }
        let dir = self.dir.display().to_string();
        let jails: Vec<u32> = processes_named("vmpod-jailer")
            .into_iter()
            .chain(processes_named("vmpod-vm"))
            .filter(|pid| cmdline(*pid).contains(&dir) || jailed_under(*pid, &dir))
            .collect();
        if !jails.is_empty() {
            left.push(format!("its jail or VM {jails:?}"));
        }
        if self.dir.exists() {
            left.push(format!(
                "{} ({} mounts below)",
                dir,
                count_mounts_below(&self.dir)
            ));
        }
        if self.netns.exists() {
            left.push(format!("network namespace {}", self.netns.display()));
        }
        left.extend(
            cgroup_dirs(&self.cgroup)
                .into_iter()
                .map(|cgroup| format!("cgroup {}", cgroup.display())),
        );
        left
    }
}

/// The cgroup `relative` in every hierarchy mounted below /sys/fs/cgroup
/// (cgroup2 there, or v1 controllers and cgroup2 in its subdirectories)
/// that exists.
fn cgroup_dirs(relative: &Path) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = fs::read_dir(root)
        .map(|dir| {
            dir.flatten()
                .map(|entry| entry.path())
                .filter(|path| path.is_dir())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    std::iter::once(root.to_path_buf())
        .chain(hierarchies)
        .map(|hierarchy| hierarchy.join(relative))
        .filter(|cgroup| cgroup.is_dir())
        .collect()
}

/// SIGKILLs the `vmpod-vm` of sandbox `id`, found as the process below the
/// `vmpod-jailer` whose command line names the pod's directory (the
/// jailed VM's own arguments name paths in the jail); returns its pid.
fn kill_vm(harness: &CriHarness, id: &str) -> u32 {
    let dir = harness
        .pods_dir()
        .expect("the vmpod shim's state directory")
        .join(CRI_NAMESPACE)
        .join(id)
        .display()
        .to_string();
    let vms: Vec<u32> = processes_named("vmpod-vm")
        .into_iter()
        .filter(|pid| jailed_under(*pid, &dir))
        .collect();
    let [vm] = vms[..] else {
        panic!("pod {id}: want one vmpod-vm below its jailer, found {vms:?}");
    };
    let pid = libc::pid_t::try_from(vm).expect("a pid");
    // SAFETY: kill(2) with a pid just found; no memory is involved.
    let killed = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(killed, 0, "kill {vm}: {}", std::io::Error::last_os_error());
    vm
}

/// Whether an ancestor of `pid` is a `vmpod-jailer` whose command line
/// names `dir`.
fn jailed_under(pid: u32, dir: &str) -> bool {
    let mut next = parent(pid);
    while let Some(ancestor) = next.filter(|&p| p > 1) {
        let line = cmdline(ancestor);
        if line.contains("vmpod-jailer") && line.contains(dir) {
            return true;
        }
        next = parent(ancestor);
    }
    false
}

/// The parent of `pid`, from /proc/<pid>/stat (after the command name,
/// which may hold spaces and parentheses: its field 4).
fn parent(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(1)?.parse().ok()
}

/// The command line of `pid`, its arguments joined by spaces (empty once
/// it is gone).
fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|line| String::from_utf8_lossy(&line).replace('\0', " "))
        .unwrap_or_default()
}
