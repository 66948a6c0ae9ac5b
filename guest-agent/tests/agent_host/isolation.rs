// SPDX-License-Identifier: Apache-2.0
//! What a container sees of the guest: an overlay root file system, the
//! sandbox's shared PID namespace, a seccomp profile, devices, the device
//! cgroup and sysctls.

use crate::common::{self, spec, HostAgent};
use crate::refused;
use vmpod_agent_api::ProcessId;

/// A root file system from an overlay: writes land in the upper layer,
/// the lower one is untouched, and remove unmounts it.
#[tokio::test]
async fn test_overlay_rootfs() {
    let agent: HostAgent = agent_or_skip!("overlay");
    agent.sandbox("pod").await;
    let lower = agent.rootfs("lower");
    let upper = agent.dir.join("upper");
    let work = agent.dir.join("work");
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut rootfs = vmpod_agent_api::messages::Mount::new();
    rootfs.fstype = "overlay".into();
    rootfs.options = vec![
        format!("lowerdir={}", lower.display()),
        format!("upperdir={}", upper.display()),
        format!("workdir={}", work.display()),
    ];
    let mut writable = spec(
        &["sh", "-c", "echo layered > /written && cat /written"],
        "pod",
    );
    writable["root"]["readonly"] = false.into();
    agent
        .client
        .create_container("ov", serde_json::to_vec(&writable).unwrap(), rootfs.clone())
        .await
        .unwrap();
    agent.client.start_container("ov").await.unwrap();
    let init = ProcessId::init("ov");
    assert_eq!(agent.read_all(&init, false).await, "layered\n");
    assert_eq!(
        agent.client.wait_process(&init).await.unwrap().exit_status,
        0
    );
    assert_eq!(
        std::fs::read_to_string(upper.join("written")).unwrap(),
        "layered\n"
    );
    assert!(!lower.join("written").exists());
    agent.client.remove_container("ov", false).await.unwrap();
    assert_eq!(agent.mounts_below(&agent.state_dir), Vec::<String>::new());
    // A type the agent does not take is refused.
    rootfs.fstype = "ext4".into();
    let message = refused(agent.client.create_container(
        "bad",
        serde_json::to_vec(&writable).unwrap(),
        rootfs,
    ))
    .await;
    assert_eq!(
        message,
        "rootfs: type \"ext4\" is not supported (bind or overlay)"
    );
}

