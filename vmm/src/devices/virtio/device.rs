// SPDX-License-Identifier: Apache-2.0
//! What a virtio device offers its transport, and the interrupt it raises.
//!
//! The transport owns feature negotiation, the status state machine and
//! queue set-up; a device only says what it offers, serves its config space
//! and, once the driver is ready, gets validated queues to work on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::persist::{DeviceState, DeviceStateError};
use crate::vstate::memory::GuestMemoryMmap;

/// Interrupt status bit: a used ring was updated.
pub const VIRTIO_MMIO_INT_VRING: u32 = 0x1;
/// Interrupt status bit: the configuration changed (or the device broke).
pub const VIRTIO_MMIO_INT_CONFIG: u32 = 0x2;

/// A device's interrupt: the status word the driver reads and
/// acknowledges, and the irqfd that raises the device's GSI.
#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irqfd: EventFd,
}

impl VirtioInterrupt {
    /// An interrupt raised through `irqfd` (registered for the device's GSI).
    pub fn new(irqfd: EventFd) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            irqfd,
        }
    }

    /// Tells the driver a used ring has new entries.
    ///
    /// # Errors
    /// The irqfd write failed (the host is out of resources).
    pub fn signal_used_queue(&self) -> std::io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_VRING)
    }

    /// Tells the driver the config space or the device status changed.
    ///
    /// # Errors
    /// The irqfd write failed.
    pub fn signal_config_change(&self) -> std::io::Result<()> {
        self.signal(VIRTIO_MMIO_INT_CONFIG)
    }

    /// Raises again, on a restore, the causes in `bits` that the driver
    /// had not acknowledged at snapshot time: the edge that announced them
    /// may not have reached the guest.
    ///
    /// # Errors
    /// The irqfd write failed.
    pub fn restore_status(&self, bits: u32) -> std::io::Result<()> {
        if bits == 0 {
            return Ok(());
        }
        self.signal(bits)
    }

    fn signal(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.irqfd.write(1)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears everything, on device reset.
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}

/// What a device works on once the driver set it up: guest memory, the
/// queues the driver made ready (validated against `mem`), the features
/// both sides agreed on, and the interrupt.
#[derive(Debug)]
pub struct QueueSet {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// One entry per queue the device declares, in order; each is ready
    /// and lies in guest memory.
    pub queues: Vec<Queue>,
    /// Features offered by the device and acknowledged by the driver.
    pub acked_features: u64,
    /// The device's interrupt.
    pub interrupt: Arc<VirtioInterrupt>,
}

impl QueueSet {
    /// Checks that there is exactly one queue per queue the device
    /// declares (`count`), which the transport guarantees; a device calls
    /// it first thing in [`VirtioDevice::activate`].
    ///
    /// # Errors
    /// [`ActivateError::QueueNotReady`] with the index of the first missing
    /// queue, or [`ActivateError::UnknownQueue`] with the index of the first
    /// queue the device does not have.
    pub fn expect_queues(&self, count: usize) -> Result<(), ActivateError> {
        match self.queues.len() {
            n if n < count => Err(ActivateError::QueueNotReady(n)),
            n if n > count => Err(ActivateError::UnknownQueue(count)),
            _ => Ok(()),
        }
    }
}

/// Why a device refused to activate. Every variant carries the index of
/// the queue concerned (0 for a device's first queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ActivateError {
    /// The driver did not make this queue ready.
    #[error("Queue {0} is not ready")]
    QueueNotReady(usize),
    /// This queue's size or ring addresses are not usable.
    #[error("Queue {0} is set up outside guest memory or with an invalid size")]
    InvalidQueue(usize),
    /// The device has no queue at this index (and none after it).
    #[error("Queue {0} is beyond the device's queues")]
    UnknownQueue(usize),
}

/// Copies the part of a device's `config` space at `offset` into `data`;
/// bytes beyond the config space read as zero.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(src) = usize::try_from(offset)
        .ok()
        .and_then(|start| config.get(start..))
    else {
        return;
    };
    let n = src.len().min(data.len());
    data[..n].copy_from_slice(&src[..n]);
}

/// A virtio device as its transport sees it.
pub trait VirtioDevice: Send {
    /// The virtio device ID (see [`super::ids`]).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// One event per queue, written when the driver notifies that queue
    /// (by KVM through an ioeventfd, or by the transport).
    fn queue_events(&self) -> &[EventFd];

    /// The features the device offers.
    fn avail_features(&self) -> u64;

    /// Reads the device-specific config space at `offset`. Bytes beyond
    /// the config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let _ = offset;
        data.fill(0);
    }

    /// Writes the device-specific config space; read-only by default.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::debug!(
            "virtio device {}: ignored config write of {} bytes at {offset:#x}",
            self.device_type(),
            data.len()
        );
    }

    /// Starts the device on queues the driver set up.
    ///
    /// # Errors
    /// [`ActivateError`] when the device cannot work with them; the
    /// transport then marks it as needing a reset.
    fn activate(&mut self, queues: QueueSet) -> Result<(), ActivateError>;

    /// Stops the device and forgets its queues (driver reset).
    fn reset(&mut self);

    /// The queues the device works on, with its positions in their rings;
    /// `None` before activation.
    fn queues_in_use(&self) -> Option<&[Queue]>;

    /// What the device must carry across a snapshot (see
    /// [`super::persist`]).
    ///
    /// # Errors
    /// [`DeviceStateError`] when the device cannot be snapshotted now.
    fn save_state(&self) -> Result<DeviceState, DeviceStateError>;

    /// Applies a saved state to this device, freshly created from the
    /// restore's back ends and not yet activated.
    ///
    /// # Errors
    /// [`DeviceStateError`] when the state is of another kind of device, or
    /// names a property (disk size, CID, tag...) this device does not have.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceStateError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, queue_set, DriverQueue};

    #[test]
    fn test_expect_queues_names_the_queue_index() {
        let mem = guest_memory();
        let queues = |n: u64| (0..n).map(|i| DriverQueue::new(i * DriverQueue::SPAN).queue());
        let set = queue_set(mem.clone(), queues(1).collect());
        assert_eq!(set.expect_queues(1), Ok(()));
        assert_eq!(set.expect_queues(3), Err(ActivateError::QueueNotReady(1)));
        let set = queue_set(mem, queues(3).collect());
        assert_eq!(set.expect_queues(2), Err(ActivateError::UnknownQueue(2)));
    }
}
