// SPDX-License-Identifier: Apache-2.0
//! virtio-mmio version 2 (virtio 1.2, 4.2.2): register decoding, feature
//! negotiation, the device status state machine and queue set-up.
//!
//! The driver is untrusted. Writes out of order (queue set-up after
//! DRIVER_OK, features after FEATURES_OK, status bits skipped) are ignored
//! and logged; features the device did not offer cannot be acknowledged;
//! a queue the driver sets up with an illegal size or misaligned rings, or
//! outside guest memory, is refused at DRIVER_OK, which leaves the device
//! in DEVICE_NEEDS_RESET with a config-change interrupt, as the spec asks.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};

use super::super::device::{QueueSet, VirtioDevice, VirtioInterrupt};
use super::super::{feature, VIRTIO_F_VERSION_1};
use crate::devices::bus::BusDevice;
use crate::vstate::memory::{GuestAddress, GuestMemoryMmap};

/// "virt" in little endian.
const MMIO_MAGIC: u32 = 0x7472_6976;
/// The modern (non-legacy) virtio-mmio interface.
const MMIO_VERSION: u32 = 2;
/// Vendor ID reported to the guest ("VMPD").
const VENDOR_ID: u32 = 0x4450_4d56;

/// Register offsets.
mod reg {
    pub const MAGIC: u64 = 0x00;
    pub const VERSION: u64 = 0x04;
    pub const DEVICE_ID: u64 = 0x08;
    pub const VENDOR_ID: u64 = 0x0c;
    pub const DEVICE_FEATURES: u64 = 0x10;
    pub const DEVICE_FEATURES_SEL: u64 = 0x14;
    pub const DRIVER_FEATURES: u64 = 0x20;
    pub const DRIVER_FEATURES_SEL: u64 = 0x24;
    pub const QUEUE_SEL: u64 = 0x30;
    pub const QUEUE_NUM_MAX: u64 = 0x34;
    pub const QUEUE_NUM: u64 = 0x38;
    pub const QUEUE_READY: u64 = 0x44;
    pub const QUEUE_NOTIFY: u64 = 0x50;
    pub const INTERRUPT_STATUS: u64 = 0x60;
    pub const INTERRUPT_ACK: u64 = 0x64;
    pub const STATUS: u64 = 0x70;
    pub const QUEUE_DESC_LOW: u64 = 0x80;
    pub const QUEUE_DESC_HIGH: u64 = 0x84;
    pub const QUEUE_AVAIL_LOW: u64 = 0x90;
    pub const QUEUE_AVAIL_HIGH: u64 = 0x94;
    pub const QUEUE_USED_LOW: u64 = 0xa0;
    pub const QUEUE_USED_HIGH: u64 = 0xa4;
    pub const SHM_LEN_LOW: u64 = 0xb0;
    pub const SHM_LEN_HIGH: u64 = 0xb4;
    pub const CONFIG_GENERATION: u64 = 0xfc;
    pub const CONFIG: u64 = 0x100;
}

/// The QueueNotify register's offset, for ioeventfd registration.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub use virtio_bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE as ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER as DRIVER,
        VIRTIO_CONFIG_S_DRIVER_OK as DRIVER_OK, VIRTIO_CONFIG_S_FAILED as FAILED,
        VIRTIO_CONFIG_S_FEATURES_OK as FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET as NEEDS_RESET,
    };
}

/// One queue as the driver configures it.
#[derive(Debug)]
struct QueueSlot {
    queue: Queue,
    /// Set when the driver wrote a value the queue refused (illegal size,
    /// misaligned ring); the queue then cannot be activated.
    invalid: bool,
}

/// A virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    device_status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    queues: Vec<QueueSlot>,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_status", &self.device_status)
            .field("acked_features", &self.acked_features)
            .field("queues", &self.queues)
            .finish_non_exhaustive()
    }
}

