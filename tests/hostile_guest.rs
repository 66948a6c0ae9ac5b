// SPDX-License-Identifier: Apache-2.0
//! A hostile guest against the host, on real pods under the real
//! containerd: a privileged container stands in for a compromised guest
//! kernel and attacks what the host shares with the guest (the pod's
//! virtio-fs share, mounted again inside the container), then the host
//! checks that nothing outside the pod changed and that deleting the pods
//! leaves nothing behind. Where a container cannot act as the guest kernel
//! (the vsock rings), the pod boots a hostile kernel of the test's own in
//! place of vmpod's. A pod boot costs about a minute on emulating
//! hosts, so the checks of one concern share one or two pods.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

// The fixture of the shim's containerd tests; this binary uses part of it.
#[allow(dead_code)]
#[path = "shim_containerd/fixture.rs"]
mod fixture;
#[path = "hostile_guest/share.rs"]
mod share;
#[path = "hostile_guest/vsock.rs"]
mod vsock;

/// The attacks run one after the other: the vsock flood keeps both of CI's
/// cores busy, which would stretch the other attack's guest calls past the
/// agent's request timeout.
static ONE_ATTACK_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds the machine for one attack (a failed attack does not stop the
/// next).
fn one_attack_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_ATTACK_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