/// With a shared PID namespace, the pod's containers see each other's
/// processes (none of them is PID 1: the sandbox holds the namespace).
#[tokio::test]
async fn test_shared_pid_namespace() {
    let agent: HostAgent = agent_or_skip!("sharedpid");
    agent
        .client
        .create_sandbox(&vmpod_agent_api::SandboxConfig {
            id: "pod".into(),
            shared_pid_namespace: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let rootfs = agent.rootfs("root");
    agent
        .create("a", &spec(&["sleep", "1000"], "pod"), &rootfs)
        .await
        .unwrap();
    agent.client.start_container("a").await.unwrap();
    let (status, stdout, stderr) = agent
        .run(
            "b",
            &spec(&["sh", "-c", "echo self=$$; ps -o pid,comm"], "pod"),
            &rootfs,
        )
        .await;
    assert_eq!(status, 0, "{stderr}");
    assert!(!stdout.contains("self=1\n"), "{stdout}");
    assert!(
        stdout.contains("sleep"),
        "b does not see a's process: {stdout}"
    );
    // PID 1 is the holder: even with CAP_SYS_PTRACE, its root is empty
    // and it holds none of the agent's descriptors (only its own pipe and
    // report ends).
    let mut tracer = spec(
        &["sh", "-c", "ls -a /proc/1/root; echo fds: $(ls /proc/1/fd)"],
        "pod",
    );
    for set in ["bounding", "effective", "permitted"] {
        tracer["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_SYS_PTRACE".into());
    }
    let (status, stdout, stderr) = agent.run("c", &tracer, &rootfs).await;
    assert_eq!(status, 0, "{stderr}");
    let (root, fds) = stdout.split_once("fds:").unwrap_or_default();
    assert_eq!(root, ".\n..\n", "{stdout}");
    assert_eq!(fds.split_whitespace().count(), 3, "{stdout}");
    agent.client.remove_container("a", true).await.unwrap();
    agent.client.remove_container("b", false).await.unwrap();
    agent.client.remove_container("c", false).await.unwrap();
    agent.client.destroy_sandbox().await.unwrap();
}

/// The pod's namespaces: CreateSandbox's hostname and sysctls are those of
/// the pod's UTS and IPC namespaces (not the agent's), which containers
/// join by their names below `POD_NAMESPACE_DIR`, as they join its PID
/// namespace (where they see each other); a container of its own
/// namespaces keeps its own; a name of another kind and a sysctl of the
/// whole system are refused in one line. A joining container's init takes
/// what it left behind with it.
#[tokio::test]
async fn test_pod_namespaces_hostname_and_sysctls() {
    let agent: HostAgent = agent_or_skip!("podns");
    let sysctls = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let pod = |sysctls| vmpod_agent_api::SandboxConfig {
        id: "pod".into(),
        hostname: "the-pod".into(),
        sysctls,
        ..Default::default()
    };
    assert_eq!(
        refused(
            agent
                .client
                .create_sandbox(&pod(sysctls(&[("vm.swappiness", "1")])))
        )
        .await,
        "linux.sysctl: \"vm.swappiness\" is not a namespaced sysctl"
    );
    let good = sysctls(&[
        ("kernel.shmmni", "1234"),
        ("net.ipv4.ip_unprivileged_port_start", "80"),
    ]);
    agent.client.create_sandbox(&pod(good)).await.unwrap();
    let rootfs = agent.rootfs("root");
    let script =
        "hostname; cat /proc/sys/kernel/shmmni /proc/sys/net/ipv4/ip_unprivileged_port_start";
    let joined = |args: &[&str]| {
        let mut joining = spec(args, "");
        joining["linux"]["namespaces"] = serde_json::json!([
            {"type": "mount"},
            {"type": "pid", "path": "/run/vmpod/pod-ns/pid"},
            {"type": "uts", "path": "/run/vmpod/pod-ns/uts"},
            {"type": "ipc", "path": "/run/vmpod/pod-ns/ipc"}
        ]);
        joining
    };
    let (status, stdout, stderr) = agent
        .run("joins", &joined(&["sh", "-c", script]), &rootfs)
        .await;
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, "the-pod\n1234\n80\n");
    // Two containers in the pod's PID namespace see each other; its PID 1
    // is the holder.
    agent
        .create("sleeper", &joined(&["sleep", "1000"]), &rootfs)
        .await
        .unwrap();
    agent.client.start_container("sleeper").await.unwrap();
    let (status, stdout, stderr) = agent
        .run(
            "looks",
            &joined(&["sh", "-c", "echo self=$$; ps -o comm"]),
            &rootfs,
        )
        .await;
    assert_eq!(status, 0, "{stderr}");
    assert!(!stdout.contains("self=1\n"), "{stdout}");
    assert!(stdout.contains("sleep"), "{stdout}");
    // Its init's end ends what it left in the shared namespace, so that its
    // output ends and its exit is whole (as runc does).
    let (status, stdout, stderr) = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        agent.run(
            "leaves",
            &joined(&["sh", "-c", "sleep 1000 & echo left-one"]),
            &rootfs,
        ),
    )
    .await
    .expect("the output of an init that left a process in the pod's PID namespace never ended");
    assert_eq!((status, stdout.as_str()), (0, "left-one\n"), "{stderr}");
    // What it left, killed, was reaped: its PID 1, the holder, cannot
    // wait, so no zombie may stay in the namespace. The left `sleep` goes
    // a little after its init; the sleeper's stays.
    let mut processes = String::new();
    for _ in 0..40 {
        let (status, stdout, stderr) = agent
            .run("zombies", &joined(&["ps", "-o", "stat,comm"]), &rootfs)
            .await;
        assert_eq!(status, 0, "{stderr}");
        agent
            .client
            .remove_container("zombies", false)
            .await
            .unwrap();
        processes = stdout;
        let live_sleeps = processes
            .lines()
            .filter(|line| line.ends_with(" sleep") && !line.starts_with('Z'))
            .count();
        if live_sleeps == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        !processes.lines().any(|line| line.starts_with('Z')),
        "a zombie in the pod's PID namespace:\n{processes}"
    );
    // The holder catches no signal (a handler of the agent's would kill
    // it in strict mode, and every process of the namespace with it) and
    // ignores SIGCHLD alone.
    let (status, stdout, stderr) = agent
        .run(
            "signals",
            &joined(&["grep", "-E", "^Sig(Cgt|Ign)", "/proc/1/status"]),
            &rootfs,
        )
        .await;
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(
        stdout,
        "SigIgn:\t0000000000010000\nSigCgt:\t0000000000000000\n"
    );
    agent
        .client
        .remove_container("signals", false)
        .await
        .unwrap();
    let (status, stdout, stderr) = agent
        .run("own", &spec(&["sh", "-c", script], "own"), &rootfs)
        .await;
    assert_eq!(status, 0, "{stderr}");
    let own: Vec<&str> = stdout.lines().collect();
    assert_eq!(own[..1], ["own"], "{stdout}");
    assert_ne!(own[1], "1234", "a new IPC namespace has its defaults");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_ne!(host.trim(), "the-pod", "the agent's hostname changed");
    let mut wrong = spec(&["true"], "");
    wrong["linux"]["namespaces"] =
        serde_json::json!([{"type": "uts", "path": "/run/vmpod/pod-ns/ipc"}]);
    assert_eq!(
        refused(agent.create("wrong", &wrong, &rootfs)).await,
        "namespace path /run/vmpod/pod-ns/ipc names no namespace of the pod"
    );
    agent.client.remove_container("joins", false).await.unwrap();
    agent
        .client
        .remove_container("sleeper", true)
        .await
        .unwrap();
    agent.client.remove_container("looks", false).await.unwrap();
    agent
        .client
        .remove_container("leaves", false)
        .await
        .unwrap();
    agent.client.remove_container("own", false).await.unwrap();
    agent.client.destroy_sandbox().await.unwrap();
}

