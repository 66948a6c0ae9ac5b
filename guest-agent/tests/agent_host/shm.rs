// SPDX-License-Identifier: Apache-2.0
//! The pod's `/dev/shm`: one tmpfs of CreateSandbox's `shm_size`, which
//! every container binding `POD_SHM_DIR` shares; and what is refused.

use crate::common::{self, spec, HostAgent};
use crate::refused;
use vmpod_agent_api::{SandboxConfig, MAX_POD_SHM_BYTES, POD_SHM_DIR};

/// A spec running `script` whose `/dev/shm` is (`pod`) the pod's or its
/// own tmpfs.
fn shm_spec(script: &str, pod: bool) -> serde_json::Value {
    let mut spec = spec(&["sh", "-c", script], "pod");
    let mounts = spec["mounts"].as_array_mut().unwrap();
    let shm = mounts
        .iter_mut()
        .find(|mount| mount["destination"] == "/dev/shm")
        .unwrap();
    if pod {
        *shm = serde_json::json!({
            "destination": "/dev/shm", "type": "bind", "source": POD_SHM_DIR,
            "options": ["rbind", "nosuid", "nodev", "noexec"]
        });
    }
    spec
}

/// Two containers binding the pod's `/dev/shm` share one sticky tmpfs of
/// the pod's size; one with a tmpfs of its own keeps it; DestroySandbox
/// unmounts the pod's.
#[tokio::test]
async fn test_the_pods_containers_share_its_shm() {
    let agent: HostAgent = agent_or_skip!("podshm");
    agent
        .client
        .create_sandbox(&SandboxConfig {
            id: "pod".into(),
            shm_size: 1 << 20,
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
    let rootfs = agent.rootfs("root");
    let writer = shm_spec(
        "echo from-a > /dev/shm/f && stat -c %a /dev/shm && \
         stat -f -c '%T %b %S' /dev/shm && grep ' /dev/shm ' /proc/mounts",
        true,
    );
    let (status, stdout, stderr) = agent.run("a", &writer, &rootfs).await;
    assert_eq!(status, 0, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[..2], ["1777", "tmpfs 256 4096"], "{stdout}");
    assert!(
        lines[2].starts_with("shm /dev/shm tmpfs rw,nosuid,nodev,noexec,"),
        "{stdout}"
    );
    let (status, stdout, stderr) = agent
        .run("b", &shm_spec("cat /dev/shm/f", true), &rootfs)
        .await;
    assert_eq!((status, stdout.as_str()), (0, "from-a\n"), "{stderr}");
    let (status, stdout, stderr) = agent
        .run("c", &shm_spec("ls /dev/shm", false), &rootfs)
        .await;
    assert_eq!((status, stdout.as_str()), (0, ""), "{stderr}");
    for id in ["a", "b", "c"] {
        agent.client.remove_container(id, false).await.unwrap();
    }
    assert_eq!(agent.mounts_below(&agent.state_dir).len(), 1, "the pod's");
    agent.client.destroy_sandbox().await.unwrap();
    assert_eq!(agent.mounts_below(&agent.state_dir), Vec::<String>::new());
}

/// A `/dev/shm` over the bound is refused in one line and makes no
/// sandbox; a bind of the pod's `/dev/shm` in a pod without one is
/// refused in one line.
#[tokio::test]
async fn test_a_bad_pod_shm_is_refused() {
    let agent: HostAgent = agent_or_skip!("badshm");
    let huge = SandboxConfig {
        id: "pod".into(),
        shm_size: MAX_POD_SHM_BYTES + 1,
        ..SandboxConfig::default()
    };
    assert_eq!(
        refused(agent.client.create_sandbox(&huge)).await,
        "shm_size 1099511627777 is over 1099511627776 bytes (1 TiB)"
    );
    assert_eq!(agent.mounts_below(&agent.state_dir), Vec::<String>::new());
    agent.sandbox("pod").await;
    let rootfs = agent.rootfs("root");
    assert_eq!(
        refused(agent.create("a", &shm_spec("true", true), &rootfs)).await,
        format!(
            "mounts.source {POD_SHM_DIR}: the pod has no /dev/shm (CreateSandbox's shm_size is 0)"
        )
    );
}
