// SPDX-License-Identifier: Apache-2.0
//! virtio-net (virtio 1.2, 5.1) on a host tap device: one receive and one
//! transmit queue, the MAC address and link status in config space, no
//! offloads (the guest computes checksums and segments itself).

mod device;
mod event_handler;
mod tap;

pub use device::{Net, NetBackend, NetCounters, NetError};
pub use tap::{Tap, TapError};

/// Receive and transmit queue size.
const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
const TX_QUEUE: usize = 1;
/// `struct virtio_net_hdr_v1`: every frame carries it (VERSION_1).
const VNET_HDR_LEN: usize = 12;
/// Largest frame with its header: 64 KiB of payload, Ethernet and VLAN
/// headers; nothing larger is read from the tap or taken from the guest.
const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65535 + 14 + 4;
