// SPDX-License-Identifier: Apache-2.0
//! vmpod's guest agent as a library: the pieces of `vmpod-agent`, PID 1
//! of the pod VM, which builds the pod's containers on the shim's
//! requests.

pub mod container;
pub mod identity;
pub mod listen;
pub mod logging;
pub mod network;
pub mod oom;
pub mod pid1;
pub mod reaper;
pub mod sandbox;
pub mod server;
pub mod stdio;
pub mod template;
