// SPDX-License-Identifier: Apache-2.0
//! `containerd-shim-vmpod-v2`: containerd's shim v2 for vmpod. One shim
//! process per pod runs the pod's microVM (`vmpod-vm`) and turns containerd's
//! Task API into requests to `vmpod-agent` inside it.

pub mod config;
pub mod io;
pub mod lifecycle;
pub mod network;
pub mod pod;
pub mod process;
pub mod share;
pub mod spec;
pub mod task;
