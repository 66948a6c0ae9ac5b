// SPDX-License-Identifier: Apache-2.0
//! Model-specific registers set on every vCPU before boot.

use kvm_bindings::{kvm_msr_entry, Msrs};

/// SYSENTER code segment.
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
/// SYSENTER stack pointer.
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
/// SYSENTER entry point.
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
/// SYSCALL segments.
const MSR_STAR: u32 = 0xc000_0081;
/// SYSCALL 64-bit entry point.
const MSR_LSTAR: u32 = 0xc000_0082;
/// SYSCALL compat entry point.
const MSR_CSTAR: u32 = 0xc000_0083;
/// SYSCALL RFLAGS mask.
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
/// SWAPGS target.
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// Miscellaneous features.
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
/// Fast string operations (REP MOVS/STOS) enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// Default memory type and MTRR enable.
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default type write-back: all guest RAM is cacheable.
const MTRR_ENABLED_WRITEBACK: u64 = (1 << 11) | 6;

/// Errors building the MSR list.
#[derive(Debug, thiserror::Error)]
pub enum MsrError {
    /// The FAM wrapper refused the entries.
    #[error("Cannot build the boot MSR list")]
    Build(#[source] vmm_sys_util::fam::Error),
}

/// The MSRs every vCPU starts with: system-call entry points cleared (the
/// kernel sets its own), fast strings on, MTRRs on with write-back default.
///
/// # Errors
/// [`MsrError::Build`] if the list cannot be allocated.
pub fn boot_msrs() -> Result<Msrs, MsrError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    Msrs::from_entries(&[
        entry(MSR_IA32_SYSENTER_CS, 0),
        entry(MSR_IA32_SYSENTER_ESP, 0),
        entry(MSR_IA32_SYSENTER_EIP, 0),
        entry(MSR_STAR, 0),
        entry(MSR_CSTAR, 0),
        entry(MSR_KERNEL_GS_BASE, 0),
        entry(MSR_SYSCALL_MASK, 0),
        entry(MSR_LSTAR, 0),
        entry(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(MSR_MTRR_DEF_TYPE, MTRR_ENABLED_WRITEBACK),
    ])
    .map_err(MsrError::Build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_boot_msrs_enable_mtrrs_and_fast_strings() {
        let msrs = boot_msrs().unwrap();
        let find = |index| {
            msrs.as_slice()
                .iter()
                .find(|e| e.index == index)
                .unwrap()
                .data
        };
        assert_eq!(find(MSR_MTRR_DEF_TYPE), 0x806);
        assert_eq!(find(MSR_IA32_MISC_ENABLE), 1);
        assert_eq!(find(MSR_LSTAR), 0);
        assert_eq!(msrs.as_slice().len(), 10);
    }
}
