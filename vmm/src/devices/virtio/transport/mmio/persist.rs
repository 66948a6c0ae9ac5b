// SPDX-License-Identifier: Apache-2.0
//! Saving a virtio-mmio transport with its device, and rebuilding it from
//! a snapshot (see [`crate::devices::virtio::persist`]).
//!
//! A saved state is as untrusted as a driver's register writes: the status
//! must be one the state machine can reach, acknowledged features must be
//! offered by the new device, each queue's size and ring alignment pass
//! the same checks as the driver's writes, and an active device's queues
//! pass the DRIVER_OK checks (ready, inside guest memory) before the
//! device gets them.

use std::sync::{Arc, Mutex};

use virtio_queue::QueueT;

use super::{status, MmioTransport};
use crate::devices::virtio::device::{
    VirtioDevice, VirtioInterrupt, VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING,
};
use crate::devices::virtio::persist::{
    device_name, DeviceStateError, MmioTransportState, QueueState, VirtioDeviceState,
};
use crate::devices::virtio::{feature, VIRTIO_F_VERSION_1};
use crate::vstate::memory::{GuestAddress, GuestMemoryMmap};

impl MmioTransport {
    /// The transport's registers and queues with its device's own state.
    /// Queue positions are the device's, from the queues it works on.
    ///
    /// # Errors
    /// The device's [`DeviceStateError`] when it cannot be snapshotted now
    /// (a mounted virtio-fs share).
    pub fn save_state(&self) -> Result<VirtioDeviceState, DeviceStateError> {
        let device = self.device();
        let saved = device.save_state()?;
        let in_use = device.queues_in_use();
        let queues = self
            .queues
            .iter()
            .enumerate()
            .map(|(index, slot)| {
                let live = in_use
                    .and_then(|queues| queues.get(index))
                    .unwrap_or(&slot.queue);
                QueueState {
                    ready: slot.queue.ready(),
                    size: slot.queue.size(),
                    desc_table: slot.queue.desc_table(),
                    avail_ring: slot.queue.avail_ring(),
                    used_ring: slot.queue.used_ring(),
                    next_avail: live.next_avail(),
                    next_used: live.next_used(),
                    setup_refused: slot.invalid,
                }
            })
            .collect();
        Ok(VirtioDeviceState {
            device_type: device.device_type(),
            transport: MmioTransportState {
                device_status: self.device_status,
                device_features_select: self.device_features_select,
                driver_features_select: self.driver_features_select,
                acked_features: self.acked_features,
                queue_select: self.queue_select,
                queues,
                interrupt_status: self.interrupt.status(),
                config_generation: self.config_generation,
            },
            device: saved,
        })
    }

    /// A transport for `device` (freshly created from the restore's back
    /// ends) as `state` saved it: the device's own state applied, the
    /// registers and queues set, the device activated if the driver had
    /// activated it, each of its queues notified once (a notification in
    /// flight at snapshot time is not lost), and an interrupt the driver
    /// had not acknowledged raised again.
    ///
    /// # Errors
    /// A [`DeviceStateError`] naming what in `state` does not fit the
    /// device or is invalid.
    pub fn restore(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
        state: &VirtioDeviceState,
    ) -> Result<Self, DeviceStateError> {
        let mut transport = MmioTransport::new(device, mem, interrupt);
        let name = {
            let mut device = transport.device();
            let kind = device.device_type();
            if state.device_type != kind {
                return Err(DeviceStateError::WrongKind {
                    saved: device_name(state.device_type),
                    device: device_name(kind),
                });
            }
            device.restore_state(&state.device)?;
            device_name(kind)
        };
        transport.restore_registers(&state.transport)?;
        transport.restore_queues(&state.transport.queues)?;
        if transport.has_status(status::DRIVER_OK)
            && !transport.has_status(status::FAILED)
            && !transport.has_status(status::NEEDS_RESET)
        {
            let queues = transport
                .queue_set()
                .map_err(|e| DeviceStateError::Activate(name, e))?;
            transport
                .device()
                .activate(queues)
                .map_err(|e| DeviceStateError::Activate(name, e))?;
            transport.notify_all_queues();
        }
        transport
            .interrupt
            .restore_status(state.transport.interrupt_status)
            .map_err(|e| DeviceStateError::Interrupt(name, e))?;
        Ok(transport)
    }

