// SPDX-License-Identifier: Apache-2.0
//! One pod's life in the kubelet's order: RunPodSandbox, PodSandboxStatus,
//! containers created and started, their status, ExecSync, the CRI log,
//! stats, StopContainer with a grace period, RemoveContainer,
//! StopPodSandbox, RemovePodSandbox; then nothing is left. Checks of what
//! a container sees (hostname, DNS, address, outputs) are gathered and
//! reported together after the teardown, so that one wrong value does not
//! hide the others or the teardown's checks.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStatsFilter, ContainerStatsRequest, DnsConfig,
    ListContainerStatsRequest, ListContainersRequest, RemoveContainerRequest,
    ReopenContainerLogRequest, RunPodSandboxRequest, StopContainerRequest, VersionRequest,
};
use vmpod_integration_tests::containerd::BUSYBOX_IMAGE;
use vmpod_integration_tests::cri::pod::{container_config, sandbox_config};
use vmpod_integration_tests::cri::{CriHarness, CRI_NAMESPACE, VMPOD_HANDLER};

use crate::calls::{fail, log_lines, Pod};

/// The pod's hostname, set by the sandbox config.
const HOSTNAME: &str = "cri-pod-host";
/// A DNS server of the pod's resolv.conf (TEST-NET-1: never asked).
const DNS_SERVER: &str = "192.0.2.53";
/// The pod's DNS search domain.
const DNS_SEARCH: &str = "vmpod.test";
/// The pod's resolver option.
const DNS_OPTION: &str = "ndots:2";
/// The main container: both streams, then waits, exiting 7 on SIGTERM.
/// No polling loop: every process the guest forks costs it dearly (its
/// kernel code is emulated on our hosts), and a pod busy forking answers
/// every later call slowly.
const MAIN: &str = "echo out-line; echo err-line >&2; \
                    trap 'echo got-term; exit 7' TERM; sleep 2147483647 & wait";
/// What an ExecSync in `main` looks at: the hostname, resolv.conf and
/// eth0's address on stdout, a line on stderr, exit code 3.
const LOOK_AROUND: &str = "hostname; cat /etc/resolv.conf; ip -4 -o addr show eth0; \
                           echo exec-err >&2; exit 3";
/// What `main` exits with on SIGTERM.
const MAIN_TERM_EXIT: i32 = 7;
/// A container that ignores SIGTERM: StopContainer must SIGKILL it.
const STUBBORN: &str = "trap '' TERM; sleep 2147483647 & wait";
/// The grace period `stubborn` gets.
const STUBBORN_GRACE: Duration = Duration::from_secs(2);
/// A container that ends at once with [`QUICK_EXIT`].
const QUICK: &str = "echo bye; exit 5";
/// Its exit code.
const QUICK_EXIT: i32 = 5;
/// A grace period no stop of a container that obeys SIGTERM reaches
/// (its exit code, the TERM handler's, says it was not killed).
const LONG_GRACE: i64 = 120;
/// [`LONG_GRACE`] as a duration.
const LONG_GRACE_DURATION: Duration = Duration::from_secs(120);
/// ExecSync's timeout in the timeout check (its command sleeps an hour).
const EXEC_TIMEOUT_S: i64 = 2;
/// How long that ExecSync may take in all: starting an exec in a loaded
/// emulated guest takes tens of seconds, and so does killing it.
const EXEC_TIMEOUT_BOUND: Duration = Duration::from_secs(300);

/// Checks whose failures are gathered and reported at the end.
#[derive(Default)]
struct Checks(Vec<String>);

impl Checks {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("FAILED CHECK: {what}");
            self.0.push(what);
        }
    }
}

