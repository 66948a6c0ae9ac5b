// SPDX-License-Identifier: Apache-2.0
//! The guest's CPUID table.
//!
//! The table starts from what KVM can virtualise (`KVM_GET_SUPPORTED_CPUID`). A
//! [`CpuTemplate`] then hides features the guest must not see, and [`normalize()`] fills in
//! what differs per vCPU: APIC ids, the topology, the hypervisor signature. The result is
//! what [`build_vcpu_cpuid`] returns for `KVM_SET_CPUID2`.
//!
//! On hosts where the guest's supervisor mode is emulated the guest does not read this
//! table at all, so [`CpuTemplate::kernel_cmdline_switches`] gives the kernel command-line
//! switches that keep it off the features the emulator lacks.

mod normalize;
mod template;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

pub use self::normalize::{normalize, MAX_VCPU_COUNT};
pub use self::template::CpuTemplate;

/// Errors while building a vCPU's CPUID table.
#[derive(Debug, thiserror::Error)]
pub enum CpuidError {
    /// `CpuTemplate::Auto` reached a step that needs a concrete template.
    #[error("The CPU template 'auto' was not resolved before use")]
    UnresolvedTemplate,
    /// The vCPU count cannot be described by CPUID's topology fields.
    #[error("The vCPU count {0} is outside 1..={max}", max = MAX_VCPU_COUNT)]
    InvalidVcpuCount(u8),
    /// The vCPU index does not name one of the VM's vCPUs.
    #[error("The vCPU index {index} is not below the vCPU count {count}")]
    InvalidVcpuIndex {
        /// The index asked for.
        index: u8,
        /// The VM's vCPU count.
        count: u8,
    },
    /// The table is full, so the hypervisor signature leaf cannot be added.
    #[error("Cannot add the hypervisor CPUID leaf")]
    AddHypervisorLeaf(#[source] vmm_sys_util::fam::Error),
    /// The table is full, so the core level of an extended-topology leaf cannot be added.
    #[error("Cannot add the core level of CPUID leaf {leaf:#x}")]
    AddTopologyLevel {
        /// The extended-topology leaf (0xB or 0x1F).
        leaf: u32,
        /// Why the table did not grow (it holds at most
        /// `KVM_MAX_CPUID_ENTRIES` entries).
        #[source]
        error: vmm_sys_util::fam::Error,
    },
}

/// Leaf 0x1: version information and feature flags.
const LEAF_FEATURES: u32 = 0x1;
/// Leaf 0x4: deterministic cache parameters, one subleaf per cache.
const LEAF_CACHE_PARAMS: u32 = 0x4;
/// Leaf 0x6: thermal and power management.
const LEAF_POWER_MGMT: u32 = 0x6;
/// Leaf 0x7: structured extended feature flags (subleaf 0 and 1).
const LEAF_EXT_FEATURES: u32 = 0x7;
/// Leaf 0xB: extended topology enumeration.
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
/// Leaf 0xD: XSAVE state components and sizes, one subleaf per component.
const LEAF_XSAVE: u32 = 0xd;
/// Leaf 0x12: SGX capabilities and enclave page cache sections.
const LEAF_SGX: u32 = 0x12;
/// Leaf 0x1D: AMX tile information.
const LEAF_AMX_TILE: u32 = 0x1d;
/// Leaf 0x1E: AMX TMUL information.
const LEAF_AMX_TMUL: u32 = 0x1e;
/// Leaf 0x1F: V2 extended topology enumeration (same layout as 0xB).
const LEAF_EXT_TOPOLOGY_V2: u32 = 0x1f;
/// Leaf 0x40000000: hypervisor signature and highest hypervisor leaf.
const LEAF_HYPERVISOR: u32 = 0x4000_0000;
/// Leaf 0x40000001: KVM paravirtual features (passed through as KVM reports them).
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;
/// Leaf 0x80000008: address sizes and (AMD) core count.
const LEAF_ADDR_SIZES: u32 = 0x8000_0008;
/// Leaf 0x8000001D: AMD cache topology, one subleaf per cache (layout of leaf 0x4).
const LEAF_AMD_CACHE_TOPOLOGY: u32 = 0x8000_001d;

/// Builds the CPUID table for vCPU `vcpu_index` of a VM with `vcpu_count` vCPUs: a copy of
/// `supported` (KVM's supported CPUID), with `template` applied and then normalised.
///
/// # Errors
/// [`CpuidError::UnresolvedTemplate`] for [`CpuTemplate::Auto`] (call
/// [`CpuTemplate::resolve`] first), and any error of [`normalize()`].
pub fn build_vcpu_cpuid(
    supported: &CpuId,
    template: CpuTemplate,
    vcpu_index: u8,
    vcpu_count: u8,
) -> Result<CpuId, CpuidError> {
    let mut cpuid = supported.clone();
    template.apply(&mut cpuid)?;
    normalize(&mut cpuid, vcpu_index, vcpu_count)?;
    Ok(cpuid)
}

/// All entries of leaf `function`, whatever their subleaf.
fn leaf_entries_mut(
    cpuid: &mut CpuId,
    function: u32,
) -> impl Iterator<Item = &mut kvm_cpuid_entry2> {
    cpuid
        .as_mut_slice()
        .iter_mut()
        .filter(move |entry| entry.function == function)
}

/// Whether the table has an entry for leaf `function` and subleaf `index`.
fn has_entry(cpuid: &CpuId, function: u32, index: u32) -> bool {
    cpuid
        .as_slice()
        .iter()
        .any(|entry| entry.function == function && entry.index == index)
}

/// Sets (`on`) or clears bit `bit` of `reg`.
fn set_bit(reg: &mut u32, bit: u32, on: bool) {
    if on {
        *reg |= 1 << bit;
    } else {
        *reg &= !(1 << bit);
    }
}

/// Replaces the `width`-bit field at bit `shift` of `reg` with `value` (truncated to fit).
fn set_field(reg: &mut u32, shift: u32, width: u32, value: u32) {
    let mask = (u32::MAX >> (32 - width)) << shift;
    *reg = (*reg & !mask) | ((value << shift) & mask);
}

/// Reads the `width`-bit field at bit `shift` of `reg`.
fn get_field(reg: u32, shift: u32, width: u32) -> u32 {
    (reg >> shift) & (u32::MAX >> (32 - width))
}

#[cfg(test)]
mod tests {
    use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

