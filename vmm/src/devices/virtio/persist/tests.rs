// SPDX-License-Identifier: Apache-2.0
//! Devices saved after activation through a driver's queues, restored into
//! fresh devices and transports, and refused states.

use super::*;

#[test]
fn test_state_kind_is_checked_against_the_device() {
    let state = DeviceState::Vsock { cid: 3 };
    assert!(state.expect_kind(VIRTIO_ID_VSOCK).is_ok());
    let err = state.expect_kind(VIRTIO_ID_BLOCK).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The snapshot holds the state of a virtio-vsock device, not of a virtio-blk device"
    );
}