/// The whole life of one pod with `handler`.
pub fn pod_life(harness: &CriHarness, handler: &str) {
    let client = harness.client();
    let version = client
        .runtime(|mut c| async move { c.version(VersionRequest::default()).await })
        .unwrap_or_else(|e| fail(harness, "Version", &e));
    assert_eq!(version.runtime_name, "containerd");
    assert_eq!(version.runtime_api_version, "v1");

    let mut checks = Checks::default();
    let pod = run_pod(harness, handler);
    let netns = pod.netns_path();
    let ip = pod_ip(&pod);

    let bad = pod.create(container_config(
        "bad",
        "docker.io/vmpod/no-such:image",
        &["true"],
    ));
    let bad = bad.expect_err("CreateContainer of a missing image succeeded");
    checks.check(
        bad.message().contains("docker.io/vmpod/no-such:image") && !bad.message().contains('\n'),
        || {
            format!(
                "a missing image: {:?} is not one line naming it",
                bad.message()
            )
        },
    );

    let main = pod.create_and_start(container_config("main", BUSYBOX_IMAGE, &["sh", "-c", MAIN]));
    let status = pod.wait_state(&main, ContainerState::ContainerRunning);
    assert!(status.started_at > 0, "main: no start time: {status:?}");
    assert!(
        status.log_path.ends_with("main_0.log"),
        "main: log path {}",
        status.log_path
    );
    let stubborn = pod.create_and_start(container_config(
        "stubborn",
        BUSYBOX_IMAGE,
        &["sh", "-c", STUBBORN],
    ));
    pod.wait_state(&stubborn, ContainerState::ContainerRunning);

    check_execs(&pod, &main, &ip, &mut checks);
    checks
        .0
        .extend(crate::shm::check_pod_shm(&pod, &main, &stubborn, handler));
    checks
        .0
        .extend(crate::streams::check_streams(&pod, &main, handler));
    check_stats(&pod, &[&main, &stubborn], &mut checks);
    rotate_log(&pod, &main);
    let quick = run_quick(&pod, &mut checks);

    stop_containers(&pod, &main, &stubborn, &mut checks);
    check_logs(&pod, &mut checks);
    remove_pod(&pod, [main, stubborn, quick]);
    harness.assert_nothing_left(&format!("after the {handler} pod"), &[netns]);
    // The vmpod shim's own log lines (runc's shim logs in containerd's
    // format, which this does not read).
    let warnings = if handler == VMPOD_HANDLER {
        shim_warnings(harness)
    } else {
        Vec::new()
    };
    checks.check(warnings.is_empty(), || {
        format!(
            "a normal pod life logged warnings:\n{}",
            warnings.join("\n")
        )
    });
    assert!(
        checks.0.is_empty(),
        "{handler} pod: {} checks failed:\n{}",
        checks.0.len(),
        checks.0.join("\n")
    );
}

/// `quick`, which ends at once: ContainerStatus reports it exited with
/// its code; returns its id.
fn run_quick(pod: &Pod, checks: &mut Checks) -> String {
    let quick = pod.create_and_start(container_config(
        "quick",
        BUSYBOX_IMAGE,
        &["sh", "-c", QUICK],
    ));
    let exited = pod.wait_state(&quick, ContainerState::ContainerExited);
    checks.check(
        exited.exit_code == QUICK_EXIT && exited.reason == "Error",
        || {
            format!(
                "quick: exit code {} reason {:?}, want {QUICK_EXIT} \"Error\"",
                exited.exit_code, exited.reason
            )
        },
    );
    // Not finished >= started: containerd 1.6 stamps the start when
    // StartContainer's task start returns, which for a container that
    // ends at once may be after its exit (seen with vmpod, whose start
    // answers slowly).
    checks.check(
        exited.started_at > 0 && exited.finished_at > exited.created_at,
        || {
            format!(
                "quick: created {} started {} finished {}",
                exited.created_at, exited.started_at, exited.finished_at
            )
        },
    );
    quick
}

/// RunPodSandbox with `handler`, a hostname, DNS and a log directory;
/// PodSandboxStatus says READY with that handler.
fn run_pod<'a>(harness: &'a CriHarness, handler: &str) -> Pod<'a> {
    let name = format!("cri-{handler}");
    let log_dir = harness.log_dir(&name).expect("log directory");
    let dns = DnsConfig {
        servers: vec![DNS_SERVER.to_string()],
        searches: vec![DNS_SEARCH.to_string()],
        options: vec![DNS_OPTION.to_string()],
    };
    let config = sandbox_config(&name, HOSTNAME, &log_dir, dns);
    let request = RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.to_string(),
    };
    let start = Instant::now();
    let id = harness
        .client()
        .runtime(|mut c| async move { c.run_pod_sandbox(request).await })
        .unwrap_or_else(|e| fail(harness, "RunPodSandbox", &e))
        .pod_sandbox_id;
    eprintln!("{handler}: RunPodSandbox took {:?}", start.elapsed());
    let (pod, status) = Pod::ready(harness, id, config);
    assert_eq!(status.runtime_handler, handler);
    pod
}

/// The pod's IP from PodSandboxStatus: the CNI's, in 192.0.2.0/24, not
/// the bridge's.
fn pod_ip(pod: &Pod) -> String {
    let status = pod.status().status.expect("a sandbox status");
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    let addr: Ipv4Addr = ip.parse().unwrap_or_else(|_| panic!("pod IP {ip:?}"));
    assert_eq!(
        addr.octets()[..3],
        [192, 0, 2],
        "pod IP {ip} outside 192.0.2.0/24"
    );
    assert_ne!(addr.octets()[3], 1, "pod IP {ip} is the gateway's");
    ip
}

