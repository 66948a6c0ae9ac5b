// SPDX-License-Identifier: Apache-2.0
//! Lifecycle: health and version, a container's isolation and exit,
//! stdio and terminals, exec'd processes, signals, pause and stats, kill
//! and forced remove, orphans reaped.

use crate::common::{self, spec, HostAgent};
use vmpod_agent_api::ProcessId;

#[tokio::test]
async fn test_health_version_and_clean_shutdown() {
    let mut agent: HostAgent = agent_or_skip!("health");
    assert!(agent.client.check().await.unwrap());
    let version = agent.client.version().await.unwrap();
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.api_version, vmpod_agent_api::API_VERSION);
    // SIGTERM removes every container and the socket, and exits 0.
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    agent
        .create("left", &spec(&["sleep", "1000"], "pod"), &rootfs)
        .await
        .unwrap();
    agent.client.start_container("left").await.unwrap();
    let cgroup = agent.cgroup_root.join("vmpod-pod");
    assert!(cgroup.join("left").exists());
    let status = agent
        .terminate()
        .expect("the agent did not stop on SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!agent.socket().exists(), "socket left behind");
    assert!(!cgroup.exists(), "sandbox cgroup left behind");
}

/// PID 1 inside, its own hostname, its own mounts, the spec's
/// capabilities, rlimits, no_new_privs and read-only root; output and the
/// exit code come back.
#[tokio::test]
async fn test_container_is_isolated_and_exits_with_its_status() {
    let agent: HostAgent = agent_or_skip!("isolated");
    agent.sandbox("vmpod-pod").await;
    let rootfs = agent.rootfs("root");
    let script = "echo pid=$$; echo host=$(hostname); \
                  grep -c . /proc/mounts | sed 's/^/mounts=/' 2>/dev/null; \
                  cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)'; \
                  echo nofile=$(ulimit -n); \
                  touch /rootfs-write 2>/dev/null && echo root=rw || echo root=ro; \
                  touch /tmp/x && echo tmp=rw; \
                  echo keys=$(stat -c %t:%T /proc/keys) acpi=$(ls /proc/acpi | wc -l) acpi-fs=$(stat -f -c %T /proc/acpi); \
                  (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null && echo sys=rw || echo sys=ro; \
                  ls /dev; \
                  echo oops >&2; exit 3";
    let (status, stdout, stderr) = agent
        .run("c1", &spec(&["sh", "-c", script], "inside"), &rootfs)
        .await;
    assert_eq!(status, 3, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("pid=1\n"), "{stdout}");
    assert!(stdout.contains("host=inside\n"), "{stdout}");
    assert!(stdout.contains("CapEff:\t0000000020000420"), "{stdout}");
    assert!(stdout.contains("NoNewPrivs:\t1"), "{stdout}");
    assert!(stdout.contains("nofile=1024"), "{stdout}");
    assert!(stdout.contains("root=ro"), "{stdout}");
    assert!(stdout.contains("tmp=rw"), "{stdout}");
    // Masked and read-only paths.
    // A masked file is /dev/null, a masked directory an empty tmpfs.
    assert!(
        stdout.contains("keys=1:3 "),
        "/proc/keys is not /dev/null: {stdout}"
    );
    assert!(
        stdout.contains("acpi=0 acpi-fs=tmpfs"),
        "/proc/acpi is not masked: {stdout}"
    );
    assert!(stdout.contains("sys=ro"), "{stdout}");
    for device in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx",
    ] {
        assert!(
            stdout.lines().any(|l| l == device),
            "/dev/{device} missing: {stdout}"
        );
    }
    assert_eq!(stderr, "oops\n");
    // The host's hostname did not change.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "inside");
    // Removing it leaves no mount, cgroup or directory behind.
    agent.client.remove_container("c1", false).await.unwrap();
    assert_eq!(agent.mounts_below(&agent.state_dir), Vec::<String>::new());
    assert!(!agent.state_dir.join("c1").exists());
    assert!(!agent.cgroup_root.join("vmpod-pod/c1").exists());
}