    use super::*;

    /// An entry with the given registers.
    pub(crate) fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        let indexed = matches!(function, 0x4 | 0x7 | 0xb | 0xd | 0x12 | 0x1d | 0x1f);
        kvm_cpuid_entry2 {
            function,
            index,
            flags: if indexed {
                KVM_CPUID_FLAG_SIGNIFCANT_INDEX
            } else {
                0
            },
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// The leaves and subleaves of the synthetic tables.
    const SYNTHETIC_KEYS: [(u32, u32); 15] = [
        (0x0, 0),
        (0x1, 0),
        (0x4, 0),
        (0x4, 1),
        (0x4, 2),
        (0x6, 0),
        (0x7, 0),
        (0x7, 1),
        (0xb, 0),
        (0xb, 1),
        (0xd, 0),
        (0xd, 1),
        (0xd, 2),
        (0x8000_0000, 0),
        (0x8000_0008, 0),
    ];

    /// A table of the usual leaves with every register all ones.
    pub(crate) fn all_ones_cpuid() -> CpuId {
        let entries: Vec<_> = SYNTHETIC_KEYS
            .iter()
            .map(|&(function, index)| entry(function, index, [u32::MAX; 4]))
            .collect();
        CpuId::from_entries(&entries).unwrap()
    }

    /// A table shaped like what KVM reports on an Intel host: L1d, L2 and L3 caches in leaf
    /// 4, two topology levels in leaf 0xB, XSAVE with x87/SSE/AVX in leaf 0xD.
    pub(crate) fn host_like_cpuid() -> CpuId {
        let entries = [
            entry(0x0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(0x1, 0, [0x0009_06ea, 0x0010_0800, 0xf7fa_3223, 0x0f8b_fbff]),
            // Cache type/level in EAX[7:0]: 0x21 = L1 data, 0x43 = L2 unified, 0x63 = L3.
            entry(0x4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]),
            entry(0x4, 1, [0x1c00_4143, 0x03c0_003f, 0x3ff, 0]),
            entry(0x4, 2, [0x1c03_c163, 0x03c0_003f, 0x3fff, 0x6]),
            entry(0x6, 0, [0x0000_27f7, 0x2, 0x9, 0]),
            entry(0x7, 0, [0, 0x029c_6fbf, 0x4000_0000, 0xbc00_0400]),
            entry(0x7, 1, [0x0000_0010, 0, 0, 0]),
            entry(0xb, 0, [0x1, 0x2, 0x100, 0x7]),
            entry(0xb, 1, [0x4, 0x8, 0x201, 0x7]),
            entry(0xd, 0, [0x7, 0x340, 0x340, 0]),
            entry(0xd, 1, [0xf, 0x340, 0, 0]),
            entry(0xd, 2, [0x100, 0x240, 0, 0]),
            entry(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3027, 0, 0x7003, 0]),
        ];
        CpuId::from_entries(&entries).unwrap()
    }