/// ExecSync: output streams and exit code, what the container sees of
/// the pod (hostname, resolv.conf, its address), and the timeout.
fn check_execs(pod: &Pod, main: &str, ip: &str, checks: &mut Checks) {
    // One exec for all of it: each costs the guest a fork and an exec.
    let out = pod
        .exec(main, &["sh", "-c", LOOK_AROUND], 0)
        .unwrap_or_else(|e| fail(pod.harness, "ExecSync", &e));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    checks.check(out.stderr == b"exec-err\n" && out.exit_code == 3, || {
        format!("ExecSync: {out:?}, want exec-err on stderr and exit code 3")
    });
    let hostname = lines.next().unwrap_or_default();
    checks.check(hostname == HOSTNAME, || {
        format!("hostname in the container: {hostname:?}, want {HOSTNAME:?}")
    });
    let rest: Vec<&str> = lines.collect();
    checks.check(
        [
            format!("nameserver {DNS_SERVER}"),
            format!("search {DNS_SEARCH}"),
            format!("options {DNS_OPTION}"),
        ]
        .iter()
        .all(|want| rest.contains(&want.as_str())),
        || format!("resolv.conf in the container: {rest:?}"),
    );
    checks.check(
        rest.iter()
            .any(|line| line.contains(&format!("inet {ip}/24"))),
        || format!("eth0 in the container: {rest:?}, want {ip}/24"),
    );
    let start = Instant::now();
    let timed_out = pod.exec(main, &["sleep", "3600"], EXEC_TIMEOUT_S);
    let took = start.elapsed();
    checks.check(
        timed_out.as_ref().is_err_and(|e| {
            e.code() == tonic::Code::DeadlineExceeded && e.message().contains("timeout")
        }) && took < EXEC_TIMEOUT_BOUND,
        || format!("ExecSync past its {EXEC_TIMEOUT_S} s timeout: {timed_out:?} after {took:?}"),
    );
}

/// ContainerStats of a running container and ListContainerStats of the
/// pod: CPU time and memory, as containerd decodes the runtime's metrics.
fn check_stats(pod: &Pod, running: &[&str], checks: &mut Checks) {
    let client = pod.harness.client();
    let request = ContainerStatsRequest {
        container_id: running[0].to_string(),
    };
    let stats = client
        .runtime(|mut c| async move { c.container_stats(request).await })
        .unwrap_or_else(|e| fail(pod.harness, "ContainerStats", &e))
        .stats
        .expect("stats");
    let cpu = stats
        .cpu
        .as_ref()
        .and_then(|c| c.usage_core_nano_seconds.as_ref())
        .map_or(0, |v| v.value);
    let memory = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref())
        .map_or(0, |v| v.value);
    checks.check(cpu > 0 && memory > 0, || {
        format!("ContainerStats: CPU {cpu} ns, working set {memory} B: {stats:?}")
    });
    let request = ListContainerStatsRequest {
        filter: Some(ContainerStatsFilter {
            pod_sandbox_id: pod.id.clone(),
            ..Default::default()
        }),
    };
    let listed = client
        .runtime(|mut c| async move { c.list_container_stats(request).await })
        .unwrap_or_else(|e| fail(pod.harness, "ListContainerStats", &e))
        .stats;
    let ids: Vec<&str> = listed
        .iter()
        .filter_map(|s| s.attributes.as_ref())
        .map(|a| a.id.as_str())
        .collect();
    checks.check(running.iter().all(|id| ids.contains(id)), || {
        format!("ListContainerStats of the pod: {ids:?}, want {running:?}")
    });
}

/// StopContainer: `main` ends on SIGTERM with its own code well inside
/// its grace period; `stubborn` is SIGKILLed when its grace period ends.
fn stop_containers(pod: &Pod, main: &str, stubborn: &str, checks: &mut Checks) {
    let stop = |id: &str, timeout: i64| {
        let request = StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        };
        let start = Instant::now();
        pod.harness
            .client()
            .runtime(|mut c| async move { c.stop_container(request).await })
            .unwrap_or_else(|e| fail(pod.harness, "StopContainer", &e));
        start.elapsed()
    };
    let took = stop(main, LONG_GRACE);
    let status = pod.wait_state(main, ContainerState::ContainerExited);
    checks.check(
        status.exit_code == MAIN_TERM_EXIT && took < LONG_GRACE_DURATION,
        || {
            format!(
                "main stopped after {took:?} with {}, want {MAIN_TERM_EXIT} (its TERM handler)",
                status.exit_code
            )
        },
    );
    let grace = i64::try_from(STUBBORN_GRACE.as_secs()).unwrap_or(2);
    let took = stop(stubborn, grace);
    let status = pod.wait_state(stubborn, ContainerState::ContainerExited);
    checks.check(
        status.exit_code == 128 + libc::SIGKILL && took >= STUBBORN_GRACE,
        || {
            format!(
                "stubborn stopped after {took:?} with {} ({:?}: {:?}, exited at {}), \
                 want SIGKILL after {STUBBORN_GRACE:?}\n{}",
                status.exit_code,
                status.reason,
                status.message,
                status.finished_at,
                pod_diagnosis(pod)
            )
        },
    );
}