/// stdin reaches the process and closing it gives end of file; a
/// terminal carries both directions and resizes.
#[tokio::test]
async fn test_stdin_and_terminal() {
    let agent: HostAgent = agent_or_skip!("stdio");
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    // Pipes.
    agent
        .create(
            "pipes",
            &spec(&["sh", "-c", "cat; echo done"], "pod"),
            &rootfs,
        )
        .await
        .unwrap();
    agent.client.start_container("pipes").await.unwrap();
    let init = ProcessId::init("pipes");
    assert_eq!(
        agent.client.write_stdin(&init, b"hello\n").await.unwrap(),
        6
    );
    agent.client.close_stdin(&init).await.unwrap();
    assert_eq!(agent.read_all(&init, false).await, "hello\ndone\n");
    assert_eq!(
        agent.client.wait_process(&init).await.unwrap().exit_status,
        0
    );
    let closed = agent.client.write_stdin(&init, b"x").await.unwrap_err();
    assert!(
        closed
            .agent_message()
            .unwrap()
            .contains("stdin (it was closed)"),
        "{closed}"
    );
    // A terminal.
    let mut tty_spec = spec(
        &[
            "sh",
            "-c",
            "stty size; tty; read line; stty size; echo got $line",
        ],
        "pod",
    );
    tty_spec["process"]["terminal"] = true.into();
    tty_spec["process"]["consoleSize"] = serde_json::json!({"height": 30, "width": 100});
    agent.create("tty", &tty_spec, &rootfs).await.unwrap();
    agent.client.start_container("tty").await.unwrap();
    let init = ProcessId::init("tty");
    // The size from the spec first; resize once the shell printed it.
    let mut out = String::new();
    while !out.contains("/dev/pts/") {
        let chunk = agent.client.read_stdout(&init, 4096).await.unwrap();
        assert!(!chunk.is_empty(), "ended early: {out}");
        out.push_str(&String::from_utf8_lossy(&chunk));
    }
    agent.client.resize_tty(&init, 40, 120).await.unwrap();
    agent.client.write_stdin(&init, b"typed\n").await.unwrap();
    out.push_str(&agent.read_all(&init, false).await);
    assert!(out.contains("got typed"), "{out}");
    // The size from the spec, then the one set before the line was typed.
    assert!(out.contains("30 100"), "{out}");
    assert!(out.contains("40 120"), "{out}");
    assert!(out.contains("got typed"), "{out}");
    let no_stderr = agent.client.read_stderr(&init, 10).await.unwrap_err();
    assert!(
        no_stderr.agent_message().unwrap().contains("terminal"),
        "{no_stderr}"
    );
    assert_eq!(
        agent.client.wait_process(&init).await.unwrap().exit_status,
        0
    );
}

/// exec joins the container's namespaces and cgroup; signals reach one
/// process or all; pause freezes and resume thaws; stats and the process
/// list come from the cgroup.
#[tokio::test]
async fn test_exec_signals_pause_and_stats() {
    let agent: HostAgent = agent_or_skip!("exec");
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    // A PID 1 without handlers ignores SIGTERM; it traps it here.
    let script = "trap 'echo term; exit 143' TERM; echo ready; while true; do sleep 0.05; done";
    agent
        .create("svc", &spec(&["sh", "-c", script], "svc-host"), &rootfs)
        .await
        .unwrap();
    agent.client.start_container("svc").await.unwrap();
    let init = ProcessId::init("svc");
    assert_eq!(
        agent.client.read_stdout(&init, 6).await.unwrap(),
        b"ready\n"
    );

    let process = serde_json::json!({
        "args": ["sh", "-c", "echo pid=$$ host=$(hostname) cwd=$(pwd) id=$(id -u):$(id -g):$(id -G); ps -o pid,comm | grep -q '^ *1 sh$' && echo sees-init; cat /proc/self/cgroup"],
        "env": ["PATH=/bin"],
        "cwd": "/tmp",
        "user": {"uid": 65534, "gid": 65534, "additionalGids": [5, 65534]}
    });
    let exec = ProcessId::exec("svc", "e1");
    agent
        .client
        .exec_process(&exec, serde_json::to_vec(&process).unwrap())
        .await
        .unwrap();
    let out = agent.read_all(&exec, false).await;
    assert_eq!(
        agent.client.wait_process(&exec).await.unwrap().exit_status,
        0
    );
    assert!(out.contains("host=svc-host"), "{out}");
    assert!(out.contains("cwd=/tmp"), "{out}");
    assert!(out.contains("id=65534:65534:"), "{out}");
    assert!(
        out.contains(" 5 ") || out.contains(":5 ") || out.contains(" 5\n"),
        "groups: {out}"
    );
    assert!(!out.contains("pid=1 "), "{out}");
    assert!(out.contains("sees-init"), "{out}");
    assert!(
        out.contains("/svc"),
        "the exec is not in the container's cgroup: {out}"
    );
    let duplicate = agent
        .client
        .exec_process(&exec, serde_json::to_vec(&process).unwrap())
        .await
        .unwrap_err();
    assert!(duplicate
        .agent_message()
        .unwrap()
        .contains("already has a process e1"));

    let pids = agent.client.list_processes("svc").await.unwrap();
    assert!(!pids.is_empty());
    let stats = agent.client.stats_container("svc").await.unwrap();
    if stats.cpu.is_none() {
        eprintln!("SKIP cpu stats: this host's cgroup v2 has no cpu controller");
    }
    if stats.memory.is_none() {
        eprintln!("SKIP memory stats: this host's cgroup v2 has no memory controller");
    }

    agent.client.pause_container("svc").await.unwrap();
    let again = agent.client.pause_container("svc").await.unwrap_err();
    assert!(
        again.agent_message().unwrap().contains("is Paused"),
        "{again}"
    );
    let frozen =
        std::fs::read_to_string(agent.cgroup_root.join("vmpod-pod/svc/cgroup.events")).unwrap();
    assert!(frozen.contains("frozen 1"), "{frozen}");
    agent.client.resume_container("svc").await.unwrap();

    agent
        .client
        .signal_process(&init, libc::SIGTERM as u32, false)
        .await
        .unwrap();
    assert_eq!(agent.read_all(&init, false).await, "term\n");
    assert_eq!(
        agent.client.wait_process(&init).await.unwrap().exit_status,
        143
    );
    let dead = agent
        .client
        .signal_process(&init, libc::SIGTERM as u32, false)
        .await
        .unwrap_err();
    assert!(
        dead.agent_message().unwrap().contains("already exited"),
        "{dead}"
    );
    agent.client.remove_container("svc", false).await.unwrap();
}

