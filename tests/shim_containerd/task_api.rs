// SPDX-License-Identifier: Apache-2.0
//! The task API through `ctr` in one pod VM: output, exit codes, stdin, a
//! terminal, exec, signals, pause/resume, metrics, a second container
//! joining the pod, a failed create rolling back, and delete.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmpod_integration_tests::containerd::{count_mounts_below, NAMESPACE};
use vmpod_integration_tests::events::Events;
use vmpod_integration_tests::host_faults::ConsoleWatch;

use crate::fixture::{fixture, text, GUEST_DEADLINE, JOIN};

#[test]
fn test_pod_runs_the_task_api_through_ctr() {
    let test = "test_pod_runs_the_task_api_through_ctr";
    let Some(f) = fixture(test, "") else {
        return;
    };
    let events = Events::watch(&f.containerd, GUEST_DEADLINE);
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
        // script -e passes ctr's status on, which is the process's.
        |tty| tty.status.code(),
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
    loop {
        let console = ConsoleWatch::start(&f.console("vp-pod"));
        let ready = f.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &format!("e-ready-{poll}"),
            "vp-term",
            "cat",
            "/tmp/ready",
        ]);
        if ready.status.success() {
            break;
        }
        // Polled again anyway; a poll lost to the host fault is counted.
        if let Some(fault) = console.fault(ready.status.code()) {
            f.faults.again("exec e-ready", &fault);
        }
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
