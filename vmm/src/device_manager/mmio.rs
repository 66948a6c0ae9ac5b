// SPDX-License-Identifier: Apache-2.0
//! virtio-mmio slots: one 4 KiB register window and one GSI per device,
//! from [`VIRTIO_MMIO_START`] and [`VIRTIO_GSI_START`] up, in the order the
//! devices are attached, and the `virtio_mmio.device=` switch that tells
//! the guest kernel about each (no device tree or ACPI here).

use std::sync::{Arc, Mutex};

use kvm_ioctls::IoEventAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::arch::layout::{
    IOAPIC_PINS, IOAPIC_START, MMIO_WINDOW_SIZE, VIRTIO_GSI_START, VIRTIO_MMIO_START,
};
use crate::devices::bus::{Bus, BusError};
use crate::devices::virtio::transport::mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
use crate::devices::virtio::{DeviceStateError, VirtioDevice, VirtioDeviceState, VirtioInterrupt};
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vm::{Vm, VmError};

/// Most virtio-mmio devices: one per IOAPIC pin from GSI 5.
pub const MAX_VIRTIO_DEVICES: usize = (IOAPIC_PINS - VIRTIO_GSI_START) as usize;

/// Errors placing a virtio device.
#[derive(Debug, thiserror::Error)]
pub enum MmioDeviceError {
    /// More devices than interrupt lines.
    #[error("Too many virtio devices: {0} (at most {MAX_VIRTIO_DEVICES})")]
    TooManyDevices(usize),
    /// The interrupt event could not be created.
    #[error("Cannot create the interrupt event of the virtio device at {0:#x}")]
    InterruptEvent(u64, #[source] std::io::Error),
    /// KVM refused the irqfd.
    #[error("Cannot connect the virtio device at {0:#x} to its interrupt")]
    Irqfd(u64, #[source] VmError),
    /// KVM refused a queue notification event.
    #[error("Cannot register queue {queue} notifications of the virtio device at {base:#x}")]
    Ioeventfd {
        /// The device's window.
        base: u64,
        /// The queue.
        queue: usize,
        /// What KVM said.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The window overlaps another device.
    #[error("Cannot place the virtio device at {0:#x}")]
    Bus(u64, #[source] BusError),
    /// The snapshot's state does not fit the device, or is invalid.
    #[error("Cannot restore the virtio device at {0:#x}")]
    Restore(u64, #[source] DeviceStateError),
}

/// A virtio-mmio device's place: register window and GSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioSlot {
    /// Guest-physical start of the 4 KiB register window.
    pub base: u64,
    /// The device's interrupt line.
    pub gsi: u32,
}

impl MmioSlot {
    /// The kernel command-line switch announcing this device.
    pub fn cmdline_switch(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.gsi)
    }
}

/// The slots of `count` devices, in order.
///
/// # Errors
/// [`MmioDeviceError::TooManyDevices`] beyond [`MAX_VIRTIO_DEVICES`].
pub fn allocate_slots(count: usize) -> Result<Vec<MmioSlot>, MmioDeviceError> {
    if count > MAX_VIRTIO_DEVICES {
        return Err(MmioDeviceError::TooManyDevices(count));
    }
    Ok((0..count as u32)
        .map(|i| MmioSlot {
            base: VIRTIO_MMIO_START + u64::from(i) * MMIO_WINDOW_SIZE,
            gsi: VIRTIO_GSI_START + i,
        })
        .collect())
}

/// Puts `device` in `slot`: its interrupt on the slot's GSI (irqfd), its
/// queue notifications straight to the device's events (ioeventfd, no exit
/// to the VMM), its registers on the MMIO bus. Returns the transport, whose
/// state a snapshot saves.
///
/// # Errors
/// An [`MmioDeviceError`] when KVM or the bus refuses.
pub fn attach_virtio_device(
    vm: &Vm,
    mmio: &mut Bus,
    mem: &GuestMemoryMmap,
    slot: MmioSlot,
    device: Arc<Mutex<dyn VirtioDevice>>,
) -> Result<Arc<Mutex<MmioTransport>>, MmioDeviceError> {
    let interrupt = connect(vm, slot, &device)?;
    place(
        mmio,
        slot,
        MmioTransport::new(device, mem.clone(), interrupt),
    )
}

/// [`attach_virtio_device`] for a restored VM: `device` was created from
/// the restore's back ends, and its transport is rebuilt from `state`
/// ([`MmioTransport::restore`]) once its interrupt and notifications are
/// wired, so that an interrupt or activation it replays reaches KVM.
///
/// # Errors
/// An [`MmioDeviceError`] when KVM or the bus refuses, or
/// [`MmioDeviceError::Restore`] when `state` does not fit `device`.
pub fn attach_restored_virtio_device(
    vm: &Vm,
    mmio: &mut Bus,
    mem: &GuestMemoryMmap,
    slot: MmioSlot,
    device: Arc<Mutex<dyn VirtioDevice>>,
    state: &VirtioDeviceState,
) -> Result<Arc<Mutex<MmioTransport>>, MmioDeviceError> {
    let interrupt = connect(vm, slot, &device)?;
    let transport = MmioTransport::restore(device, mem.clone(), interrupt, state)
        .map_err(|e| MmioDeviceError::Restore(slot.base, e))?;
    place(mmio, slot, transport)
}

/// Registers the slot's irqfd and the device's queue ioeventfds; returns
/// the interrupt raised through that irqfd.
fn connect(
    vm: &Vm,
    slot: MmioSlot,
    device: &Arc<Mutex<dyn VirtioDevice>>,
) -> Result<Arc<VirtioInterrupt>, MmioDeviceError> {
    debug_assert!(slot.base + MMIO_WINDOW_SIZE <= IOAPIC_START);
    let irqfd =
        EventFd::new(EFD_NONBLOCK).map_err(|e| MmioDeviceError::InterruptEvent(slot.base, e))?;
    vm.register_irqfd(&irqfd, slot.gsi)
        .map_err(|e| MmioDeviceError::Irqfd(slot.base, e))?;
    let device = device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let notify = IoEventAddress::Mmio(slot.base + QUEUE_NOTIFY_OFFSET);
    for (queue, event) in device.queue_events().iter().enumerate() {
        vm.fd()
            .register_ioevent(event, &notify, queue as u32)
            .map_err(|source| MmioDeviceError::Ioeventfd {
                base: slot.base,
                queue,
                source,
            })?;
    }
    Ok(Arc::new(VirtioInterrupt::new(irqfd)))
}

/// Puts `transport`'s registers on the bus at the slot's window.
fn place(
    mmio: &mut Bus,
    slot: MmioSlot,
    transport: MmioTransport,
) -> Result<Arc<Mutex<MmioTransport>>, MmioDeviceError> {
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(transport.clone(), slot.base, MMIO_WINDOW_SIZE)
        .map_err(|e| MmioDeviceError::Bus(slot.base, e))?;
    Ok(transport)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::rng::Entropy;
    use crate::devices::virtio::test_utils::{guest_memory, DriverQueue, QUEUE_SIZE};
    use crate::vstate::kvm::KvmContext;

    /// Writes the 32-bit register at `offset` of the window at `base`.
    fn write(bus: &Bus, base: u64, offset: u64, value: u32) {
        assert!(bus.write(base + offset, &value.to_le_bytes()));
    }

    fn read(bus: &Bus, base: u64, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        assert!(bus.read(base + offset, &mut data));
        u32::from_le_bytes(data)
    }

    #[test]
    fn test_a_restored_device_is_wired_and_active_in_another_vm() {
        let kvm = match KvmContext::open() {
            Ok(kvm) => kvm,
            Err(err) => {
                eprintln!("skipped: /dev/kvm unusable: {err}");
                return;
            }
        };
        let mem = guest_memory();
        let vm = Vm::new(&kvm, &mem).unwrap();
        let mut bus = Bus::new();
        let slot = allocate_slots(1).unwrap()[0];
        let rng = Arc::new(Mutex::new(Entropy::new().unwrap()));
        let transport = attach_virtio_device(&vm, &mut bus, &mem, slot, rng).unwrap();
        // A driver's set-up through the bus: status steps, VERSION_1,
        // queue 0, DRIVER_OK.
        let base = slot.base;
        for status in [1, 3] {
            write(&bus, base, 0x70, status);
        }
        write(&bus, base, 0x24, 1);
        write(&bus, base, 0x20, 1);
        write(&bus, base, 0x70, 11);
        let queue = DriverQueue::new(0);
        write(&bus, base, 0x38, u32::from(QUEUE_SIZE));
        write(&bus, base, 0x80, queue.desc_table().0 as u32);
        write(&bus, base, 0x90, queue.avail_ring().0 as u32);
        write(&bus, base, 0xa0, queue.used_ring().0 as u32);
        write(&bus, base, 0x44, 1);
        write(&bus, base, 0x70, 15);
        let state = transport.lock().unwrap().save_state().unwrap();
        assert_eq!(state.transport.device_status, 15);

        let other_mem = guest_memory();
        let other_vm = Vm::new(&kvm, &other_mem).unwrap();
        let mut other_bus = Bus::new();
        let fresh = Arc::new(Mutex::new(Entropy::new().unwrap()));
        attach_restored_virtio_device(
            &other_vm,
            &mut other_bus,
            &other_mem,
            slot,
            fresh.clone(),
            &state,
        )
        .unwrap();
        assert_eq!(read(&other_bus, base, 0x70), 15, "DRIVER_OK");
        assert!(fresh.lock().unwrap().queues_in_use().is_some(), "active");

        let mut corrupt = state.clone();
        corrupt.transport.queues[0].desc_table = 1 << 40;
        let third_vm = Vm::new(&kvm, &other_mem).unwrap();
        let fresh = Arc::new(Mutex::new(Entropy::new().unwrap()));
        let err = attach_restored_virtio_device(
            &third_vm,
            &mut Bus::new(),
            &other_mem,
            slot,
            fresh,
            &corrupt,
        )
        .unwrap_err();
        assert_eq!(
            vmpod_sys::error::chain(&err).to_string(),
            "Cannot restore the virtio device at 0xc0001000: \
             Cannot activate the restored virtio-rng device: \
             Queue 0 is set up outside guest memory or with an invalid size"
        );
    }

    #[test]
    fn test_slots_follow_each_other_from_gsi_5() {
        let slots = allocate_slots(3).unwrap();
        assert_eq!(
            slots[0],
            MmioSlot {
                base: 0xc000_1000,
                gsi: 5
            }
        );
        assert_eq!(slots[2].base, 0xc000_3000);
        assert_eq!(slots[2].gsi, 7);
        assert_eq!(
            slots[1].cmdline_switch(),
            "virtio_mmio.device=4K@0xc0002000:6"
        );
    }

    #[test]
    fn test_slots_stop_at_the_last_ioapic_pin() {
        let slots = allocate_slots(MAX_VIRTIO_DEVICES).unwrap();
        assert_eq!(slots.last().unwrap().gsi, IOAPIC_PINS - 1);
        assert!(matches!(
            allocate_slots(MAX_VIRTIO_DEVICES + 1),
            Err(MmioDeviceError::TooManyDevices(20))
        ));
        assert!(allocate_slots(0).unwrap().is_empty());
    }
}