/// SIGKILL to all, then a forced remove of a container that still runs.
#[tokio::test]
async fn test_kill_all_and_forced_remove() {
    let agent: HostAgent = agent_or_skip!("kill");
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    agent
        .create(
            "k",
            &spec(&["sh", "-c", "sleep 100 & sleep 100"], "pod"),
            &rootfs,
        )
        .await
        .unwrap();
    agent.client.start_container("k").await.unwrap();
    let refused = agent.client.remove_container("k", false).await.unwrap_err();
    assert!(
        refused.agent_message().unwrap().contains("use force"),
        "{refused}"
    );
    agent
        .client
        .signal_process(&ProcessId::init("k"), libc::SIGKILL as u32, true)
        .await
        .unwrap();
    let exit = agent
        .client
        .wait_process(&ProcessId::init("k"))
        .await
        .unwrap();
    assert_eq!(exit.exit_status, 128 + libc::SIGKILL);
    // Created but never started: force is not needed.
    agent
        .create("idle", &spec(&["sleep", "100"], "pod"), &rootfs)
        .await
        .unwrap();
    agent.client.remove_container("idle", false).await.unwrap();
    agent
        .create("busy", &spec(&["sleep", "100"], "pod"), &rootfs)
        .await
        .unwrap();
    agent.client.start_container("busy").await.unwrap();
    agent.client.remove_container("busy", true).await.unwrap();
    agent.client.remove_container("k", false).await.unwrap();
    assert_eq!(agent.mounts_below(&agent.state_dir), Vec::<String>::new());
    agent.client.destroy_sandbox().await.unwrap();
    assert!(!agent.cgroup_root.join("vmpod-pod").exists());
}

/// The agent reaps what lands on it: a container whose init leaves
/// background children behind leaves no zombie when it ends.
#[tokio::test]
async fn test_orphans_are_reaped() {
    let agent: HostAgent = agent_or_skip!("orphans");
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    let (status, _, stderr) = agent
        .run(
            "o",
            &spec(&["sh", "-c", "sleep 30 & sleep 30 & exit 0"], "pod"),
            &rootfs,
        )
        .await;
    assert_eq!(status, 0, "{stderr}");
    let zombies = || -> Vec<String> {
        let parent = format!("PPid:\t{}", agent.pid());
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| std::fs::read_to_string(entry.path().join("status")).ok())
            .filter(|status| status.lines().any(|l| l == parent))
            .filter(|status| status.lines().any(|l| l.starts_with("State:\tZ")))
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !zombies().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(zombies(), Vec::<String>::new());
    agent.client.remove_container("o", false).await.unwrap();
}
