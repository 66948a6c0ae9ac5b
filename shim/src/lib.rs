// SPDX-License-Identifier: Apache-2.0
//! `containerd-shim-vmpod-v2`: containerd's shim v2 for vmpod. One shim
//! process per pod runs the pod's microVM (`vmpod-vm`) and turns containerd's
//! Task API into requests to `vmpod-agent` inside it.

/// The configuration file every pod VM is built from.
pub mod config;
/// containerd's stdio FIFOs copied to and from processes in the agent.
pub mod io;
/// The shim v2 process protocol: start, delete, serve.
pub mod lifecycle;
/// The pod's network namespace carried into the VM.
pub mod network;
/// A pod's VM: its directory, its `vmpod-vm` process and its agent.
pub mod pod;
/// One process of a task as the shim tracks it.
pub mod process;
/// What of the host a container reaches through the pod's share.
pub mod share;
/// How big a pod's VM is, and whether a container fits in it.
pub mod sizing;
/// The bundle's OCI spec made fit for the guest.
pub mod spec;
/// containerd's Task API for one pod.
pub mod task;
