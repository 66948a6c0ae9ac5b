// SPDX-License-Identifier: Apache-2.0
//! containerd-shim-vmpod-v2 under the real containerd (Debian's 1.6), driven
//! with `ctr`: every container runs in a pod VM booted by vmpod-vm with the
//! agent as its PID 1. A pod boot costs about a minute on emulating hosts,
//! so the checks share few pods: one for the task API (output, exit codes,
//! stdin, a terminal, exec, signals, pause/resume, metrics, a second container
//! joining the pod, a failed create rolling back, delete), and two for the
//! failures (the shim killed, the VM killed). Bad input is checked without a
//! boot: it fails before any VM starts.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmpod_integration_tests::containerd::{
    containerd_or_skip, count_mounts_below, processes_named, unix_sockets_below, Containerd,
    NAMESPACE, RUNTIME,
};
use vmpod_integration_tests::guest_or_skip;
use vmpod_integration_tests::netns::{
    PodNetns, LINK_GATEWAY, LINK_ROUTED_NET, MTU, NEIGHBOUR_IPV4, NEIGHBOUR_MAC, ONLINK_GATEWAY,
    ONLINK_NET, PEER_IPV4, PEER_IPV6, POD_INTERFACE, POD_IPV4, POD_IPV6, ROUTED_NET,
    SECOND_INTERFACE, SECOND_METRIC, SECOND_MTU, SECOND_PEER_IPV4, SECOND_POD_IPV4,
};

/// CRI's annotations that put a container into an existing pod.
const JOIN: [&str; 2] = ["--annotation", "io.kubernetes.cri.container-type=container"];

/// How often a step is tried again after the host's GP fault killed its
/// guest process (kvm_pvm hosts only). Here a pod's first process faulted
/// in 2 of 7 test runs (a `true` in 6 of 8 bench runs), an exec in about a
/// quarter of tries: nine attempts make a spurious failure rare.
const HOST_FAULT_RETRIES: usize = 8;

/// How long a detached container's process is watched after its start:
/// a process the host's GP fault kills dies in its first seconds (seen
/// 2.5 s in, reported 3.1 s after the start).
const STARTUP_WATCH: Duration = Duration::from_secs(12);

/// Whether this host's KVM emulates guest CPL0 (kvm_pvm), where guest
/// processes were seen dying of a general protection fault at their first
/// TLS access after exec, at random (README, "Known host faults").
fn kvm_pvm_host() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// How long a state change in the guest may take (the guest's system calls
/// are emulated here: ~0.4 ms each).
const GUEST_DEADLINE: Duration = Duration::from_secs(120);

/// containerd with the vmpod shim, a busybox image and the shim's config.
struct Fixture {
    containerd: Containerd,
    image: String,
    /// The shim's `state-dir`: pod directories.
    pods: PathBuf,
    work: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // containerd's log carries the shims' logs (and the agents').
            eprintln!("containerd's log (tail):\n{}", self.containerd.log_tail(80));
        }
        let _ = self.containerd.stop();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Whether the agent initrd is built; if not, says why the test skips.
fn agent_initrd_or_skip(test: &str) -> bool {
    match std::env::var_os("VMPOD_AGENT_INITRD").map(PathBuf::from) {
        Some(path) if path.is_file() => true,
        other => {
            assert!(
                std::env::var_os("VMPOD_REQUIRE_GUEST").is_none(),
                "VMPOD_AGENT_INITRD {other:?} is not a built initrd"
            );
            eprintln!("skipped {test}: no agent initrd (run ./test.sh)");
            false
        }
    }
}