/// The spec's seccomp profile holds in the container and in its execs:
/// denied calls get the profile's errno, argument conditions are checked;
/// the agent's vsock filter comes with or without a profile.
#[tokio::test]
async fn test_seccomp_profile() {
    let agent: HostAgent = agent_or_skip!("seccomp");
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    let script = "mkdir /tmp/d 2>&1; touch /tmp/f; chmod 644 /tmp/f && echo chmod-644-ok; \
                  chmod 777 /tmp/f 2>&1; echo done";
    let mut confined = spec(&["sh", "-c", script], "pod");
    confined["linux"]["seccomp"] = serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
            {"names": ["chmod"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
            {"names": ["fchmodat"], "action": "SCMP_ACT_ERRNO",
             "args": [{"index": 2, "value": 511, "op": "SCMP_CMP_EQ"}]}
        ]
    });
    let (status, stdout, stderr) = agent.run("sc", &confined, &rootfs).await;
    assert_eq!(status, 0, "{stderr}");
    assert!(
        stdout.contains("Permission denied"),
        "mkdir was not denied: {stdout}"
    );
    assert!(stdout.contains("chmod-644-ok"), "{stdout}");
    assert!(
        stdout.contains("Operation not permitted"),
        "chmod 777 was not denied: {stdout}"
    );
    assert!(stdout.ends_with("done\n"), "{stdout}");
    // Without no_new_privs the filter goes in before the user changes.
    confined["process"]["noNewPrivileges"] = false.into();
    let (status, stdout, _) = agent.run("sc2", &confined, &rootfs).await;
    assert_eq!(status, 0);
    assert!(stdout.contains("Permission denied"), "{stdout}");
    // Without a profile, the agent's own filter (no AF_VSOCK sockets) is
    // still there.
    let plain = spec(&["grep", "^Seccomp", "/proc/self/status"], "pod");
    let (status, stdout, stderr) = agent.run("sc3", &plain, &rootfs).await;
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, "Seccomp:\t2\nSeccomp_filters:\t1\n");
}

/// `linux.devices` are made with their type, numbers, mode and group, in
/// directories made for them; namespaced sysctls are written; others are
/// refused.
#[tokio::test]
async fn test_devices_and_sysctls() {
    let agent: HostAgent = agent_or_skip!("devices");
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    let mut with_devices = spec(
        &[
            "sh",
            "-c",
            "stat -c '%t:%T %a %g' /dev/mynull /dev/net/tun /dev/null; \
             cat /proc/sys/kernel/shmmax",
        ],
        "pod",
    );
    // A node in a directory /dev lacks, and one of the default devices,
    // which the spec's replaces (as `ctr run --privileged` lists them).
    with_devices["linux"]["devices"] = serde_json::json!([
        {"path": "/dev/mynull", "type": "c", "major": 1, "minor": 3, "fileMode": 416, "uid": 0, "gid": 5},
        {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 438},
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 384}
    ]);
    with_devices["linux"]["sysctl"] = serde_json::json!({"kernel.shmmax": "12345678"});
    let (status, stdout, stderr) = agent.run("d", &with_devices, &rootfs).await;
    assert_eq!(status, 0, "{stderr}");
    assert_eq!(stdout, "1:3 640 5\na:c8 666 0\n1:3 600 0\n12345678\n");
    let mut host_wide = spec(&["true"], "pod");
    host_wide["linux"]["sysctl"] = serde_json::json!({"kernel.panic": "1"});
    assert_eq!(
        refused(agent.create("s", &host_wide, &rootfs)).await,
        "linux.sysctl: \"kernel.panic\" is not a namespaced sysctl"
    );
    let mut any = spec(&["true"], "pod");
    any["linux"]["devices"] =
        serde_json::json!([{"path": "/dev/x", "type": "a", "major": 1, "minor": 3}]);
    assert!(refused(agent.create("a", &any, &rootfs))
        .await
        .contains("has type \"a\""));
}

