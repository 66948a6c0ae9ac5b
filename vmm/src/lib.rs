// SPDX-License-Identifier: Apache-2.0
//! vmpod's virtual machine monitor: builds and runs a KVM microVM that boots
//! a Linux guest, for the `vmpod-vm` launcher and the containerd shim.

/// The control socket: pause, resume, snapshot.
pub mod api;
/// Architecture-specific layout, boot protocols and CPU setup.
pub mod arch;
/// Building a microVM from its configuration.
pub mod builder;
/// Configuration from TOML and flags.
pub mod config;
/// Where devices sit in the guest's address space.
pub mod device_manager;
/// Emulated devices and buses.
pub mod devices;
/// The thread that serves device I/O events.
pub mod event_loop;
/// Why a VM ended.
pub mod exit;
/// A built and a running microVM.
pub mod microvm;
/// Per-thread seccomp filters and what a violation does.
pub mod seccomp;
/// Snapshot files: writing a paused VM, reading one back.
pub mod snapshot;
/// KVM objects and guest memory.
pub mod vstate;