/// Starts containerd for `test` with a shim config made of `extra` on top of
/// the guest artifacts; `None` when the test must skip (printed).
fn fixture(test: &str, extra: &str) -> Option<Fixture> {
    guest_or_skip(test)?;
    if !agent_initrd_or_skip(test) || !containerd_or_skip(test, &["script"]) {
        return None;
    }
    let work = std::env::temp_dir().join(format!("vmpod-shim-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let pods = work.join("pods");
    let containerd = Containerd::with_vmpod_shim(&work, extra, false).expect("containerd");
    let image = containerd.import_busybox().expect("busybox image");
    Some(Fixture {
        containerd,
        image,
        pods,
        work,
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Fixture {
    fn ctr(&self, args: &[&str]) -> Output {
        self.containerd.ctr(args)
    }

    /// `ctr run` with the vmpod runtime; `before_image` are flags.
    fn run(&self, before_image: &[&str], id: &str, command: &[&str]) -> Output {
        let mut args = vec!["run", "--runtime", RUNTIME];
        args.extend_from_slice(before_image);
        args.push(&self.image);
        args.push(id);
        args.extend_from_slice(command);
        self.ctr(&args)
    }

    /// Asserts `ctr` succeeded, with its output and containerd's log otherwise.
    fn ok(&self, what: &str, out: &Output) {
        assert!(
            out.status.success(),
            "{what}: {:?}\nstdout {:?}\nstderr {:?}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.containerd.log_tail(40)
        );
    }

    /// The status column of `ctr task ls` for `id` (None: no such task).
    fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout).lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&id)).then(|| fields.last().unwrap_or(&"").to_string())
        })
    }

    fn wait_status(&self, id: &str, wanted: Option<&str>) {
        let deadline = Instant::now() + GUEST_DEADLINE;
        while self.task_status(id).as_deref() != wanted {
            assert!(
                Instant::now() < deadline,
                "task {id}: status {:?}, want {wanted:?}",
                self.task_status(id)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The `general protection fault` lines on pod `pod`'s guest console.
    fn host_faults(&self, pod: &str) -> usize {
        std::fs::read_to_string(self.pods.join(NAMESPACE).join(pod).join("console.log"))
            .unwrap_or_default()
            .matches("general protection fault")
            .count()
    }

    /// Runs `step` (given the attempt number, for fresh ids) and retries it
    /// when, on a kvm_pvm host, the guest process died of that host's GP
    /// fault (exit 139 and a new fault line on the pod's console; see the
    /// README). Anywhere else, and for any other result, the first outcome
    /// counts.
    fn retry_host_fault<T>(
        &self,
        pod: &str,
        what: &str,
        mut step: impl FnMut(usize) -> T,
        status: impl Fn(&T) -> Option<i32>,
    ) -> T {
        let mut attempt = 0;
        loop {
            let before = self.host_faults(pod);
            let outcome = step(attempt);
            let faulted = status(&outcome) == Some(139) && self.host_faults(pod) > before;
            if !(faulted && kvm_pvm_host() && attempt < HOST_FAULT_RETRIES) {
                return outcome;
            }
            eprintln!("{what}: the guest process died of this host's GP fault (kvm_pvm); again");
            attempt += 1;
        }
    }

    /// `ctr run -d`, then watches the task for [`STARTUP_WATCH`]: when its
    /// process died of the host's GP fault on the way in, the container is
    /// removed and made again.
    fn start_detached(&self, pod: &str, flags: &[&str], id: &str, command: &[&str]) {
        for attempt in 0..=HOST_FAULT_RETRIES {
            let before = self.host_faults(pod);
            let out = self.run(&[&["-d"], flags].concat(), id, command);
            self.ok(&format!("ctr run -d {id}"), &out);
            let watched = Instant::now();
            let mut status = self.task_status(id);
            while status.as_deref() == Some("RUNNING") && watched.elapsed() < STARTUP_WATCH {
                std::thread::sleep(Duration::from_millis(500));
                status = self.task_status(id);
            }
            if status.as_deref() == Some("RUNNING") {
                return;
            }
            assert!(
                kvm_pvm_host() && self.host_faults(pod) > before && attempt < HOST_FAULT_RETRIES,
                "{id}: {status:?} instead of RUNNING\n{}",
                self.containerd.log_tail(40)
            );
            eprintln!("{id}: {status:?} after the host's GP fault; again");
            let _ = self.ctr(&["task", "rm", "-f", id]);
            let _ = self.ctr(&["container", "rm", id]);
        }
    }

    /// `vmpod-vm` processes of this fixture's pods.
    fn vmm_pids(&self) -> Vec<u32> {
        let pods = self.pods.display().to_string();
        processes_named("vmpod-vm")
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| text(&cmdline).contains(&pods))
            })
            .collect()
    }

    /// Nothing of any pod is left: no VM, no shim, no mount, no socket, no
    /// pod directory.
    fn assert_nothing_left(&self, when: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let vmms = self.vmm_pids();
            let shims = self.containerd.shim_pids();
            let mounts = count_mounts_below(&self.pods) + count_mounts_below(self.containerd.dir());
            let sockets = unix_sockets_below(&self.pods);
            let pod_dirs: Vec<_> = std::fs::read_dir(self.pods.join(NAMESPACE))
                .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
                .unwrap_or_default();
            if vmms.is_empty()
                && shims.is_empty()
                && mounts == 0
                && sockets.is_empty()
                && pod_dirs.is_empty()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: left behind: VMs {vmms:?}, shims {shims:?}, {mounts} mounts, \
                 sockets {sockets:?}, pod dirs {pod_dirs:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `ctr events`, collected in the background.
struct Events {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Events {
    fn watch(fixture: &Fixture) -> Events {
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(fixture.containerd.address())
            .args(["--namespace", NAMESPACE, "events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().unwrap().push(line);
            }
        });
        Events { child, lines }
    }

    /// Waits for an event line containing every one of `parts`.
    fn expect(&self, parts: &[&str]) {
        let deadline = Instant::now() + GUEST_DEADLINE;
        loop {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|line| parts.iter().all(|part| line.contains(part)))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no event with {parts:?} in:\n{}",
                self.lines.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("events:\n{}", self.lines.lock().unwrap().join("\n"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn test_pod_runs_the_task_api_through_ctr() {
    let test = "test_pod_runs_the_task_api_through_ctr";
    let Some(f) = fixture(test, "") else {
        return;
    };
    let events = Events::watch(&f);
    let join = [
        &JOIN[..],
        &["--annotation", "io.kubernetes.cri.sandbox-id=vp-pod"],
    ]
    .concat();

    // The pod: its first container boots the VM.
    let booted = Instant::now();
    f.start_detached("vp-pod", &[], "vp-pod", &["sleep", "3600"]);
    let boot = booted.elapsed();
    assert_eq!(f.vmm_pids().len(), 1, "one VM for the pod");
    assert_eq!(f.task_status("vp-pod").as_deref(), Some("RUNNING"));

    // A second container joins the pod (same shim, same VM): output, error
    // output and exit status come back through ctr.
    let started = Instant::now();
    let out = f.retry_host_fault(
        "vp-pod",
        "ctr run --rm vp-c2",
        |attempt| {
            f.run(
                &["--rm", join[0], join[1], join[2], join[3]],
                &format!("vp-c2-{attempt}"),
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
            )
        },
        |out| out.status.code(),
    );
    let joined_run = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "stderr {:?}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "out\n");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(
        f.vmm_pids().len(),
        1,
        "the joined container used the pod's VM"
    );
    assert_eq!(f.containerd.shim_pids().len(), 1, "one shim for the pod");
    // A privileged one: its spec lists every host device, a CreateContainer
    // request larger than one of the guest's 4 KiB vsock buffers.
    let out = f.retry_host_fault(
        "vp-pod",
        "ctr run --rm --privileged vp-priv",
        |attempt| {
            f.run(
                &["--rm", "--privileged", join[0], join[1], join[2], join[3]],
                &format!("vp-priv-{attempt}"),
                &["sh", "-c", "test -c /dev/net/tun && echo privileged"],
            )
        },
        |out| out.status.code(),
    );
    f.ok("ctr run --privileged", &out);
    assert_eq!(text(&out.stdout), "privileged\n");

    // Exec: exit status, stdin to its end, a terminal with its size.
    let out = f.retry_host_fault(
        "vp-pod",
        "exec e-exit",
        |attempt| {
            let exec_id = format!("e-exit-{attempt}");
            f.ctr(&[
                "task",
                "exec",
                "--exec-id",
                &exec_id,
                "vp-pod",
                "sh",
                "-c",
                "echo exec; exit 4",
            ])
        },
        |out| out.status.code(),
    );
    assert_eq!(out.status.code(), Some(4), "stderr {:?}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "exec\n");
    // No network namespace path in the spec: loopback only.
    let links = f.retry_host_fault(
        "vp-pod",
        "exec e-links",
        |attempt| {
            let exec_id = format!("e-links-{attempt}");
            f.ctr(&[
                "task",
                "exec",
                "--exec-id",
                &exec_id,
                "vp-pod",
                "ip",
                "-o",
                "link",
            ])
        },
        |out| out.status.code(),
    );
    f.ok("exec e-links", &links);
    let names: Vec<String> = text(&links.stdout)
        .lines()
        .filter_map(|line| Some(line.split(": ").nth(1)?.to_owned()))
        .collect();
    assert_eq!(names, ["lo"], "{}", text(&links.stdout));
    let log = std::fs::read_to_string(f.containerd.log_path()).unwrap_or_default();
    assert!(
        log.contains("the spec names no network namespace: the pod has loopback only"),
        "the shim's log does not say the pod has no network:\n{}",
        f.containerd.log_tail(40)
    );
    let input = b"line one\nline two\n";
    let cat = f.retry_host_fault(
        "vp-pod",
        "exec e-cat",
        |attempt| {
            let exec_id = format!("e-cat-{attempt}");
            f.containerd.ctr_with_input(
                &["task", "exec", "--exec-id", &exec_id, "vp-pod", "cat"],
                input,
                GUEST_DEADLINE,
            )
        },
        |cat| cat.status,
    );
    assert_eq!(cat.status, Some(0), "{cat:?}");
    assert_eq!(cat.stdout.as_bytes(), input);
    let tty = f.retry_host_fault(
        "vp-pod",
        "exec -t e-tty",
        |attempt| {
            Command::new("script")
                .args(["-qec"])
                .arg(format!(
                    "stty rows 30 cols 100; ctr --address {} --namespace {NAMESPACE} task exec -t --exec-id e-tty-{attempt} vp-pod sh -c 'tty; stty size'",
                    f.containerd.address().display()
                ))
                .arg("/dev/null")
                .stdin(Stdio::null())
                .output()
                .unwrap()
        },
        // script(1) does not pass the status on; a fault shows as no output.
        |tty| if text(&tty.stdout).contains("/dev/pts/") { Some(0) } else { Some(139) },
    );
    let tty_out = text(&tty.stdout);
    assert!(tty_out.contains("/dev/pts/"), "{tty_out:?}");
    // ctr passes its terminal's size on (ResizePty).
    assert!(tty_out.contains("30 100"), "{tty_out:?}");

    // Signals: SIGTERM reaches the container's process, which exits 42.
    f.start_detached(
        "vp-pod",
        &[join[0], join[1], join[2], join[3]],
        "vp-term",
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready > /tmp/ready; while true; do sleep 1; done",
        ],
    );
    let deadline = Instant::now() + GUEST_DEADLINE;
    let mut poll = 0;
    while !f
        .ctr(&[
            "task",
            "exec",
            "--exec-id",
            &format!("e-ready-{poll}"),
            "vp-term",
            "cat",
            "/tmp/ready",
        ])
        .status
        .success()
    {
        poll += 1;
        assert!(Instant::now() < deadline, "vp-term never got ready");
        std::thread::sleep(Duration::from_millis(500));
    }
    f.ok(
        "kill -s SIGTERM",
        &f.ctr(&["task", "kill", "-s", "SIGTERM", "vp-term"]),
    );
    f.wait_status("vp-term", Some("STOPPED"));
    events.expect(&["/tasks/exit", "\"id\":\"vp-term\"", "\"exit_status\":42"]);
    f.ok("task rm vp-term", &f.ctr(&["task", "rm", "vp-term"]));
    f.ok(
        "container rm vp-term",
        &f.ctr(&["container", "rm", "vp-term"]),
    );

    // Pause, resume, processes, metrics.
    f.ok("pause", &f.ctr(&["task", "pause", "vp-pod"]));
    assert_eq!(f.task_status("vp-pod").as_deref(), Some("PAUSED"));
    f.ok("resume", &f.ctr(&["task", "resume", "vp-pod"]));
    assert_eq!(f.task_status("vp-pod").as_deref(), Some("RUNNING"));
    let ps = f.ctr(&["task", "ps", "vp-pod"]);
    f.ok("task ps", &ps);
    assert!(
        text(&ps.stdout).lines().count() >= 2,
        "{:?}",
        text(&ps.stdout)
    );
    let metrics = f.ctr(&["task", "metrics", "vp-pod"]);
    f.ok("task metrics", &metrics);
    let metrics = text(&metrics.stdout);
    for figure in ["pids.current", "memory.usage", "cpu.usage_usec"] {
        assert!(metrics.contains(figure), "{figure} missing: {metrics}");
    }

    // A create that fails half-way (a bind source the host lacks) rolls back
    // and leaves the pod as it was.
    let mounts_before = count_mounts_below(&f.pods);
    let out = f.run(
        &[
            "--rm",
            join[0],
            join[1],
            join[2],
            join[3],
            "--mount",
            "type=bind,src=/nonexistent/vmpod-src,dst=/data,options=rbind",
        ],
        "vp-bad",
        &["true"],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("mount source /nonexistent/vmpod-src does not exist on the host"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert_eq!(count_mounts_below(&f.pods), mounts_before);
    assert!(!f.pods.join(NAMESPACE).join("vp-pod/shared/vp-bad").exists());
    let _ = f.ctr(&["container", "rm", "vp-bad"]);
    assert_eq!(f.task_status("vp-pod").as_deref(), Some("RUNNING"));

    // Delete: the last container takes the VM, the shim and every mount,
    // socket and directory of the pod with it.
    f.ok("kill", &f.ctr(&["task", "kill", "-s", "SIGKILL", "vp-pod"]));
    f.wait_status("vp-pod", Some("STOPPED"));
    f.ok("task rm", &f.ctr(&["task", "rm", "vp-pod"]));
    f.ok("container rm", &f.ctr(&["container", "rm", "vp-pod"]));
    f.assert_nothing_left("after the pod's last delete");

    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/delete",
    ] {
        events.expect(&[topic]);
    }
    events.expect(&["/tasks/exit", "\"id\":\"vp-pod\"", "\"exit_status\":137"]);
    eprintln!(
        "shim under containerd: pod boot (ctr run -d) {:.1} s, joined ctr run --rm {:.1} s; terminal said {:?}",
        boot.as_secs_f64(),
        joined_run.as_secs_f64(),
        tty_out.trim()
    );
}

#[test]
fn test_failures_lose_nothing() {
    let test = "test_failures_lose_nothing";
    let Some(f) = fixture(test, "") else {
        return;
    };
    let events = Events::watch(&f);

    // The shim is killed: containerd's cleanup (the shim's `delete`) ends
    // the VM and removes the pod's mounts, sockets and directory.
    f.ok(
        "ctr run -d vf-shim",
        &f.run(&["-d"], "vf-shim", &["sleep", "3600"]),
    );
    let shims = f.containerd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    assert_eq!(f.vmm_pids().len(), 1);
    // SAFETY: kill(2) on the shim's pid, found just above.
    unsafe { libc::kill(shims[0] as i32, libc::SIGKILL) };
    events.expect(&["/tasks/exit", "\"container_id\":\"vf-shim\""]);
    let _ = f.ctr(&["task", "rm", "vf-shim"]);
    f.ok(
        "container rm vf-shim",
        &f.ctr(&["container", "rm", "vf-shim"]),
    );
    f.assert_nothing_left("after the shim was killed");

    // The VM dies: every task of the pod (init and exec) exits non-zero with
    // a TaskExit event.
    f.start_detached("vf-vm", &[], "vf-vm", &["sleep", "3600"]);
    let mut exec_id = String::new();
    for attempt in 0..=HOST_FAULT_RETRIES {
        exec_id = format!("e-long-{attempt}");
        let before = f.host_faults("vf-vm");
        let out = f.ctr(&[
            "task",
            "exec",
            "--detach",
            "--exec-id",
            &exec_id,
            "vf-vm",
            "sleep",
            "3600",
        ]);
        f.ok("exec --detach", &out);
        std::thread::sleep(STARTUP_WATCH);
        if !(kvm_pvm_host() && f.host_faults("vf-vm") > before) {
            break;
        }
        eprintln!("{exec_id}: the host's GP fault; again");
    }
    let vmms = f.vmm_pids();
    assert_eq!(vmms.len(), 1);
    // SAFETY: kill(2) on the pod's VMM, found just above.
    unsafe { libc::kill(vmms[0] as i32, libc::SIGKILL) };
    f.wait_status("vf-vm", Some("STOPPED"));
    events.expect(&["/tasks/exit", "\"id\":\"vf-vm\"", "\"exit_status\":255"]);
    events.expect(&[
        "/tasks/exit",
        &format!("\"id\":\"{exec_id}\""),
        "\"exit_status\":255",
    ]);
    f.ok("task rm vf-vm", &f.ctr(&["task", "rm", "vf-vm"]));
    f.ok("container rm vf-vm", &f.ctr(&["container", "rm", "vf-vm"]));
    f.assert_nothing_left("after the VM was killed");
}

#[test]
fn test_bad_input_fails_in_one_line_before_any_vm() {
    let test = "test_bad_input_fails_in_one_line_before_any_vm";
    let Some(f) = fixture(test, "max-vcpus = 2\n") else {
        return;
    };
    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["--annotation", "io.vmpod.vm.vcpus=3"],
            "vb-vcpus",
            "annotation io.vmpod.vm.vcpus=\"3\": not a number within 1..=2 (max-vcpus)",
        ),
        (
            &["--annotation", "io.vmpod.vm.memory=lots"],
            "vb-memory",
            "annotation io.vmpod.vm.memory=\"lots\": not a number of MiB",
        ),
        (
            &[
                JOIN[0],
                JOIN[1],
                "--annotation",
                "io.kubernetes.cri.sandbox-id=vb-nopod",
            ],
            "vb-join",
            "names pod \"vb-nopod\", which does not run",
        ),
        (
            &["--with-ns", "network:/nonexistent/netns"],
            "vb-netns",
            "network namespace /nonexistent/netns: No such file or directory",
        ),
    ];
    for (flags, id, message) in cases {
        let out = f.run(&[&["--rm"], flags].concat(), id, &["true"]);
        assert!(!out.status.success(), "{id} ran");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(message), "{id}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{id}: one line: {stderr}"
        );
        let _ = f.ctr(&["container", "rm", id]);
        f.assert_nothing_left(id);
    }

    // A bad configuration file fails the first create, naming the key.
    let bad = fixture(&format!("{test}-config"), "memory = 1\n").expect("prerequisites checked");
    let out = bad.run(&["--rm"], "vb-config", &["true"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(": memory: 1 MiB is not within 64..=2048"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    let _ = bad.ctr(&["container", "rm", "vb-config"]);
    bad.assert_nothing_left("after a bad config");
}

/// A TCP server in `ns` on `address`: accepts one connection within
/// [`GUEST_DEADLINE`], reads a line and answers `reply`; returns the line.
fn serve_once(
    ns: &vmpod_integration_tests::netns::Netns,
    address: (&'static str, u16),
    reply: &'static str,
) -> std::thread::JoinHandle<String> {
    let listener = ns.run(|| std::net::TcpListener::bind(address).expect("bind in the peer"));
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + GUEST_DEADLINE;
        let (stream, _) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return String::from("(no connection)");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => return format!("(accept: {err})"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(GUEST_DEADLINE)).unwrap();
        let mut line = String::new();
        let _ = std::io::BufReader::new(&stream).read_line(&mut line);
        let _ = std::io::Write::write_all(&mut &stream, reply.as_bytes());
        line
    })
}

#[test]
fn test_pod_network_reaches_the_guest() {
    let test = "test_pod_network_reaches_the_guest";
    let Some(f) = fixture(test, "") else {
        return;
    };
    if !containerd_or_skip(test, &["ip", "tc"]) {
        return;
    }
    let net = PodNetns::create(&format!("c{}", std::process::id()));
    net.add_second_interface();
    let veth_before = net.pod_state();
    let etc = f.work.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let resolv = "nameserver 192.0.2.53\nsearch pod.test\n";
    let hosts = "127.0.0.1 localhost\n192.0.2.2 vn-pod\n";
    std::fs::write(etc.join("resolv.conf"), resolv).unwrap();
    std::fs::write(etc.join("hosts"), hosts).unwrap();
    let with_ns = format!("network:{}", net.pod.path().display());
    let mount = |file: &str| {
        format!(
            "type=bind,src={},dst=/etc/{file},options=rbind:ro",
            etc.join(file).display()
        )
    };
    let (resolv_mount, hosts_mount) = (mount("resolv.conf"), mount("hosts"));
    f.start_detached(
        "vn-pod",
        &[
            "--with-ns",
            &with_ns,
            "--mount",
            &resolv_mount,
            "--mount",
            &hosts_mount,
        ],
        "vn-pod",
        &["sleep", "3600"],
    );
    let links = net.pod.ip(&["-o", "link", "show"]);
    assert!(
        links.contains("tap0_vmpod") && links.contains("tap1_vmpod"),
        "{links}"
    );

    let exec = |name: &str, command: &[&str]| {
        let out = f.retry_host_fault(
            "vn-pod",
            name,
            |attempt| {
                let exec_id = format!("{name}-{attempt}");
                f.ctr(&[&["task", "exec", "--exec-id", &exec_id, "vn-pod"], command].concat())
            },
            |out| out.status.code(),
        );
        f.ok(name, &out);
        text(&out.stdout)
    };
    // The guest's interface is the veth's: name, MAC, MTU, addresses.
    let addr = exec("addr", &["ip", "addr", "show", POD_INTERFACE]);
    for wanted in [
        format!("mtu {MTU}"),
        format!("link/ether {}", net.pod_mac()),
        format!("inet {POD_IPV4}/24"),
        format!("inet6 {POD_IPV6}/64"),
    ] {
        assert!(addr.contains(&wanted), "no {wanted:?} in:\n{addr}");
    }
    // The second interface: its own MAC, MTU and address.
    let addr = exec("addr1", &["ip", "addr", "show", SECOND_INTERFACE]);
    for wanted in [
        format!("mtu {SECOND_MTU}"),
        format!("link/ether {}", net.mac_of(SECOND_INTERFACE)),
        format!("inet {SECOND_POD_IPV4}/24"),
    ] {
        assert!(addr.contains(&wanted), "no {wanted:?} in:\n{addr}");
    }
    let routes = exec("route", &["ip", "route"]);
    for (wanted, flag) in [
        (format!("default via {PEER_IPV4} dev {POD_INTERFACE}"), ""),
        (
            format!("default via {SECOND_PEER_IPV4} dev {SECOND_INTERFACE}"),
            &*format!("metric {SECOND_METRIC}"),
        ),
        (format!("{LINK_GATEWAY} dev {POD_INTERFACE}"), "scope link"),
        (
            format!("{LINK_ROUTED_NET} via {LINK_GATEWAY} dev {POD_INTERFACE}"),
            "",
        ),
        (
            format!("{ROUTED_NET} via {PEER_IPV4} dev {POD_INTERFACE}"),
            "",
        ),
        (
            format!("{ONLINK_NET} via {ONLINK_GATEWAY} dev {POD_INTERFACE}"),
            "onlink",
        ),
    ] {
        assert!(
            routes
                .lines()
                .any(|line| line.starts_with(&wanted) && line.contains(flag)),
            "no {wanted:?} {flag} in:\n{routes}"
        );
    }
    let neighbours = exec("neigh", &["ip", "neigh"]);
    assert!(
        neighbours
            .lines()
            .any(|line| line.starts_with(NEIGHBOUR_IPV4)
                && line.contains(&format!("dev {POD_INTERFACE} lladdr {NEIGHBOUR_MAC}"))
                && line.contains("PERMANENT")),
        "no permanent {NEIGHBOUR_IPV4} in:\n{neighbours}"
    );
    let routes6 = exec("route6", &["ip", "-6", "route"]);
    assert!(
        routes6.contains(&format!("default via {PEER_IPV6} dev {POD_INTERFACE}")),
        "{routes6}"
    );
    assert_eq!(exec("resolv", &["cat", "/etc/resolv.conf"]), resolv);
    assert_eq!(exec("hosts", &["cat", "/etc/hosts"]), hosts);

    // The container reaches a server in the peer namespace.
    let server = serve_once(&net.peer, (PEER_IPV4, 7000), "pong from the peer\n");
    let reply = exec(
        "connect",
        &["sh", "-c", "echo ping from the pod | nc 192.0.2.1 7000"],
    );
    assert_eq!(server.join().unwrap(), "ping from the pod\n");
    assert_eq!(reply, "pong from the peer\n");
    // And through the second interface.
    let server = serve_once(&net.peer, (SECOND_PEER_IPV4, 7001), "pong on net1\n");
    let reply = exec(
        "connect1",
        &[
            "sh",
            "-c",
            &format!("echo ping on net1 | nc {SECOND_PEER_IPV4} 7001"),
        ],
    );
    assert_eq!(server.join().unwrap(), "ping on net1\n");
    assert_eq!(reply, "pong on net1\n");

    // The peer reaches a server in the container.
    for attempt in 0..=HOST_FAULT_RETRIES {
        let before = f.host_faults("vn-pod");
        f.ok(
            "exec --detach listen",
            &f.ctr(&[
                "task",
                "exec",
                "--detach",
                "--exec-id",
                &format!("listen-{attempt}"),
                "vn-pod",
                "sh",
                "-c",
                "echo pong from the pod | nc -l -p 8080",
            ]),
        );
        let answer = net.peer.run(|| {
            let deadline = Instant::now() + GUEST_DEADLINE;
            loop {
                let connected = std::net::TcpStream::connect_timeout(
                    &(POD_IPV4.parse::<std::net::IpAddr>().unwrap(), 8080).into(),
                    Duration::from_secs(5),
                );
                if let Ok(stream) = connected {
                    stream.set_read_timeout(Some(GUEST_DEADLINE)).unwrap();
                    let mut line = String::new();
                    let _ = std::io::BufReader::new(&stream).read_line(&mut line);
                    return Some(line);
                }
                if Instant::now() > deadline || f.host_faults("vn-pod") > before {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        match answer {
            Some(line) => {
                assert_eq!(line, "pong from the pod\n");
                break;
            }
            None => assert!(
                kvm_pvm_host() && f.host_faults("vn-pod") > before && attempt < HOST_FAULT_RETRIES,
                "the peer could not reach the container's server"
            ),
        }
        eprintln!("listen-{attempt}: the host's GP fault; again");
    }

    // Delete: no tap or tc filter is left, the veth is as the CNI made it.
    f.ok(
        "task kill",
        &f.ctr(&["task", "kill", "-s", "KILL", "vn-pod"]),
    );
    f.wait_status("vn-pod", Some("STOPPED"));
    f.ok("task rm", &f.ctr(&["task", "rm", "vn-pod"]));
    f.ok("container rm", &f.ctr(&["container", "rm", "vn-pod"]));
    f.assert_nothing_left("after the networked pod");
    let links = net.pod.ip(&["-o", "link", "show"]);
    assert!(!links.contains("_vmpod"), "tap left behind: {links}");
    let qdiscs = net.pod.tc(&["qdisc", "show"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    assert_eq!(net.pod_state(), veth_before);

    // A route the guest refuses (its preferred source is an address on the
    // namespace's lo, which is not carried): the task fails in one line
    // naming the route, and no VM, tap or filter is left.
    net.pod.ip(&["addr", "add", "198.18.9.9/32", "dev", "lo"]);
    net.pod.ip(&[
        "route",
        "add",
        "198.18.10.0/24",
        "via",
        PEER_IPV4,
        "src",
        "198.18.9.9",
    ]);
    let veth_before = net.pod_state();
    let out = f.run(&["--rm", "--with-ns", &with_ns], "vn-refused", &["true"]);
    assert!(!out.status.success(), "vn-refused ran");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "configuring the guest's network: agent UpdateRoutes: adding route to 198.18.10.0/24: "
        ) && !stderr.contains("Status {"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    eprintln!("vn-refused: {}", stderr.trim_end());
    let _ = f.ctr(&["container", "rm", "vn-refused"]);
    f.assert_nothing_left("after the refused route");
    assert_eq!(
        net.pod_state(),
        veth_before,
        "the namespace is not as it was found"
    );
}