    /// The entry for leaf `function`, subleaf `index`.
    pub(crate) fn get(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("no CPUID entry {function:#x}.{index}"))
    }

    #[test]
    fn test_set_field_replaces_only_the_field() {
        let mut reg = u32::MAX;
        set_field(&mut reg, 14, 12, 3);
        assert_eq!(reg, 0xfc00_3fff | (3 << 14));
        assert_eq!(get_field(reg, 14, 12), 3);
        set_field(&mut reg, 26, 6, 0xff);
        assert_eq!(get_field(reg, 26, 6), 0x3f);
        set_field(&mut reg, 0, 32, 5);
        assert_eq!(reg, 5);
    }

    #[test]
    fn test_set_bit_sets_and_clears() {
        let mut reg = 0;
        set_bit(&mut reg, 31, true);
        assert_eq!(reg, 0x8000_0000);
        set_bit(&mut reg, 31, false);
        assert_eq!(reg, 0);
    }

    #[test]
    fn test_build_vcpu_cpuid_applies_template_then_normalizes() {
        let supported = all_ones_cpuid();
        let cpuid = build_vcpu_cpuid(&supported, CpuTemplate::EmulatedSupervisor, 3, 4).unwrap();
        let leaf1 = get(&cpuid, LEAF_FEATURES, 0);
        assert_eq!(leaf1.ebx >> 24, 3);
        assert_eq!(leaf1.ecx & (1 << 26), 0, "XSAVE cleared by the template");
        assert_ne!(leaf1.ecx & (1 << 31), 0, "hypervisor bit set by normalize");
        // The input is not modified.
        assert_eq!(get(&supported, LEAF_FEATURES, 0).ebx, u32::MAX);
    }

    #[test]
    fn test_build_vcpu_cpuid_rejects_unresolved_auto() {
        let err = build_vcpu_cpuid(&all_ones_cpuid(), CpuTemplate::Auto, 0, 1).unwrap_err();
        assert!(matches!(err, CpuidError::UnresolvedTemplate));
        assert_eq!(
            err.to_string(),
            "The CPU template 'auto' was not resolved before use"
        );
    }

    #[test]
    fn test_build_vcpu_cpuid_on_real_kvm() {
        let kvm = match kvm_ioctls::Kvm::new() {
            Ok(kvm) => kvm,
            Err(err) => {
                eprintln!("skipped: /dev/kvm unavailable: {err}");
                return;
            }
        };
        let supported = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let templates = [
            CpuTemplate::Host,
            CpuTemplate::Baseline,
            CpuTemplate::EmulatedSupervisor,
            CpuTemplate::Auto.resolve(false),
            CpuTemplate::Auto.resolve(true),
        ];
        for template in templates {
            let vm = kvm.create_vm().unwrap();
            for index in 0..2u8 {
                let cpuid = build_vcpu_cpuid(&supported, template, index, 2).unwrap();
                let vcpu = vm.create_vcpu(u64::from(index)).unwrap();
                vcpu.set_cpuid2(&cpuid)
                    .unwrap_or_else(|e| panic!("KVM_SET_CPUID2 for {template}: {e}"));
                let back = vcpu
                    .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                    .unwrap();
                assert_eq!(get(&back, LEAF_FEATURES, 0).ebx >> 24, u32::from(index));
                let hv = get(&back, LEAF_HYPERVISOR, 0);
                assert_eq!(
                    [
                        hv.ebx.to_le_bytes(),
                        hv.ecx.to_le_bytes(),
                        hv.edx.to_le_bytes()
                    ]
                    .concat(),
                    b"KVMKVMKVM\0\0\0"
                );
            }
        }
    }
}