/// The device cgroup: with containerd's rules (deny all) and runc's
/// defaults, a container with CAP_MKNOD may make device nodes but opens
/// only the default devices, not /dev/mem, /dev/kmsg or a node it made; a
/// spec rule lets the made node open.
#[tokio::test]
async fn test_device_cgroup() {
    let agent: HostAgent = agent_or_skip!("devcgroup");
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    let script = "mknod /dev/mem c 1 1 && mknod /dev/kmsg c 1 11 && mknod /dev/made c 240 0 \
                  && echo made; \
                  for d in null zero mem kmsg made; do echo \"$d:$(head -c 1 /dev/$d 2>&1 >/dev/null)\"; done; \
                  echo \"write:$(echo x 2>&1 > /dev/kmsg)\"";
    let mut strict = spec(&["sh", "-c", script], "pod");
    for set in ["bounding", "effective", "permitted"] {
        strict["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_MKNOD".into());
    }
    strict["linux"]["resources"] =
        serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]});
    let (status, stdout, stderr) = agent.run("strict", &strict, &rootfs).await;
    assert_eq!(status, 0, "{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("made"), "mknod is refused: {stdout}");
    assert_eq!(lines.next(), Some("null:"), "{stdout}");
    assert_eq!(lines.next(), Some("zero:"), "{stdout}");
    for device in ["mem", "kmsg", "made", "write"] {
        let line = lines.next().unwrap_or_default();
        assert!(
            line.starts_with(&format!("{device}:")) && line.ends_with("Operation not permitted"),
            "{device} is not refused: {stdout}"
        );
    }
    // A spec rule for the made node's major lets its open reach the
    // driver, which has none for major 240.
    let mut allowed = strict.clone();
    allowed["linux"]["resources"]["devices"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"allow": true, "type": "c", "major": 240, "access": "rw"}));
    let (status, stdout, stderr) = agent.run("allowed", &allowed, &rootfs).await;
    assert_eq!(status, 0, "{stderr}");
    let line = |device: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{device}:")))
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        line("made").ends_with("No such device or address"),
        "{stdout}"
    );
    assert!(line("mem").ends_with("Operation not permitted"), "{stdout}");
    assert!(
        line("write").ends_with("Operation not permitted"),
        "{stdout}"
    );
}

/// UpdateContainer's device rules replace the running container's device
/// program: a node refused at create opens afterwards; a bad rule is
/// refused naming the field.
#[tokio::test]
async fn test_device_cgroup_update() {
    let agent: HostAgent = agent_or_skip!("devcgupdate");
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    let script =
        "mknod /dev/made c 240 0 && echo \"before:$(head -c 1 /dev/made 2>&1 >/dev/null)\"; \
                  read line; echo \"after:$(head -c 1 /dev/made 2>&1 >/dev/null)\"";
    let mut live = spec(&["sh", "-c", script], "pod");
    for set in ["bounding", "effective", "permitted"] {
        live["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_MKNOD".into());
    }
    live["linux"]["resources"] =
        serde_json::json!({"devices": [{"allow": false, "access": "rwm"}]});
    agent.create("live", &live, &rootfs).await.unwrap();
    agent.client.start_container("live").await.unwrap();
    let init = ProcessId::init("live");
    let before = agent.read_line(&init).await;
    assert!(before.ends_with("Operation not permitted\n"), "{before}");
    let bad = serde_json::json!({"devices": [{"allow": true, "type": "c", "access": "rwz"}]});
    assert_eq!(
        refused(
            agent
                .client
                .update_container("live", serde_json::to_vec(&bad).unwrap())
        )
        .await,
        "linux.resources.devices[0].access: \"rwz\" is not a combination of r, w and m"
    );
    let opened = serde_json::json!({"devices": [
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 240, "access": "rw"}
    ]});
    agent
        .client
        .update_container("live", serde_json::to_vec(&opened).unwrap())
        .await
        .unwrap();
    agent.client.write_stdin(&init, b"go\n").await.unwrap();
    let after = agent.read_all(&init, false).await;
    assert_eq!(after, "after:head: /dev/made: No such device or address\n");
    assert_eq!(
        agent.client.wait_process(&init).await.unwrap().exit_status,
        0
    );
    agent.client.remove_container("live", false).await.unwrap();
}

