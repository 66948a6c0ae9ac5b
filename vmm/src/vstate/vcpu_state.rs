// SPDX-License-Identifier: Apache-2.0
//! A vCPU's architectural state as KVM holds it: read from a paused vCPU
//! for a snapshot, and loaded into a fresh vCPU to go on from there.

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs,
    kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_MSR_ENTRIES, KVM_MAX_XCRS,
    KVM_MP_STATE_AP_RESET_HOLD, KVM_MP_STATE_HALTED, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_SUSPENDED,
    KVM_MP_STATE_UNINITIALIZED,
};
use serde::{Deserialize, Serialize};

use super::vcpu::{Vcpu, VcpuError};

/// The MP states an x86 vCPU can be in (`KVM_GET_MP_STATE` on x86 reports
/// no other; the rest belong to s390).
const X86_MP_STATES: [u32; 7] = [
    KVM_MP_STATE_RUNNABLE,
    KVM_MP_STATE_UNINITIALIZED,
    KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_HALTED,
    KVM_MP_STATE_SIPI_RECEIVED,
    KVM_MP_STATE_AP_RESET_HOLD,
    KVM_MP_STATE_SUSPENDED,
];

/// Everything KVM keeps of one vCPU that a guest can observe, saved while
/// the vCPU is paused outside the guest.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87, SSE and extended (AVX…) register state, in XSAVE layout.
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Every MSR of `KVM_GET_MSR_INDEX_LIST`, with its value.
    pub msrs: Vec<kvm_msr_entry>,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Running, halted, or waiting for INIT/SIPI.
    pub mp_state: kvm_mp_state,
    /// Pending exceptions, interrupts, NMIs and interrupt shadows.
    pub vcpu_events: kvm_vcpu_events,
    /// Debug registers DR0–DR3, DR6, DR7.
    pub debug_regs: kvm_debugregs,
}

// By hand: `kvm_xsave` ends in a flexible array and is not `Clone`; its
// fixed 4 KiB region is all KVM_GET_XSAVE fills.
impl Clone for VcpuState {
    fn clone(&self) -> Self {
        VcpuState {
            regs: self.regs,
            sregs: self.sregs,
            xsave: kvm_xsave {
                region: self.xsave.region,
                ..Default::default()
            },
            xcrs: self.xcrs,
            msrs: self.msrs.clone(),
            lapic: self.lapic,
            mp_state: self.mp_state,
            vcpu_events: self.vcpu_events,
            debug_regs: self.debug_regs,
        }
    }
}

impl Vcpu {
    fn save_error(&self, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::SaveState {
            what,
            index,
            source,
        }
    }

