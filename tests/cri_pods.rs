// SPDX-License-Identifier: Apache-2.0
//! A pod's life through containerd 1.6's CRI plugin, with the calls the
//! kubelet makes in its order: handler `vmpod` (the pod's VM) and the
//! same sequence with handler `runc` as the reference. One pod per
//! handler; the harness is `vmpod_integration_tests::cri`.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

#[path = "cri_pods/calls.rs"]
mod calls;
#[path = "cri_pods/life.rs"]
mod life;
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
