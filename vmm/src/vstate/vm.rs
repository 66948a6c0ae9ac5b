// SPDX-License-Identifier: Apache-2.0
//! The KVM VM: in-kernel interrupt controllers, PIT and guest memory slots.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::VmFd;
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
}

/// A VM with its interrupt controllers and timer in the kernel.
#[derive(Debug)]
pub struct Vm {
    fd: VmFd,
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
        let vm = Vm { fd };
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
}
