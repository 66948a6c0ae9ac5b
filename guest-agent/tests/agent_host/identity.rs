// SPDX-License-Identifier: Apache-2.0
//! CreateSandbox's identity fields (host time, seed, interface MACs): bad
//! ones refused in one line before anything is set up, a refusal after the
//! set-up undoing it, and no entropy at all refused. A good CreateSandbox
//! on the host reseeds the host's random pool for real (RNDADDENTROPY and
//! RNDRESEEDCRNG; mixing in is harmless) but leaves the host's clock and
//! hostname alone: only the VM's PID 1 owns them.

use std::path::Path;

use crate::common::{self, HostAgent};
use crate::refused;
use vmpod_agent_api::{HostTimeAndSeed, SandboxConfig};

fn pod(macs: &[&str]) -> SandboxConfig {
    SandboxConfig {
        id: "pod".into(),
        hostname: "clone".into(),
        interface_macs: macs.iter().map(|mac| (*mac).to_owned()).collect(),
        ..SandboxConfig::default()
    }
}

/// What the agent leaves of a sandbox `pod`: its cgroup and its files.
fn leftovers(agent: &HostAgent) -> Vec<String> {
    [
        agent.cgroup_root.join("vmpod-pod"),
        agent.state_dir.join(".sandbox"),
    ]
    .iter()
    .filter(|path| Path::new(path).exists())
    .map(|path| path.display().to_string())
    .collect()
}

/// A bad host time, seed or MAC is refused in one line and sets nothing
/// up; MACs for devices the guest lacks are refused after the set-up,
/// which is undone; then a good request creates the sandbox.
#[tokio::test]
async fn test_bad_identity_fields_are_refused_and_leave_nothing() {
    let agent: HostAgent = agent_or_skip!("ident");
    let c = &agent.client;
    let now = HostTimeAndSeed::now();
    assert_eq!(now.seed.len(), 32);
    let at = |time_ns, seed: &[u8]| HostTimeAndSeed {
        time_ns,
        seed: seed.to_vec(),
    };
    assert_eq!(
        refused(c.create_sandbox_with(&pod(&[]), at(0, &now.seed))).await,
        "host_time_ns 0 is not a time between 2020 and 2100"
    );
    assert_eq!(
        refused(c.create_sandbox_with(&pod(&[]), at(now.time_ns, &[1; 8]))).await,
        "seed has 8 bytes: give none or 32 to 256"
    );
    assert_eq!(
        refused(c.create_sandbox(&pod(&["01:00:5e:00:00:01"]))).await,
        "interface MAC 01:00:5e:00:00:01 is a multicast address"
    );
    assert_eq!(
        refused(c.create_sandbox(&pod(&["02:00:00:00:00:01", "02:00:00:00:00:01"]))).await,
        "interface MAC 02:00:00:00:00:01 is given twice"
    );
    assert_eq!(
        refused(c.create_sandbox(&pod(&["02:00:00:00:00:01:07"]))).await,
        "hw_addr \"02:00:00:00:00:01:07\" is not a MAC address like 02:00:00:00:00:01"
    );
    assert_eq!(leftovers(&agent), Vec::<String>::new());
    // The agent's network namespace has no virtio-net device.
    assert_eq!(
        refused(c.create_sandbox(&pod(&["02:00:00:00:00:01"]))).await,
        "the request has 1 interface MACs, the guest 0 network devices"
    );
    assert_eq!(leftovers(&agent), Vec::<String>::new());
    c.create_sandbox(&pod(&[])).await.unwrap();
    assert_eq!(leftovers(&agent).len(), 2, "no sandbox was set up");
}

/// Without virtio-rng and without a seed, the guest would keep the
/// template's random pool: CreateSandbox is refused, leaving nothing. The
/// host's seed alone is enough.
#[tokio::test]
async fn test_no_hwrng_and_no_seed_is_refused() {
    let missing = "/nonexistent/vmpod-hwrng";
    let agent: HostAgent = agent_or_skip!("nohwrng", &["--hwrng", missing]);
    let c = &agent.client;
    let unseeded = HostTimeAndSeed {
        seed: Vec::new(),
        ..HostTimeAndSeed::now()
    };
    assert_eq!(
        refused(c.create_sandbox_with(&pod(&[]), unseeded)).await,
        format!(
            "no entropy to reseed the guest's random pool: the request has no seed, \
             and reading {missing} failed: No such file or directory (os error 2)"
        )
    );
    assert_eq!(leftovers(&agent), Vec::<String>::new());
    c.create_sandbox(&pod(&[])).await.unwrap();
}