/// Lowest and highest 32 bits of a 64-bit word.
fn half(word: u64, select: u32) -> u32 {
    match select {
        0 => word as u32,
        1 => (word >> 32) as u32,
        _ => 0,
    }
}

impl MmioTransport {
    /// A transport for `device`, whose interrupt is `interrupt`.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues = Self::fresh_queues(&device);
        MmioTransport {
            device,
            mem,
            interrupt,
            device_status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            queues,
            config_generation: 0,
        }
    }

    fn fresh_queues(device: &Arc<Mutex<dyn VirtioDevice>>) -> Vec<QueueSlot> {
        let device = device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        device
            .queue_max_sizes()
            .iter()
            .map(|&max| match Queue::new(max) {
                Ok(queue) => QueueSlot {
                    queue,
                    invalid: false,
                },
                // The VMM chose `max`: a power of two up to 32768. Should a
                // device get it wrong, its queue can never be activated.
                Err(_) => QueueSlot {
                    queue: Queue::new(1).expect("1 is a power of two and a valid queue size"),
                    invalid: true,
                },
            })
            .collect()
    }

    fn device(&self) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
        // A poisoned lock means a device thread panicked; the device state
        // is still memory-safe to use, and the VMM must keep going.
        self.device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The device status register.
    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    fn has_status(&self, bits: u32) -> bool {
        self.device_status & bits == bits
    }

    /// Queue set-up is allowed after FEATURES_OK and before DRIVER_OK.
    fn queue_setup_allowed(&self) -> bool {
        self.has_status(status::FEATURES_OK)
            && !self.has_status(status::DRIVER_OK)
            && !self.has_status(status::FAILED)
    }

    fn selected_queue(&mut self) -> Option<&mut QueueSlot> {
        let index = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(index)
    }

    fn with_setup_queue(&mut self, what: &str, f: impl FnOnce(&mut QueueSlot)) {
        if !self.queue_setup_allowed() {
            tracing::warn!("virtio-mmio: {what} write outside queue set-up; ignored");
            return;
        }
        match self.selected_queue() {
            // Changing a queue the driver already marked ready is not
            // allowed; its set-up stays as it was.
            Some(slot) if !slot.queue.ready() => f(slot),
            Some(_) => tracing::warn!("virtio-mmio: {what} write to a ready queue; ignored"),
            None => tracing::warn!("virtio-mmio: {what} write to a missing queue; ignored"),
        }
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device().device_type(),
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let features = self.device().avail_features() | feature(VIRTIO_F_VERSION_1);
                half(features, self.device_features_select)
            }
            reg::QUEUE_NUM_MAX => self
                .selected_queue()
                .map_or(0, |slot| u32::from(slot.queue.max_size())),
            reg::QUEUE_READY => self
                .selected_queue()
                .map_or(0, |slot| u32::from(slot.queue.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.device_status,
            // No shared memory regions: a length of all ones means "none".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                tracing::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_select = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_select = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_select = value,
            reg::QUEUE_NUM => self.with_setup_queue("QueueNum", |slot| {
                // virtio-queue refuses 0, sizes above the maximum and
                // sizes that are not a power of two.
                let Ok(size) = u16::try_from(value) else {
                    slot.invalid = true;
                    return;
                };
                if slot.queue.try_set_size(size).is_err() {
                    slot.invalid = true;
                }
            }),
            // Unlike the other queue registers, QueueReady may be written
            // on a ready queue: writing 0 takes it back for set-up.
            reg::QUEUE_READY => {
                if !self.queue_setup_allowed() {
                    tracing::warn!("virtio-mmio: QueueReady write outside queue set-up; ignored");
                } else if let Some(slot) = self.selected_queue() {
                    slot.queue.set_ready(value == 1);
                }
            }
            reg::QUEUE_DESC_LOW | reg::QUEUE_DESC_HIGH => {
                let high = offset == reg::QUEUE_DESC_HIGH;
                self.with_setup_queue("QueueDesc", |slot| {
                    let addr = with_half(slot.queue.desc_table(), value, high);
                    if slot
                        .queue
                        .try_set_desc_table_address(GuestAddress(addr))
                        .is_err()
                    {
                        slot.invalid = true;
                    }
                });
            }
            reg::QUEUE_AVAIL_LOW | reg::QUEUE_AVAIL_HIGH => {
                let high = offset == reg::QUEUE_AVAIL_HIGH;
                self.with_setup_queue("QueueDriver", |slot| {
                    let addr = with_half(slot.queue.avail_ring(), value, high);
                    if slot
                        .queue
                        .try_set_avail_ring_address(GuestAddress(addr))
                        .is_err()
                    {
                        slot.invalid = true;
                    }
                });
            }
            reg::QUEUE_USED_LOW | reg::QUEUE_USED_HIGH => {
                let high = offset == reg::QUEUE_USED_HIGH;
                self.with_setup_queue("QueueDevice", |slot| {
                    let addr = with_half(slot.queue.used_ring(), value, high);
                    if slot
                        .queue
                        .try_set_used_ring_address(GuestAddress(addr))
                        .is_err()
                    {
                        slot.invalid = true;
                    }
                });
            }
            reg::QUEUE_NOTIFY => self.notify_queue(value),
            reg::INTERRUPT_ACK => self.interrupt.acknowledge(value),
            reg::STATUS => self.write_status(value),
            _ => {
                tracing::debug!("virtio-mmio: write of {value:#x} to register {offset:#x} ignored")
            }
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if !self.has_status(status::DRIVER) || self.has_status(status::FEATURES_OK) {
            tracing::warn!("virtio-mmio: DriverFeatures write outside negotiation; ignored");
            return;
        }
        let shift = match self.driver_features_select {
            0 => 0,
            1 => 32,
            select => {
                tracing::warn!("virtio-mmio: DriverFeatures word {select} does not exist; ignored");
                return;
            }
        };
        let mask = 0xffff_ffffu64 << shift;
        self.acked_features = (self.acked_features & !mask) | (u64::from(value) << shift);
    }

    fn notify_queue(&mut self, value: u32) {
        // With the ioeventfd registered KVM signals the event itself and
        // this path only sees indexes that match no queue.
        let device = self.device();
        match usize::try_from(value)
            .ok()
            .and_then(|i| device.queue_events().get(i))
        {
            Some(event) => {
                if let Err(err) = event.write(1) {
                    tracing::warn!("virtio-mmio: cannot signal queue {value}: {err}");
                }
            }
            None => tracing::warn!("virtio-mmio: notify for missing queue {value}; ignored"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.device_status;
        if value & old != old {
            tracing::warn!("virtio-mmio: status {value:#x} clears bits of {old:#x}; ignored");
            return;
        }
        let added = value & !old;
        if added & status::FAILED != 0 {
            self.device_status = value;
            return;
        }
        // Each step needs the one before it (virtio 1.2, 3.1.1).
        let allowed = match added {
            status::ACKNOWLEDGE => true,
            status::DRIVER => self.has_status(status::ACKNOWLEDGE),
            status::FEATURES_OK => self.has_status(status::DRIVER),
            status::DRIVER_OK => self.has_status(status::FEATURES_OK),
            _ => false,
        };
        if !allowed {
            tracing::warn!(
                "virtio-mmio: status {value:#x} after {old:#x} is out of order; ignored"
            );
            return;
        }
        match added {
            status::FEATURES_OK => {
                if self.features_acceptable() {
                    self.device_status = value;
                } else {
                    // The driver reads the status back and sees FEATURES_OK
                    // missing: the negotiation failed.
                    tracing::warn!(
                        "virtio-mmio: driver features {:#x} refused",
                        self.acked_features
                    );
                }
            }
            status::DRIVER_OK => {
                self.device_status = value;
                self.activate();
            }
            _ => self.device_status = value,
        }
    }

    /// The driver may only acknowledge what was offered, and must take
    /// VIRTIO_F_VERSION_1 (this transport has no legacy interface).
    fn features_acceptable(&self) -> bool {
        let offered = self.device().avail_features() | feature(VIRTIO_F_VERSION_1);
        self.acked_features & !offered == 0
            && self.acked_features & feature(VIRTIO_F_VERSION_1) != 0
    }

    fn activate(&mut self) {
        let result = self
            .queue_set()
            .and_then(|queues| self.device().activate(queues));
        if let Err(err) = result {
            tracing::warn!(
                "virtio-mmio: device {} not activated: {err}",
                self.device().device_type()
            );
            self.device_status |= status::NEEDS_RESET;
            if let Err(err) = self.interrupt.signal_config_change() {
                tracing::warn!("virtio-mmio: cannot raise the config interrupt: {err}");
            }
        }
    }

    fn queue_set(&self) -> Result<QueueSet, super::super::ActivateError> {
        use super::super::ActivateError;
        let event_idx = self.acked_features & feature(super::super::VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, slot) in self.queues.iter().enumerate() {
            if !slot.queue.ready() {
                return Err(ActivateError::QueueNotReady(index));
            }
            if slot.invalid || !slot.queue.is_valid(&self.mem) {
                return Err(ActivateError::InvalidQueue(index));
            }
            let queue = activated_copy(&slot.queue, event_idx)
                .map_err(|_| ActivateError::InvalidQueue(index))?;
            queues.push(queue);
        }
        Ok(QueueSet {
            mem: self.mem.clone(),
            queues,
            acked_features: self.acked_features,
            interrupt: Arc::clone(&self.interrupt),
        })
    }

    fn reset(&mut self) {
        self.device().reset();
        self.queues = Self::fresh_queues(&self.device);
        self.interrupt.clear();
        self.device_status = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.acked_features = 0;
        self.queue_select = 0;
    }
}

/// A fresh queue with the driver's set-up of `queue` (virtio-queue's
/// `Queue` is not `Clone`); the transport keeps its own to answer register
/// reads.
fn activated_copy(queue: &Queue, event_idx: bool) -> Result<Queue, virtio_queue::Error> {
    let mut copy = Queue::new(queue.max_size())?;
    copy.try_set_size(queue.size())?;
    copy.try_set_desc_table_address(GuestAddress(queue.desc_table()))?;
    copy.try_set_avail_ring_address(GuestAddress(queue.avail_ring()))?;
    copy.try_set_used_ring_address(GuestAddress(queue.used_ring()))?;
    copy.set_event_idx(event_idx);
    // Zero but on a restore, where they are the device's saved positions.
    copy.set_next_avail(queue.next_avail());
    copy.set_next_used(queue.next_used());
    copy.set_ready(true);
    Ok(copy)
}

/// `addr` with its low or high 32 bits replaced by `value`.
fn with_half(addr: u64, value: u32, high: bool) -> u64 {
    if high {
        (addr & 0xffff_ffff) | (u64::from(value) << 32)
    } else {
        (addr & !0xffff_ffff) | u64::from(value)
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device().read_config(offset - reg::CONFIG, data);
            return;
        }
        // Registers are 32 bits wide and read whole.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::warn!(
                "virtio-mmio: {}-byte read at {offset:#x}; registers are 32-bit",
                data.len()
            );
            data.fill(0xff);
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.has_status(status::DRIVER) {
                self.device().write_config(offset - reg::CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::warn!(
                "virtio-mmio: {}-byte write at {offset:#x}; registers are 32-bit",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            tracing::warn!("virtio-mmio: misaligned write at {offset:#x}; ignored");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(bytes));
    }
}

mod persist;
#[cfg(test)]
mod tests;
