// SPDX-License-Identifier: Apache-2.0
//! A pod as containerd's CRI plugin makes one, through `ctr`: ids of 64
//! hex digits, a `state-dir` so deep that the pod's sockets' paths exceed
//! a Unix socket address, a sandbox spec with a hostname and sysctls, and a
//! container joining the sandbox's UTS and IPC namespaces by the host paths
//! CRI gives (`/proc/<sandbox pid>/ns/<kind>`).

use std::path::Path;

use vmpod_integration_tests::containerd::{BUSYBOX, NAMESPACE, RUNTIME};

use crate::fixture::{fixture, text, work_dir, Fixture, JOIN};

/// The pod's hostname, from the sandbox's spec.
const HOSTNAME: &str = "web-pod-0";
/// What a container prints of its pod: hostname, an IPC and a network sysctl.
const SHOW_POD: &str =
    "hostname; cat /proc/sys/kernel/shmmni /proc/sys/net/ipv4/ip_unprivileged_port_start";

/// A root file system of the static busybox and the applets the test runs.
fn busybox_root(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    for applet in ["sh", "sleep", "hostname", "cat"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
}

/// The sandbox (pause) container's spec as CRI writes it: ctr's default
/// spec with a hostname, namespaced sysctls, a root directory, CRI's
/// annotations, and `sleep` for pause.
fn sandbox_spec(f: &Fixture, id: &str, root: &Path) -> serde_json::Value {
    let out = f.ctr(&["oci", "spec"]);
    f.ok("ctr oci spec", &out);
    let mut spec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    spec["root"] = serde_json::json!({"path": root, "readonly": false});
    spec["hostname"] = HOSTNAME.into();
    spec["process"]["args"] = serde_json::json!(["sleep", "3600"]);
    spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
    spec["linux"]["sysctl"] = serde_json::json!({
        "kernel.shmmni": "1234",
        "net.ipv4.ip_unprivileged_port_start": "80"
    });
    if let Some(linux) = spec["linux"].as_object_mut() {
        linux.remove("cgroupsPath");
    }
    spec["annotations"] = serde_json::json!({
        "io.kubernetes.cri.container-type": "sandbox",
        "io.kubernetes.cri.sandbox-id": id,
    });
    spec
}

#[test]
fn test_a_cri_pod_with_long_ids_and_state_dir_shares_its_hostname_and_sysctls() {
    let test = "cri_pod";
    let work = work_dir(test);
    let pods = work
        .join("pods")
        .join("a-state-directory-deeper-than-a-unix-socket-address-holds");
    let extra = format!(
        "state-dir = {:?}\nunconfined = true\n",
        pods.display().to_string()
    );
    let Some(mut f) = fixture(test, &extra) else {
        return;
    };
    f.pods = pods;
    let sandbox = "0123456789abcdef".repeat(4);
    let container = "fedcba9876543210".repeat(4);
    let log_socket = f
        .pods
        .join(NAMESPACE)
        .join(&sandbox)
        .join("run/vsock.sock_1025");
    assert!(
        log_socket.as_os_str().len() > 108,
        "{}",
        log_socket.display()
    );

    // The sandbox boots the pod VM (vmpod-vm unconfined: its vsock paths
    // are the long host ones).
    let root = f.work.join("sandbox-root");
    busybox_root(&root);
    let spec_file = f.work.join("sandbox.json");
    let spec = sandbox_spec(&f, &sandbox, &root);
    std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let spec_arg = spec_file.display().to_string();
    let out = f.ctr(&[
        "run",
        "--runtime",
        RUNTIME,
        "--config",
        &spec_arg,
        "-d",
        &sandbox,
    ]);
    f.ok("ctr run the sandbox", &out);
    f.wait_status(&sandbox, Some("RUNNING"));
    assert!(
        std::fs::symlink_metadata(&log_socket).is_ok(),
        "the agent-log socket is at its long path"
    );
    let vmm_pid = f.task_pid(&sandbox);
    assert_eq!(f.vmm_pids(), [vmm_pid], "the sandbox's pid is its VM's");

    // The sandbox has the pod's hostname and sysctls.
    let out = f.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "show",
        &sandbox,
        "sh",
        "-c",
        SHOW_POD,
    ]);
    f.ok("ctr task exec show", &out);
    assert_eq!(text(&out.stdout), format!("{HOSTNAME}\n1234\n80\n"));

    // A container joins the sandbox's UTS and IPC namespaces by their host
    // paths, as CRI writes them, and runs to completion.
    let ns = |kind: &str| format!("{kind}:/proc/{vmm_pid}/ns/{kind}");
    let (uts, ipc) = (ns("uts"), ns("ipc"));
    let in_pod = format!("io.kubernetes.cri.sandbox-id={sandbox}");
    let join = [JOIN[0], JOIN[1], "--annotation", &in_pod];
    let out = f.retry_host_fault(
        &sandbox,
        "ctr run --rm (joins the pod's namespaces)",
        |attempt| {
            let id = if attempt == 0 {
                container.clone()
            } else {
                format!("{}{attempt}", &container[..63])
            };
            let flags = [
                &["--rm"],
                &join[..],
                &["--with-ns", &uts, "--with-ns", &ipc],
            ]
            .concat();
            f.run(&flags, &id, &["sh", "-c", SHOW_POD])
        },
        |out| out.status.code(),
    );
    f.ok("ctr run --rm the joining container", &out);
    assert_eq!(text(&out.stdout), format!("{HOSTNAME}\n1234\n80\n"));

    // A namespace path that is not the pod's fails in one line.
    let flags = [&["--rm"], &join[..], &["--with-ns", "uts:/proc/1/ns/uts"]].concat();
    let out = f.run(&flags, "bad-ns", &["true"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "linux.namespaces: uts path /proc/1/ns/uts is not this pod's (/proc/{vmm_pid}/ns/uts)"
        )),
        "{stderr}"
    );
    let _ = f.ctr(&["container", "rm", "bad-ns"]);

    // The pod ends, and nothing of it is left.
    let out = f.ctr(&["task", "kill", "-s", "SIGKILL", &sandbox]);
    f.ok("ctr task kill the sandbox", &out);
    f.wait_status(&sandbox, Some("STOPPED"));
    f.ok("ctr task rm", &f.ctr(&["task", "rm", &sandbox]));
    f.ok("ctr container rm", &f.ctr(&["container", "rm", &sandbox]));
    f.assert_nothing_left("after the CRI pod");
}
