// SPDX-License-Identifier: Apache-2.0
//! The state of a virtio device in a snapshot: its virtio-mmio transport's
//! registers and queues ([`MmioTransportState`]) and what the device itself
//! must carry across a restore ([`DeviceState`]).
//!
//! A restore applies a state to a device freshly created from the
//! restore's own back ends (a new tap, vsock socket and share; the same
//! disk), then rebuilds its transport from the saved registers. A snapshot
//! file can be corrupt: everything in it is checked as a guest driver's
//! writes are (status steps, features offered, queue sizes, alignment,
//! rings inside guest memory) and a bad value fails the restore with a
//! [`DeviceStateError`] naming it.
//!
//! What each device does across a restore:
//! - **block** resumes: the state holds the disk's size and read-only
//!   flag, and a restore on a disk that differs in either is refused (the
//!   guest's driver read them at probe and would address sectors that are
//!   not there).
//! - **rng** resumes; it has no state of its own.
//! - **net** resumes on the new tap the device was created with. Its MTU
//!   must be the saved one (the guest's driver set its interface's MTU
//!   from it); its MAC may differ: the guest's interface keeps the address
//!   it had until the pod agent gives it the pod's, and the tap carries
//!   frames whatever their address.
//! - **vsock** drops the connections that existed: they were Unix
//!   sockets of the snapshotted VMM, which cannot move to another process.
//!   Once activated after the restore, the device puts a
//!   `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` event on its event queue (virtio
//!   1.2, 5.10.6.6), on which Linux resets every connected socket while
//!   listening sockets stay; the device then serves its new host socket.
//!   The guest CID must be the saved one: the guest read it at probe.
//! - **virtio-fs** is snapshotted only before the guest mounted it. The
//!   FUSE session's inode and handle tables live in the VMM process and
//!   refer to the host file descriptors it opened; they cannot move to
//!   another VMM, and a guest whose mount pointed at inodes the new server
//!   never issued would see every file fail. So once the device has seen
//!   `FUSE_INIT`, saving its state fails; the pod agent mounts the share
//!   only when the pod is created, after a template's snapshot. The tag
//!   must be the saved one (the guest finds the share by it).
//!
//! A device completes every request it takes off a queue before it lets
//! go of its lock, so no request is in flight in a saved state; a queue
//! notification that was signalled and not yet served is not lost either:
//! a restored transport notifies each of its device's queues once. An
//! interrupt the driver had not acknowledged is raised again, once more
//! just before the vCPUs run (`MmioTransport::raise_pending_interrupt`):
//! restoring the interrupt controllers' state overwrites what reached
//! them before.
//!
//! Net and vsock devices write guest memory whenever their host side has
//! data, paused vCPUs or not: a snapshot saves their state and guest
//! memory with their event loop stopped, or the two would disagree.

use serde::{Deserialize, Serialize};

use super::device::ActivateError;
use super::ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_FS, VIRTIO_ID_NET, VIRTIO_ID_RNG, VIRTIO_ID_VSOCK};

/// A virtio-mmio device in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtioDeviceState {
    /// The virtio device ID (see [`super::ids`]); a restore checks it
    /// against the new device's.
    pub device_type: u32,
    /// The transport's registers and queues.
    pub transport: MmioTransportState,
    /// The device's own state.
    pub device: DeviceState,
}

/// The virtio-mmio registers the driver wrote, and the queues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioTransportState {
    /// The Status register.
    pub device_status: u32,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// The features the driver acknowledged.
    pub acked_features: u64,
    /// QueueSel.
    pub queue_select: u32,
    /// One entry per queue of the device, in order.
    pub queues: Vec<QueueState>,
    /// InterruptStatus: bits the driver had not acknowledged yet.
    pub interrupt_status: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
}

/// One split queue: the driver's set-up and the device's ring positions.
/// Whether it uses event indexes follows from the acknowledged features,
/// as at DRIVER_OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// QueueReady.
    pub ready: bool,
    /// QueueNum: the size the driver chose.
    pub size: u16,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// The next available-ring entry the device will take.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
    /// The driver wrote a size or address the queue refused, so the queue
    /// cannot be activated (the transport's own flag).
    pub setup_refused: bool,
}

/// What a device carries across a restore, besides its transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A virtio-blk disk.
    Block {
        /// Size in 512-byte sectors.
        capacity_sectors: u64,
        /// Whether the guest sees a read-only disk.
        readonly: bool,
    },
    /// A virtio-net device.
    Net {
        /// The MAC the device reported (informational: a restore keeps the
        /// new device's).
        mac: [u8; 6],
        /// The MTU offered with `VIRTIO_NET_F_MTU`, if any.
        mtu: Option<u16>,
    },
    /// A virtio-vsock device.
    Vsock {
        /// The guest's CID.
        cid: u64,
    },
    /// A virtio-fs device, saved before the guest mounted it.
    Fs {
        /// The tag the guest mounts the share by.
        tag: String,
    },
    /// A virtio-rng device.
    Rng,
}

