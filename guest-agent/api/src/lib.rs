// SPDX-License-Identifier: Apache-2.0
//! The API between the shim and `vmpod-agent`: the protobuf messages and
//! ttrpc service generated from `protos/agent.proto`, and [`AgentClient`],
//! a typed client with one method per protocol step, so that callers never
//! build raw requests.

mod client;
mod error;

// The generated modules below are the generators' code as they wrote it:
// their warnings are not ours to fix.

// The generated service names the messages `super::agent`.
use messages as agent;

/// The protobuf messages of `protos/agent.proto`.
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod messages {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// The ttrpc service: the server trait the agent implements, its
/// registration function and the raw client.
#[allow(warnings, clippy::all, clippy::pedantic)]
pub mod service {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

pub use client::{AgentClient, ClientError, HostTimeAndSeed, ProcessId, SandboxConfig};

/// Bumped on incompatible changes to `protos/agent.proto` or to what its
/// fields mean (3: the pod's sysctls and namespaces; 4: the pod's
/// `/dev/shm`; 5: CreateSandbox's host time, seed and interface MACs,
/// which make a guest restored from a template its own; 6:
/// PrepareTemplate).
pub const API_VERSION: u32 = 6;

/// The log levels of the shim's `log-level`, which it passes to the agent
/// as `vmpod.log_level` on the guest's kernel command line.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The most bytes of CreateSandbox's `seed` the agent takes.
pub const MAX_SEED_BYTES: usize = 256;

/// A container's spec names `<this>/uts`, `<this>/ipc` or `<this>/pid` as a
/// namespace's `path` to join the pod's namespace of that kind (as CRI's
/// containers join their sandbox's). The agent makes them at CreateSandbox
/// (the pod's hostname and sysctls are theirs) and resolves these names
/// itself: they are no files.
pub const POD_NAMESPACE_DIR: &str = "/run/vmpod/pod-ns";

/// A container's spec names this as a bind mount's `source` to mount the
/// pod's `/dev/shm`: the tmpfs the agent makes at CreateSandbox (its
/// `shm_size`), one for all the pod's containers. The agent resolves the
/// name itself: it is no file.
pub const POD_SHM_DIR: &str = "/run/vmpod/pod-shm";

/// The largest pod `/dev/shm` the agent makes: the most memory a pod VM
/// may have (1 TiB); a tmpfs cannot hold more than its VM's memory.
pub const MAX_POD_SHM_BYTES: u64 = 1 << 40;

/// The vsock port the agent listens on unless its command line says
/// otherwise.
pub const AGENT_VSOCK_PORT: u32 = 1024;