/// The device programs (BPF) the agent holds, by its descriptors.
fn loaded_programs(agent: &HostAgent) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", agent.pid()))
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy() == "anon_inode:bpf-prog")
        .count()
}

/// PrepareTemplate loads a container's device program ahead, before any
/// sandbox (as in a template VM), and leaves no cgroup: a container of the
/// same rules then attaches that program, confined by it, and loads none;
/// one of other rules loads its own. Bad rules are refused naming the
/// field, and once a sandbox exists the request is refused.
#[tokio::test]
async fn test_a_device_program_loaded_ahead_is_shared() {
    let agent: HostAgent = agent_or_skip!("devcgahead");
    let strict = serde_json::json!({"resources": {"devices": [{"allow": false, "access": "rwm"}]}});
    agent
        .client
        .prepare_template(serde_json::to_vec(&strict).unwrap())
        .await
        .unwrap();
    assert_eq!(loaded_programs(&agent), 1);
    // A spec without rules (the shim sends nulls) denies every device but
    // the defaults, as containerd's deny-all does: the same program.
    agent
        .client
        .prepare_template(br#"{"resources":{"devices":null},"devices":null}"#.to_vec())
        .await
        .unwrap();
    assert_eq!(loaded_programs(&agent), 1);
    for (bad, field) in [
        (
            serde_json::json!({"resources": {"devices": [{"allow": true, "type": "x", "access": "r"}]}}),
            "linux.resources.devices[0].type: \"x\" is not a, b or c",
        ),
        (
            serde_json::json!({"resources": {"devices": [{"allow": true, "access": "rwz"}]}}),
            "linux.resources.devices[0].access: \"rwz\" is not a combination of r, w and m",
        ),
    ] {
        let message = refused(
            agent
                .client
                .prepare_template(serde_json::to_vec(&bad).unwrap()),
        )
        .await;
        assert_eq!(message, field);
    }
    let message = refused(agent.client.prepare_template(b"{".to_vec())).await;
    assert!(
        message.starts_with("the OCI linux object is not valid: "),
        "{message}"
    );
    assert_eq!(loaded_programs(&agent), 1, "a refused program is kept");
    let cgroups: Vec<_> = std::fs::read_dir(&agent.cgroup_root)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name())
        .collect();
    assert!(cgroups.is_empty(), "cgroups left: {cgroups:?}");

    agent.sandbox("pod").await;
    assert_eq!(
        refused(
            agent
                .client
                .prepare_template(serde_json::to_vec(&strict).unwrap())
        )
        .await,
        "the sandbox pod exists already"
    );
    let rootfs = agent.rootfs("root");
    let mut same = spec(
        &[
            "sh",
            "-c",
            "mknod /dev/mem c 1 1 && echo \"mem:$(head -c 1 /dev/mem 2>&1 >/dev/null)\"; read line",
        ],
        "pod",
    );
    for set in ["bounding", "effective", "permitted"] {
        same["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push("CAP_MKNOD".into());
    }
    same["linux"]["resources"] = strict["resources"].clone();
    agent.create("same", &same, &rootfs).await.unwrap();
    assert_eq!(loaded_programs(&agent), 1, "the same rules loaded again");
    agent.client.start_container("same").await.unwrap();
    let init = ProcessId::init("same");
    let seen = agent.read_line(&init).await;
    assert!(seen.ends_with("Operation not permitted\n"), "{seen}");
    let mut other = same.clone();
    other["linux"]["resources"]["devices"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"allow": true, "type": "c", "major": 240, "access": "rw"}));
    agent.create("other", &other, &rootfs).await.unwrap();
    assert_eq!(loaded_programs(&agent), 2);
    agent.client.write_stdin(&init, b"go\n").await.unwrap();
    assert_eq!(
        agent.client.wait_process(&init).await.unwrap().exit_status,
        0
    );
    agent.client.remove_container("same", false).await.unwrap();
    agent.client.remove_container("other", true).await.unwrap();
    assert_eq!(loaded_programs(&agent), 2, "the agent keeps its programs");
}