    /// Raises the device's interrupt again if the driver has causes left
    /// to acknowledge. A restore calls it once the vCPUs' local APICs and
    /// the VM's IOAPIC hold their saved state, just before the vCPUs run:
    /// an interrupt raised while the transport was restored, or by the
    /// device since, went to interrupt controllers whose state was then
    /// overwritten. An extra interrupt is harmless: the driver reads the
    /// status and finds nothing more to do.
    ///
    /// # Errors
    /// [`DeviceStateError::Interrupt`] when the irqfd cannot be written.
    pub fn raise_pending_interrupt(&self) -> Result<(), DeviceStateError> {
        let name = device_name(self.device().device_type());
        self.interrupt
            .restore_status(self.interrupt.status())
            .map_err(|e| DeviceStateError::Interrupt(name, e))
    }

    fn restore_registers(&mut self, saved: &MmioTransportState) -> Result<(), DeviceStateError> {
        check_status(saved.device_status)?;
        if saved.interrupt_status & !(VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG) != 0 {
            return Err(DeviceStateError::InterruptStatus(saved.interrupt_status));
        }
        self.device_status = saved.device_status;
        self.device_features_select = saved.device_features_select;
        self.driver_features_select = saved.driver_features_select;
        self.acked_features = saved.acked_features;
        self.queue_select = saved.queue_select;
        self.config_generation = saved.config_generation;
        // Before FEATURES_OK the driver may have written anything; from it
        // on, only what the device offers.
        if self.has_status(status::FEATURES_OK) && !self.features_acceptable() {
            return Err(DeviceStateError::Features {
                acked: self.acked_features,
                offered: self.device().avail_features() | feature(VIRTIO_F_VERSION_1),
            });
        }
        Ok(())
    }

    fn restore_queues(&mut self, saved: &[QueueState]) -> Result<(), DeviceStateError> {
        if saved.len() != self.queues.len() {
            let device = self.device();
            return Err(DeviceStateError::QueueCount {
                device_name: device_name(device.device_type()),
                saved: saved.len(),
                device: self.queues.len(),
            });
        }
        for (index, (slot, state)) in self.queues.iter_mut().zip(saved).enumerate() {
            let refused = |e| DeviceStateError::QueueSetup(index, e);
            let queue = &mut slot.queue;
            queue.try_set_size(state.size).map_err(refused)?;
            queue
                .try_set_desc_table_address(GuestAddress(state.desc_table))
                .map_err(refused)?;
            queue
                .try_set_avail_ring_address(GuestAddress(state.avail_ring))
                .map_err(refused)?;
            queue
                .try_set_used_ring_address(GuestAddress(state.used_ring))
                .map_err(refused)?;
            queue.set_next_avail(state.next_avail);
            queue.set_next_used(state.next_used);
            queue.set_ready(state.ready);
            slot.invalid |= state.setup_refused;
        }
        Ok(())
    }

    /// Signals each queue's event, as the driver's notification would.
    fn notify_all_queues(&self) {
        let device = self.device();
        for (index, event) in device.queue_events().iter().enumerate() {
            if let Err(err) = event.write(1) {
                tracing::warn!("virtio-mmio: cannot notify restored queue {index}: {err}");
            }
        }
    }
}

/// Only known bits, each step with the one before it (virtio 1.2, 3.1.1).
fn check_status(value: u32) -> Result<(), DeviceStateError> {
    use status::{ACKNOWLEDGE, DRIVER, DRIVER_OK, FAILED, FEATURES_OK, NEEDS_RESET};
    let known = ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | FAILED | NEEDS_RESET;
    let steps = [
        (DRIVER, ACKNOWLEDGE),
        (FEATURES_OK, DRIVER),
        (DRIVER_OK, FEATURES_OK),
    ];
    let ordered = steps
        .iter()
        .all(|&(bit, needs)| value & bit == 0 || value & needs != 0);
    if value & !known != 0 || !ordered {
        return Err(DeviceStateError::Status(value));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