/// What tells why a container ended early: the end of the guest's console
/// (the kernel's OOM and fault reports) and of containerd's log (the
/// shim's and the agent's lines).
fn pod_diagnosis(pod: &Pod) -> String {
    let console = pod
        .harness
        .pods_dir()
        .map(|dir| dir.join(CRI_NAMESPACE).join(&pod.id).join("console.log"))
        .and_then(|path| std::fs::read(path).ok())
        .map(|bytes| {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(80)..].join("\n")
        })
        .unwrap_or_else(|| "(no console)".into());
    format!(
        "--- guest console:\n{console}\n--- containerd's log:\n{}",
        pod.harness.containerd().log_tail(200)
    )
}

/// Rotates `main`'s log as the kubelet does: once its first lines are
/// there, renames the file and asks for ReopenContainerLog; the TERM
/// handler's line then goes to a new file.
fn rotate_log(pod: &Pod, main: &str) {
    let log = Path::new(&pod.config.log_directory).join("main_0.log");
    let deadline = Instant::now() + crate::calls::GUEST_DEADLINE;
    while log_lines(&std::fs::read_to_string(&log).unwrap_or_default()).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "main's first lines never reached {log:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::rename(&log, log.with_extension("log.1")).expect("rotate main's log");
    let request = ReopenContainerLogRequest {
        container_id: main.to_string(),
    };
    pod.harness
        .client()
        .runtime(|mut c| async move { c.reopen_container_log(request).await })
        .unwrap_or_else(|e| fail(pod.harness, "ReopenContainerLog", &e));
}

/// The CRI log files in the kubelet's format: each stream's lines of
/// `main` in its rotated file and the TERM handler's in the reopened one,
/// and `quick`'s.
fn check_logs(pod: &Pod, checks: &mut Checks) {
    let dir = Path::new(&pod.config.log_directory);
    let read = |file: &str| log_lines(&std::fs::read_to_string(dir.join(file)).unwrap_or_default());
    let line = |stream: &str, text: &str| (stream.to_string(), text.to_string());
    let rotated = read("main_0.log.1");
    checks.check(
        rotated == [line("stdout", "out-line"), line("stderr", "err-line")]
            || rotated == [line("stderr", "err-line"), line("stdout", "out-line")],
        || format!("main's rotated log: {rotated:?}"),
    );
    let reopened = read("main_0.log");
    checks.check(reopened == [line("stdout", "got-term")], || {
        format!("main's log after ReopenContainerLog: {reopened:?}")
    });
    let quick = read("quick_0.log");
    checks.check(quick == [line("stdout", "bye")], || {
        format!("quick's log: {quick:?}")
    });
}

/// RemoveContainer of `containers`, StopPodSandbox (NOTREADY after it),
/// RemovePodSandbox; nothing of the pod is listed after.
fn remove_pod(pod: &Pod, containers: [String; 3]) {
    let client = pod.harness.client();
    for id in containers {
        let request = RemoveContainerRequest { container_id: id };
        client
            .runtime(|mut c| async move { c.remove_container(request).await })
            .unwrap_or_else(|e| fail(pod.harness, "RemoveContainer", &e));
    }
    let request = ListContainersRequest {
        filter: Some(ContainerFilter {
            pod_sandbox_id: pod.id.clone(),
            ..Default::default()
        }),
    };
    let listed = client
        .runtime(|mut c| async move { c.list_containers(request).await })
        .unwrap_or_else(|e| fail(pod.harness, "ListContainers", &e));
    assert!(
        listed.containers.is_empty(),
        "containers left: {:?}",
        listed.containers
    );
    pod.stop_and_remove();
}

/// The warning and error lines the vmpod shim (and, through it, the agent)
/// wrote to containerd's log: their `tracing` lines carry the level after
/// the time stamp. containerd's own lines (`level=…`) are not the shim's.
pub fn shim_warnings(harness: &CriHarness) -> Vec<String> {
    let log = std::fs::read(harness.containerd().log_path()).unwrap_or_default();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| line.contains("Z  WARN ") || line.contains("Z ERROR "))
        .map(str::to_owned)
        .collect()
}
