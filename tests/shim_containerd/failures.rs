// SPDX-License-Identifier: Apache-2.0
//! Failures lose nothing (the shim killed, the VM killed), and bad input
//! fails in one line before any VM boots; a VMM stopped by its seccomp
//! filter is reported in one line with its own message.

use std::time::Duration;

use vmpod_integration_tests::events::Events;

use crate::fixture::{fixture, text, write_stopping_vmm, GUEST_DEADLINE, JOIN, STARTUP_WATCH};

#[test]
fn test_failures_lose_nothing() {
    let test = "test_failures_lose_nothing";
    let Some(f) = fixture(test, "") else {
        return;
    };
    let events = Events::watch(&f.containerd, GUEST_DEADLINE);

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
    // A detached exec that outlives its first seconds (the host fault
    // strikes there).
    let (exec_id, _) = f.retry_host_fault(
        "vf-vm",
        "exec --detach e-long",
        |attempt| {
            let exec_id = format!("e-long-{attempt}");
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
            let exit = events.exit_status(&exec_id, Duration::ZERO);
            (exec_id, exit)
        },
        |(_, exit)| *exit,
    );
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
    drop(bad);

    // A VMM its seccomp filter stops (here a filter without the device
    // thread's epoll_wait, through a wrapper): containerd's error carries
    // vmpod-vm's own line naming the thread and the call.
    let work = std::env::temp_dir().join(format!("vmpod-seccomp-stop-{}", std::process::id()));
    let vmm = write_stopping_vmm(&work, "devices", "epoll_wait");
    let extra = format!("vmm = \"{}\"\nunconfined = true\n", vmm.display());
    let stopped = fixture("vb-seccomp", &extra).expect("prerequisites checked");
    let out = stopped.run(&["--rm"], "vb-seccomp", &["true"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("vmpod-vm exited (exit status: 3) before the agent served")
            && stderr.contains(
                "the devices thread made system call 232 (epoll_wait), which its seccomp \
                 filter does not allow"
            ),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    let _ = stopped.ctr(&["container", "rm", "vb-seccomp"]);
    stopped.assert_nothing_left("after a seccomp stop");
    let _ = std::fs::remove_dir_all(&work);
}
