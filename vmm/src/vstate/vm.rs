// SPDX-License-Identifier: Apache-2.0
//! The KVM VM: in-kernel interrupt controllers, PIT and guest memory slots,
//! and their state for a snapshot.

use std::sync::Arc;

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use super::kvm::KvmContext;
use super::memory::{Address, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

/// Where KVM may put the three pages of its real-mode TSS: just below the
/// BIOS area at the top of the 32-bit space, inside the MMIO gap.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `KVM_CREATE_VM` failed.
    #[error("Cannot create the KVM VM")]
    Create(#[source] kvm_ioctls::Error),
    /// `KVM_SET_TSS_ADDR` failed.
    #[error("Cannot set the TSS address")]
    TssAddress(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_IRQCHIP` failed.
    #[error("Cannot create the in-kernel irqchip")]
    Irqchip(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_PIT2` failed.
    #[error("Cannot create the in-kernel PIT")]
    Pit(#[source] kvm_ioctls::Error),
    /// `KVM_SET_USER_MEMORY_REGION` failed.
    #[error("Cannot register guest memory with KVM")]
    MemorySlot(#[source] kvm_ioctls::Error),
    /// `KVM_IRQFD` failed.
    #[error("Cannot connect an interrupt line to GSI {0}")]
    Irqfd(u32, #[source] kvm_ioctls::Error),
    /// A `KVM_GET_*` call failed while saving the VM's state.
    #[error("Cannot read the {0} of the VM")]
    SaveState(&'static str, #[source] kvm_ioctls::Error),
    /// A `KVM_SET_*` call failed while restoring the VM's state.
    #[error("Cannot restore the {0} of the VM")]
    RestoreState(&'static str, #[source] kvm_ioctls::Error),
    /// A saved interrupt controller is not the one its place says.
    #[error("The saved {slot} holds irqchip {chip_id}, not {expected}")]
    WrongIrqchip {
        /// Which saved controller.
        slot: &'static str,
        /// The chip id it holds.
        chip_id: u32,
        /// The chip id it must hold.
        expected: u32,
    },
}

/// The VM-wide state KVM keeps in the kernel: the two PICs, the IO-APIC,
/// the PIT and the guest's clock (vCPUs and devices are saved apart).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259 PIC.
    pub pic_master: kvm_irqchip,
    /// The slave 8259 PIC.
    pub pic_slave: kvm_irqchip,
    /// The IO-APIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock's time, so guest time goes on from where it stopped.
    pub clock: kvm_clock_data,
}

/// The in-kernel interrupt controllers in saved order: place, chip id.
const IRQCHIPS: [(&str, u32); 3] = [
    ("master PIC", KVM_IRQCHIP_PIC_MASTER),
    ("slave PIC", KVM_IRQCHIP_PIC_SLAVE),
    ("IO-APIC", KVM_IRQCHIP_IOAPIC),
];

/// A VM with its interrupt controllers and timer in the kernel.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
    /// The MSRs each vCPU's saved state holds (from [`KvmContext`]).
    msr_index_list: Arc<[u32]>,
}

impl Vm {
    /// Creates the VM with guest memory `mem`, in-kernel PIC/IO-APIC/LAPICs
    /// and PIT. Memory goes in first: while the VM has no interrupt routes
    /// yet, KVM's memory-slot update skips a costly grace period wait.
    ///
    /// # Errors
    /// A [`VmError`] for the KVM call that failed.
    pub fn new(kvm: &KvmContext, mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let fd = kvm.kvm().create_vm().map_err(VmError::Create)?;
        let vm = Vm {
            fd,
            msr_index_list: Arc::clone(kvm.msr_index_list()),
        };
        vm.register_memory(mem)?;
        let fd = &vm.fd;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::TssAddress)?;
        fd.create_irq_chip().map_err(VmError::Irqchip)?;
        // The dummy speaker port keeps port 0x61 in the kernel too.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::Pit)?;
        Ok(vm)
    }

    fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let region_desc = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region stays mapped for as long as the VM exists:
            // `GuestMemoryMmap` is owned by the VMM for the VM's whole life.
            unsafe { self.fd.set_user_memory_region(region_desc) }.map_err(VmError::MemorySlot)?;
        }
        Ok(())
    }

    /// Makes every write to `event` raise `gsi` in the in-kernel irqchip.
    ///
    /// # Errors
    /// [`VmError::Irqfd`] when KVM refuses.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(|e| VmError::Irqfd(gsi, e))
    }

    /// The raw VM handle, to create vCPUs from.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// The MSRs a vCPU of this VM saves, from `KVM_GET_MSR_INDEX_LIST`.
    pub fn msr_index_list(&self) -> &Arc<[u32]> {
        &self.msr_index_list
    }

    /// Reads the in-kernel irqchips, PIT and clock. Call with every vCPU
    /// paused, so that no vCPU changes them meanwhile.
    ///
    /// # Errors
    /// [`VmError::SaveState`] naming the state KVM refused to give.
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let [pic_master, pic_slave, ioapic] = IRQCHIPS.map(|(what, chip_id)| {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            self.fd
                .get_irqchip(&mut chip)
                .map(|()| chip)
                .map_err(|e| VmError::SaveState(what, e))
        });
        let pit = self
            .fd
            .get_pit2()
            .map_err(|e| VmError::SaveState("PIT", e))?;
        let clock = self
            .fd
            .get_clock()
            .map_err(|e| VmError::SaveState("clock", e))?;
        Ok(VmState {
            pic_master: pic_master?,
            pic_slave: pic_slave?,
            ioapic: ioapic?,
            pit,
            clock,
        })
    }

    /// Restores what [`Vm::save_state`] read, on a VM made by [`Vm::new`]
    /// before its vCPUs first run. Each irqchip must carry the chip id of
    /// its place: KVM would load a PIC's bytes as the IO-APIC otherwise.
    ///
    /// # Errors
    /// [`VmError::WrongIrqchip`] for a misplaced chip, or
    /// [`VmError::RestoreState`] naming the state KVM refused.
    pub fn restore_state(&self, state: &VmState) -> Result<(), VmError> {
        let chips = [&state.pic_master, &state.pic_slave, &state.ioapic];
        for (chip, (slot, expected)) in chips.into_iter().zip(IRQCHIPS) {
            if chip.chip_id != expected {
                return Err(VmError::WrongIrqchip {
                    slot,
                    chip_id: chip.chip_id,
                    expected,
                });
            }
        }
        for (chip, (what, _)) in chips.into_iter().zip(IRQCHIPS) {
            self.fd
                .set_irqchip(chip)
                .map_err(|e| VmError::RestoreState(what, e))?;
        }
        self.fd
            .set_pit2(&state.pit)
            .map_err(|e| VmError::RestoreState("PIT", e))?;
        // Only the clock value: the saved flags (KVM_CLOCK_TSC_STABLE,
        // KVM_CLOCK_REALTIME, KVM_CLOCK_HOST_TSC) describe the old host's
        // clocks, and with KVM_CLOCK_REALTIME set KVM would advance the
        // guest's clock by the wall time spent in the snapshot.
        let clock = kvm_clock_data {
            clock: state.clock.clock,
            ..Default::default()
        };
        self.fd
            .set_clock(&clock)
            .map_err(|e| VmError::RestoreState("clock", e))
    }
}