    /// Sets only CPUID, before [`Vcpu::restore_state`] loads the rest
    /// (the boot state of [`Vcpu::configure`] would only be overwritten).
    ///
    /// # Errors
    /// [`VcpuError::Configure`] when KVM refuses the table.
    pub fn configure_for_restore(&self, cpuid: &CpuId) -> Result<(), VcpuError> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(self.configure_error("CPUID"))
    }

    /// Reads the vCPU's state, with the MSRs of `msr_list`. Call from the
    /// thread that runs the vCPU, while it is outside `KVM_RUN` with no
    /// port or MMIO access pending (see [`super::vcpu::VcpuHandle::pause`]).
    ///
    /// # Errors
    /// [`VcpuError::SaveState`] for a state KVM refused to give, or
    /// [`VcpuError::MissingMsr`] when KVM gives fewer MSRs than listed.
    pub fn save_state(&self, msr_list: &[u32]) -> Result<VcpuState, VcpuError> {
        let fd = &self.fd;
        // MP state first: reading it makes KVM take in a pending INIT or
        // SIPI, which changes the registers read after it.
        let mp_state = fd.get_mp_state().map_err(self.save_error("MP state"))?;
        let regs = fd.get_regs().map_err(self.save_error("registers"))?;
        let sregs = fd
            .get_sregs()
            .map_err(self.save_error("segment registers"))?;
        let xsave = fd.get_xsave().map_err(self.save_error("XSAVE state"))?;
        let xcrs = fd.get_xcrs().map_err(self.save_error("XCRs"))?;
        let debug_regs = fd
            .get_debug_regs()
            .map_err(self.save_error("debug registers"))?;
        let lapic = fd.get_lapic().map_err(self.save_error("LAPIC"))?;
        let msrs = self.save_msrs(msr_list)?;
        let vcpu_events = fd
            .get_vcpu_events()
            .map_err(self.save_error("pending events"))?;
        Ok(VcpuState {
            regs,
            sregs,
            xsave,
            xcrs,
            msrs,
            lapic,
            mp_state,
            vcpu_events,
            debug_regs,
        })
    }

    fn save_msrs(&self, msr_list: &[u32]) -> Result<Vec<kvm_msr_entry>, VcpuError> {
        let entries: Vec<kvm_msr_entry> = msr_list
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = self.msr_buffer(&entries)?;
        let got = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(self.save_error("MSRs"))?;
        // KVM stops at the first MSR it cannot read and says how many it read.
        if let Some(missing) = entries.get(got) {
            return Err(VcpuError::MissingMsr {
                index: self.index,
                msr: missing.index,
                got,
                wanted: entries.len(),
            });
        }
        Ok(msrs.as_slice().to_vec())
    }

    fn msr_buffer(&self, entries: &[kvm_msr_entry]) -> Result<Msrs, VcpuError> {
        if entries.len() > KVM_MAX_MSR_ENTRIES {
            return Err(VcpuError::TooManyMsrs {
                index: self.index,
                count: entries.len(),
            });
        }
        Msrs::from_entries(entries).map_err(|e| VcpuError::MsrBuffer(self.index, e))
    }

    /// Loads `state` into this vCPU, which has its CPUID set
    /// ([`Vcpu::configure_for_restore`]) and has not run yet.
    ///
    /// The order follows what KVM checks and resets as each state is set:
    /// - CPUID came first: KVM checks XCR0, XSAVE features and many MSRs
    ///   against the guest's CPUID.
    /// - MP state before the events: once the events put the vCPU in SMM
    ///   or make an SMI pending, KVM refuses an INIT- or SIPI-received MP
    ///   state.
    /// - Segment registers before the LAPIC: they carry the APIC base, and a
    ///   changed base resets the LAPIC.
    /// - The LAPIC before the MSRs: KVM drops a TSC-deadline MSR write while
    ///   the LAPIC timer is not in TSC-deadline mode.
    /// - The events last: setting the registers clears a pending exception,
    ///   and the segment registers' interrupt bitmap queues an interrupt;
    ///   the saved events are what must stay pending.
    ///
    /// # Errors
    /// A [`VcpuError`] naming the state that is invalid or that KVM refused.
    pub fn restore_state(&self, state: &VcpuState) -> Result<(), VcpuError> {
        self.validate(state)?;
        let fd = &self.fd;
        fd.set_mp_state(state.mp_state)
            .map_err(self.configure_error("MP state"))?;
        fd.set_regs(&state.regs)
            .map_err(self.configure_error("registers"))?;
        fd.set_sregs(&state.sregs)
            .map_err(self.configure_error("segment registers"))?;
        // SAFETY: KVM reads as many bytes as the guest's XSAVE area holds:
        // at most the 4 KiB of `kvm_xsave`, since vmpod never asks for the
        // dynamically enabled (AMX) components that make it larger.
        unsafe { fd.set_xsave(&state.xsave) }.map_err(self.configure_error("XSAVE state"))?;
        fd.set_xcrs(&state.xcrs)
            .map_err(self.configure_error("XCRs"))?;
        fd.set_debug_regs(&state.debug_regs)
            .map_err(self.configure_error("debug registers"))?;
        fd.set_lapic(&state.lapic)
            .map_err(self.configure_error("LAPIC"))?;
        self.restore_msrs(&state.msrs)?;
        fd.set_vcpu_events(&state.vcpu_events)
            .map_err(self.configure_error("pending events"))
    }

    /// What KVM would not check itself, or would check with only EINVAL.
    fn validate(&self, state: &VcpuState) -> Result<(), VcpuError> {
        if !X86_MP_STATES.contains(&state.mp_state.mp_state) {
            return Err(VcpuError::InvalidMpState {
                index: self.index,
                value: state.mp_state.mp_state,
            });
        }
        if state.xcrs.nr_xcrs > KVM_MAX_XCRS {
            return Err(VcpuError::TooManyXcrs {
                index: self.index,
                count: state.xcrs.nr_xcrs,
            });
        }
        Ok(())
    }

    fn restore_msrs(&self, entries: &[kvm_msr_entry]) -> Result<(), VcpuError> {
        let msrs = self.msr_buffer(entries)?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.configure_error("MSRs"))?;
        // KVM stops at the first MSR it refuses and says how many it set.
        match entries.get(set) {
            Some(refused) => Err(VcpuError::RefusedMsr {
                index: self.index,
                msr: refused.index,
                set,
                wanted: entries.len(),
            }),
            None => Ok(()),
        }
    }
}
