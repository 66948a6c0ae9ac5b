// SPDX-License-Identifier: Apache-2.0
//! containerd-shim-vmpod-v2 under the real containerd (Debian's 1.6), driven
//! with `ctr`: every container runs in a pod VM booted by vmpod-vm with the
//! agent as its PID 1. A pod boot costs about a minute on emulating hosts,
//! so the checks share few pods: one for the task API (output, exit codes,
//! stdin, a terminal, exec, signals, pause/resume, metrics, a second container
//! joining the pod, a failed create rolling back, delete), two for the
//! failures (the shim killed, the VM killed), one for the pod's network, and
//! one for a pod as CRI makes it (64-digit ids, a deep `state-dir`, the
//! sandbox's hostname, sysctls and namespaces); one for pod VM templates
//! (a cold boot leaving a template, two pods restored from it, a changed
//! initrd, templates off and a damaged template booting side by side) and
//! one for a template made ahead by `vmpod prepare-template`, which the
//! first pod then restores.
//! Bad input is checked without a boot: it fails before any VM starts.
//!
//! A step whose guest process died of the host fault some KVM hosts show
//! (status 139 and a new fault line on its pod's console;
//! `vmpod_integration_tests::host_faults`) is tried again and said so; each
//! test ends with the number of such retries.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

#[path = "shim_containerd/cri_pod.rs"]
mod cri_pod;
#[path = "shim_containerd/failures.rs"]
mod failures;
#[path = "shim_containerd/fixture.rs"]
mod fixture;
#[path = "shim_containerd/network.rs"]
mod network;
#[path = "shim_containerd/task_api.rs"]
mod task_api;
#[path = "shim_containerd/templates.rs"]
mod templates;
