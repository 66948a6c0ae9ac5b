// SPDX-License-Identifier: Apache-2.0
//! Virtio devices: the device-side contract ([`device`]), the virtio-mmio
//! transport ([`transport`]) and one directory per device.
//!
//! Everything a guest driver writes (registers, rings, descriptors) is
//! untrusted: the transport validates queue set-up before a device sees
//! it, and devices validate each descriptor chain before any I/O.

pub mod block;
pub mod device;
pub mod fs;
pub mod iovec;
pub mod net;
pub mod persist;
pub mod rng;
pub mod transport;
pub mod vsock;

#[cfg(any(test, feature = "test-utils"))]
pub mod test_utils;

pub use device::{ActivateError, QueueSet, VirtioDevice, VirtioInterrupt};
pub use persist::{DeviceState, DeviceStateError, VirtioDeviceState};

/// Device IDs (virtio 1.2, 5).
pub mod ids {
    pub use virtio_bindings::virtio_ids::{
        VIRTIO_ID_BLOCK, VIRTIO_ID_FS, VIRTIO_ID_NET, VIRTIO_ID_RNG, VIRTIO_ID_VSOCK,
    };
}

/// Feature bit: the device follows virtio 1.x (no legacy interface).
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: used/available event indexes suppress notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// The feature word with `bit` set.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}
