// SPDX-License-Identifier: Apache-2.0
//! vmpod-agent on the host, as root, driven through the generated ttrpc
//! client over its Unix socket, building real containers from a busybox
//! root file system.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

mod common;

use common::{spec, HostAgent};

#[tokio::test]
async fn test_health_and_version() {
    let agent: HostAgent = agent_or_skip!("health");
    assert!(agent.client.check().await.unwrap());
    let version = agent.client.version().await.unwrap();
    assert_eq!(version.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.api_version, vmpod_agent_api::API_VERSION);
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