impl DeviceState {
    /// The virtio device ID of the device this state belongs to.
    pub fn device_type(&self) -> u32 {
        match self {
            DeviceState::Block { .. } => VIRTIO_ID_BLOCK,
            DeviceState::Net { .. } => VIRTIO_ID_NET,
            DeviceState::Vsock { .. } => VIRTIO_ID_VSOCK,
            DeviceState::Fs { .. } => VIRTIO_ID_FS,
            DeviceState::Rng => VIRTIO_ID_RNG,
        }
    }

    /// Checks that this state is of the kind of device `device_type` is.
    ///
    /// # Errors
    /// [`DeviceStateError::WrongKind`] naming both kinds.
    pub fn expect_kind(&self, device_type: u32) -> Result<(), DeviceStateError> {
        if self.device_type() == device_type {
            return Ok(());
        }
        Err(DeviceStateError::WrongKind {
            saved: device_name(self.device_type()),
            device: device_name(device_type),
        })
    }
}

/// The name of a virtio device ID, for messages.
pub fn device_name(device_type: u32) -> &'static str {
    match device_type {
        VIRTIO_ID_BLOCK => "virtio-blk",
        VIRTIO_ID_NET => "virtio-net",
        VIRTIO_ID_VSOCK => "virtio-vsock",
        VIRTIO_ID_FS => "virtio-fs",
        VIRTIO_ID_RNG => "virtio-rng",
        _ => "unknown virtio",
    }
}

/// `saved` against the new device's value, as a [`DeviceStateError`] if
/// they differ.
///
/// # Errors
/// [`DeviceStateError::Mismatch`] naming `what` and both values.
pub fn expect_same<T: PartialEq + std::fmt::Debug>(
    what: &'static str,
    saved: T,
    device: T,
) -> Result<(), DeviceStateError> {
    if saved == device {
        return Ok(());
    }
    Err(DeviceStateError::Mismatch {
        what,
        saved: format!("{saved:?}"),
        device: format!("{device:?}"),
    })
}

/// Why a device's state cannot be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum DeviceStateError {
    /// The state belongs to another kind of device.
    #[error("The snapshot holds the state of a {saved} device, not of a {device} device")]
    WrongKind {
        /// The kind in the snapshot.
        saved: &'static str,
        /// The new device's kind.
        device: &'static str,
    },
    /// A property of the new device differs from the saved one.
    #[error("The snapshot's {what} is {saved}, the new device's is {device}")]
    Mismatch {
        /// What differs.
        what: &'static str,
        /// The snapshot's value.
        saved: String,
        /// The new device's value.
        device: String,
    },
    /// The guest mounted the share: its FUSE session cannot be saved.
    #[error(
        "The virtio-fs share '{0}' is mounted in the guest: a snapshot must be taken before the guest mounts it"
    )]
    FsMounted(String),
    /// The snapshot has another number of queues than the device.
    #[error("The snapshot has {saved} queues for a {device_name} device, which has {device}")]
    QueueCount {
        /// The device's kind.
        device_name: &'static str,
        /// Queues in the snapshot.
        saved: usize,
        /// Queues of the device.
        device: usize,
    },
    /// A queue's size or ring address is not one the driver could set.
    #[error("Queue {0} of the snapshot has an invalid size or misaligned ring")]
    QueueSetup(usize, #[source] virtio_queue::Error),
    /// The status register holds a value no driver can reach.
    #[error("The snapshot's device status {0:#x} is not a valid virtio status")]
    Status(u32),
    /// The driver acknowledged features the new device does not offer.
    #[error(
        "The snapshot's acknowledged features {acked:#x} are not all offered by the device ({offered:#x})"
    )]
    Features {
        /// The snapshot's acknowledged features.
        acked: u64,
        /// What the new device offers.
        offered: u64,
    },
    /// The interrupt status has bits that are not interrupt causes.
    #[error("The snapshot's interrupt status {0:#x} has unknown bits")]
    InterruptStatus(u32),
    /// The device was active and cannot be activated again on the saved
    /// queues.
    #[error("Cannot activate the restored {0} device")]
    Activate(&'static str, #[source] ActivateError),
    /// The interrupt that was pending cannot be raised again.
    #[error("Cannot raise the restored {0} device's pending interrupt")]
    Interrupt(&'static str, #[source] std::io::Error),
}

#[cfg(test)]
mod tests;
