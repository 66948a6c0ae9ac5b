// SPDX-License-Identifier: Apache-2.0
//! A pod's life through containerd 1.6's CRI plugin, with the calls the
//! kubelet makes in its order: handler `vmpod` (the pod's VM) and the
//! same sequence with handler `runc` as the reference, one pod per
//! handler; and the failure paths of two vmpod pods side by side. The
//! harness is `vmpod_integration_tests::cri`.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

#[path = "cri_pods/calls.rs"]
mod calls;
#[path = "cri_pods/failures.rs"]
mod failures;
#[path = "cri_pods/life.rs"]
mod life;
#[path = "cri_pods/shm.rs"]
mod shm;
#[path = "cri_pods/streams.rs"]
mod streams;

use vmpod_integration_tests::cri::{cri_or_skip, CriHarness, RUNC_HANDLER, VMPOD_HANDLER};

/// Every CRI call of a pod's life with handler `vmpod`, then nothing left.
#[test]
fn cri_pod_life_vmpod() {
    let test = "cri_pod_life_vmpod";
    if !cri_or_skip(test, true) {
        return;
    }
    let harness = CriHarness::start("vmpod", true, "").expect("containerd with CRI");
    life::pod_life(&harness, VMPOD_HANDLER);
}

/// Two vmpod pods booted at once, side by side; one's VM killed from
/// outside: its containers exit, its sandbox is NOTREADY and its removal
/// leaves nothing, while the other serves on and is removed normally.
#[test]
fn cri_pods_side_by_side_one_killed() {
    let test = "cri_pods_side_by_side_one_killed";
    if !cri_or_skip(test, true) {
        return;
    }
    let harness = CriHarness::start("two", true, "").expect("containerd with CRI");
    failures::side_by_side_one_killed(&harness);
}

/// The same sequence with containerd's own runc: what vmpod must match.
#[test]
fn cri_pod_life_runc() {
    let test = "cri_pod_life_runc";
    if !cri_or_skip(test, false) {
        return;
    }
    let harness = CriHarness::start("runc", false, "").expect("containerd with CRI");
    life::pod_life(&harness, RUNC_HANDLER);
}
