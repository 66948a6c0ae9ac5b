// SPDX-License-Identifier: Apache-2.0
//! Per-vCPU normalisation of the CPUID table: APIC ids, topology, cache sharing, power
//! management and the hypervisor signature.
//!
//! The topology presented is one package with `vcpu_count` cores of one thread each; the
//! vCPU's APIC id (and x2APIC id) is its index.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use super::{
    get_field, has_entry, leaf_entries_mut, set_bit, set_field, CpuidError, LEAF_ADDR_SIZES,
    LEAF_AMD_CACHE_TOPOLOGY, LEAF_CACHE_PARAMS, LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2,
    LEAF_FEATURES, LEAF_HYPERVISOR, LEAF_KVM_FEATURES, LEAF_POWER_MGMT,
};

/// Most vCPUs the table can describe: leaf 0x4 `EAX[31:26]` (cores per package - 1) has six
/// bits.
pub const MAX_VCPU_COUNT: u8 = 64;

/// Leaf 0x1 `EBX[31:24]`: initial APIC id.
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
/// Leaf 0x1 `EBX[23:16]`: most addressable logical processor ids in the package.
const LEAF1_EBX_CPU_COUNT_SHIFT: u32 = 16;
/// Leaf 0x1 `EBX[15:8]`: CLFLUSH line size, in 8-byte units.
const LEAF1_EBX_CLFLUSH_SHIFT: u32 = 8;
/// Width of each of the three leaf 0x1 EBX fields above.
const LEAF1_EBX_FIELD_WIDTH: u32 = 8;
/// CLFLUSH line size reported: 8 units of 8 bytes, a 64-byte line.
const CLFLUSH_LINE_SIZE_QWORDS: u32 = 8;
/// Leaf 0x1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR_BIT: u32 = 31;
/// Leaf 0x1 EDX bit 28: HTT, the package has more than one logical processor (so `EBX[23:16]`
/// is meaningful).
const LEAF1_EDX_HTT_BIT: u32 = 28;

/// Leaf 0x4 / 0x8000001D `EAX[4:0]`: cache type; 0 means no more caches.
const CACHE_EAX_TYPE_SHIFT: u32 = 0;
/// Width of the cache type field.
const CACHE_EAX_TYPE_WIDTH: u32 = 5;
/// Leaf 0x4 / 0x8000001D `EAX[7:5]`: cache level (1, 2, 3).
const CACHE_EAX_LEVEL_SHIFT: u32 = 5;
/// Width of the cache level field.
const CACHE_EAX_LEVEL_WIDTH: u32 = 3;
/// Leaf 0x4 / 0x8000001D `EAX[25:14]`: logical processors sharing this cache - 1.
const CACHE_EAX_SHARING_SHIFT: u32 = 14;
/// Width of the sharing field.
const CACHE_EAX_SHARING_WIDTH: u32 = 12;
/// Leaf 0x4 `EAX[31:26]`: addressable core ids in the package - 1.
const LEAF4_EAX_CORES_SHIFT: u32 = 26;
/// Width of the core-count field.
const LEAF4_EAX_CORES_WIDTH: u32 = 6;
/// Highest cache level that is private to a core; levels above are shared by the package.
const LAST_PRIVATE_CACHE_LEVEL: u32 = 2;

/// Leaf 0x6 EAX bit 0: digital temperature sensor (needs thermal MSRs KVM does not emulate).
const LEAF6_EAX_DTS_BIT: u32 = 0;
/// Leaf 0x6 EAX bit 1: Turbo Boost.
const LEAF6_EAX_TURBO_BOOST_BIT: u32 = 1;
/// Leaf 0x6 EAX bit 4: power limit notification.
const LEAF6_EAX_PLN_BIT: u32 = 4;
/// Leaf 0x6 EAX bit 5: clock modulation duty cycle extension.
const LEAF6_EAX_ECMD_BIT: u32 = 5;
/// Leaf 0x6 EAX bit 6: package thermal management.
const LEAF6_EAX_PTM_BIT: u32 = 6;
/// Leaf 0x6 EAX bit 7: HWP (hardware-controlled P-states) base registers.
const LEAF6_EAX_HWP_BIT: u32 = 7;
/// Leaf 0x6 EAX bit 8: HWP notification interrupt.
const LEAF6_EAX_HWP_NOTIFY_BIT: u32 = 8;
/// Leaf 0x6 EAX bit 9: HWP activity window.
const LEAF6_EAX_HWP_ACT_WINDOW_BIT: u32 = 9;
/// Leaf 0x6 EAX bit 10: HWP energy/performance preference.
const LEAF6_EAX_HWP_EPP_BIT: u32 = 10;
/// Leaf 0x6 EAX bit 11: HWP package-level request.
const LEAF6_EAX_HWP_PKG_REQ_BIT: u32 = 11;
/// Leaf 0x6 EAX bit 13: hardware duty cycling.
const LEAF6_EAX_HDC_BIT: u32 = 13;
/// Leaf 0x6 EAX bit 14: Turbo Boost Max 3.0.
const LEAF6_EAX_TURBO_MAX_3_BIT: u32 = 14;
/// Leaf 0x6 EAX bits a VM must not advertise: host power and thermal controls the guest
/// cannot drive. ARAT (bit 2, the APIC timer keeps running in deep C-states), which KVM does
/// emulate, is kept.
const LEAF6_EAX_CLEARED_BITS: [u32; 12] = [
    LEAF6_EAX_DTS_BIT,
    LEAF6_EAX_TURBO_BOOST_BIT,
    LEAF6_EAX_PLN_BIT,
    LEAF6_EAX_ECMD_BIT,
    LEAF6_EAX_PTM_BIT,
    LEAF6_EAX_HWP_BIT,
    LEAF6_EAX_HWP_NOTIFY_BIT,
    LEAF6_EAX_HWP_ACT_WINDOW_BIT,
    LEAF6_EAX_HWP_EPP_BIT,
    LEAF6_EAX_HWP_PKG_REQ_BIT,
    LEAF6_EAX_HDC_BIT,
    LEAF6_EAX_TURBO_MAX_3_BIT,
];
/// Leaf 0x6 `EBX[3:0]`: interrupt thresholds of the digital thermal sensor (zeroed with DTS).
const LEAF6_EBX_DTS_THRESHOLDS_WIDTH: u32 = 4;
/// Leaf 0x6 ECX bit 0: APERF/MPERF (hardware coordination feedback).
const LEAF6_ECX_APERFMPERF_BIT: u32 = 0;
/// Leaf 0x6 ECX bit 3: energy/performance bias (IA32_ENERGY_PERF_BIAS).
const LEAF6_ECX_EPB_BIT: u32 = 3;

/// Leaf 0xB / 0x1F `EAX[4:0]`: bits to shift the x2APIC id right to reach the next level.
const TOPOLOGY_EAX_SHIFT_WIDTH: u32 = 5;
/// Leaf 0xB / 0x1F `EBX[15:0]`: logical processors at this level.
const TOPOLOGY_EBX_COUNT_WIDTH: u32 = 16;
/// Leaf 0xB / 0x1F `ECX[7:0]`: the subleaf number, echoed.
const TOPOLOGY_ECX_LEVEL_NUMBER_WIDTH: u32 = 8;
/// Leaf 0xB / 0x1F `ECX[15:8]`: the level type.
const TOPOLOGY_ECX_LEVEL_TYPE_SHIFT: u32 = 8;
/// Level type 0: invalid, no more levels.
const LEVEL_TYPE_INVALID: u32 = 0;
/// Level type 1: SMT (threads of a core).
const LEVEL_TYPE_SMT: u32 = 1;
/// Level type 2: core (cores of the package).
const LEVEL_TYPE_CORE: u32 = 2;
/// Subleaf describing the SMT level.
const SMT_LEVEL_SUBLEAF: u32 = 0;
/// Subleaf describing the core level.
const CORE_LEVEL_SUBLEAF: u32 = 1;

/// Leaf 0x80000008 `ECX[7:0]`: number of cores - 1 (NC, AMD).
const LEAF_ADDR_SIZES_ECX_NC_WIDTH: u32 = 8;
/// Leaf 0x80000008 `ECX[15:12]`: APIC id bits for the core id (ApicIdSize, AMD); 0 tells the
/// guest to derive them from NC.
const LEAF_ADDR_SIZES_ECX_APIC_ID_SIZE_SHIFT: u32 = 12;
/// Width of the ApicIdSize field.
const LEAF_ADDR_SIZES_ECX_APIC_ID_SIZE_WIDTH: u32 = 4;

/// KVM's hypervisor signature in leaf 0x40000000 EBX, ECX, EDX.
const KVM_SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";
/// The signature's first four bytes, in EBX.
const KVM_SIGNATURE_EBX: u32 = u32::from_le_bytes([
    KVM_SIGNATURE[0],
    KVM_SIGNATURE[1],
    KVM_SIGNATURE[2],
    KVM_SIGNATURE[3],
]);
/// The signature's middle four bytes, in ECX.
const KVM_SIGNATURE_ECX: u32 = u32::from_le_bytes([
    KVM_SIGNATURE[4],
    KVM_SIGNATURE[5],
    KVM_SIGNATURE[6],
    KVM_SIGNATURE[7],
]);
/// The signature's last four bytes, in EDX.
const KVM_SIGNATURE_EDX: u32 = u32::from_le_bytes([
    KVM_SIGNATURE[8],
    KVM_SIGNATURE[9],
    KVM_SIGNATURE[10],
    KVM_SIGNATURE[11],
]);

/// Normalises `cpuid` for vCPU `vcpu_index` of a VM with `vcpu_count` vCPUs, in place.
///
/// - Leaf 0x1: EBX gets the APIC id (`vcpu_index`), the logical processor count
///   (`vcpu_count`) and a 64-byte CLFLUSH line; ECX gets the HYPERVISOR bit; EDX gets HTT
///   exactly when `vcpu_count > 1`. Everything else (TSC-deadline included) stays as KVM
///   reported it.
/// - Leaves 0x4 and 0x8000001D (each cache): one core per vCPU in the package; L1 and L2
///   private to a core, L3 shared by all.
/// - Leaf 0x6: power and thermal features of the host are cleared (see
///   `LEAF6_EAX_CLEARED_BITS`).
/// - Leaves 0xB and 0x1F (when present): subleaf 0 the SMT level (1 thread), subleaf 1 the
///   core level (`vcpu_count` cores), later subleaves invalid; EDX the x2APIC id. Current
///   KVM reports only subleaf 0 of these leaves, so subleaf 1 is added when missing.
/// - Leaf 0x80000008: ECX holds `vcpu_count - 1` cores.
/// - Leaf 0x40000000: the KVM signature and 0x40000001 as the highest hypervisor leaf; the
///   entry is added if KVM did not report it. Leaf 0x40000001 is kept as given.
///
/// Other missing leaves are left missing.
///
/// # Errors
/// [`CpuidError::InvalidVcpuCount`] for a count outside 1..=[`MAX_VCPU_COUNT`],
/// [`CpuidError::InvalidVcpuIndex`] if `vcpu_index >= vcpu_count`, and
/// [`CpuidError::AddHypervisorLeaf`] or [`CpuidError::AddTopologyLevel`] if the table is too
/// full to add an entry. On error the table may be partly normalised.
pub fn normalize(cpuid: &mut CpuId, vcpu_index: u8, vcpu_count: u8) -> Result<(), CpuidError> {
    if vcpu_count == 0 || vcpu_count > MAX_VCPU_COUNT {
        return Err(CpuidError::InvalidVcpuCount(vcpu_count));
    }
    if vcpu_index >= vcpu_count {
        return Err(CpuidError::InvalidVcpuIndex {
            index: vcpu_index,
            count: vcpu_count,
        });
    }
    let index = u32::from(vcpu_index);
    let count = u32::from(vcpu_count);

    for entry in leaf_entries_mut(cpuid, LEAF_FEATURES) {
        normalize_features(entry, index, count);
    }
    for entry in leaf_entries_mut(cpuid, LEAF_CACHE_PARAMS) {
        if normalize_cache_sharing(entry, count) {
            set_field(
                &mut entry.eax,
                LEAF4_EAX_CORES_SHIFT,
                LEAF4_EAX_CORES_WIDTH,
                count - 1,
            );
        }
    }
    for entry in leaf_entries_mut(cpuid, LEAF_AMD_CACHE_TOPOLOGY) {
        normalize_cache_sharing(entry, count);
    }
    for entry in leaf_entries_mut(cpuid, LEAF_POWER_MGMT) {
        normalize_power_management(entry);
    }
    for leaf in [LEAF_EXT_TOPOLOGY, LEAF_EXT_TOPOLOGY_V2] {
        normalize_extended_topology(cpuid, leaf, index, count)?;
    }
    for entry in leaf_entries_mut(cpuid, LEAF_ADDR_SIZES) {
        set_field(&mut entry.ecx, 0, LEAF_ADDR_SIZES_ECX_NC_WIDTH, count - 1);
        set_field(
            &mut entry.ecx,
            LEAF_ADDR_SIZES_ECX_APIC_ID_SIZE_SHIFT,
            LEAF_ADDR_SIZES_ECX_APIC_ID_SIZE_WIDTH,
            0,
        );
    }
    set_hypervisor_signature(cpuid)
}

/// Leaf 0x1: APIC id, processor count, CLFLUSH size, HYPERVISOR and HTT.
fn normalize_features(entry: &mut kvm_cpuid_entry2, index: u32, count: u32) {
    set_field(
        &mut entry.ebx,
        LEAF1_EBX_APIC_ID_SHIFT,
        LEAF1_EBX_FIELD_WIDTH,
        index,
    );
    set_field(
        &mut entry.ebx,
        LEAF1_EBX_CPU_COUNT_SHIFT,
        LEAF1_EBX_FIELD_WIDTH,
        count,
    );
    set_field(
        &mut entry.ebx,
        LEAF1_EBX_CLFLUSH_SHIFT,
        LEAF1_EBX_FIELD_WIDTH,
        CLFLUSH_LINE_SIZE_QWORDS,
    );
    set_bit(&mut entry.ecx, LEAF1_ECX_HYPERVISOR_BIT, true);
    set_bit(&mut entry.edx, LEAF1_EDX_HTT_BIT, count > 1);
}

/// Sets how many logical processors share the cache an entry of leaf 0x4 or 0x8000001D
/// describes. Returns false, changing nothing, for a null entry (no more caches).
fn normalize_cache_sharing(entry: &mut kvm_cpuid_entry2, count: u32) -> bool {
    if get_field(entry.eax, CACHE_EAX_TYPE_SHIFT, CACHE_EAX_TYPE_WIDTH) == 0 {
        return false;
    }
    let level = get_field(entry.eax, CACHE_EAX_LEVEL_SHIFT, CACHE_EAX_LEVEL_WIDTH);
    let sharing = if level <= LAST_PRIVATE_CACHE_LEVEL {
        1
    } else {
        count
    };
    set_field(
        &mut entry.eax,
        CACHE_EAX_SHARING_SHIFT,
        CACHE_EAX_SHARING_WIDTH,
        sharing - 1,
    );
    true
}

/// Leaf 0x6: clears the host power and thermal controls.
fn normalize_power_management(entry: &mut kvm_cpuid_entry2) {
    for bit in LEAF6_EAX_CLEARED_BITS {
        set_bit(&mut entry.eax, bit, false);
    }
    set_field(&mut entry.ebx, 0, LEAF6_EBX_DTS_THRESHOLDS_WIDTH, 0);
    set_bit(&mut entry.ecx, LEAF6_ECX_APERFMPERF_BIT, false);
    set_bit(&mut entry.ecx, LEAF6_ECX_EPB_BIT, false);
}

/// Leaf 0xB or 0x1F, if present: SMT level, core level, then invalid levels.
fn normalize_extended_topology(
    cpuid: &mut CpuId,
    leaf: u32,
    index: u32,
    count: u32,
) -> Result<(), CpuidError> {
    if !cpuid.as_slice().iter().any(|entry| entry.function == leaf) {
        return Ok(());
    }
    if !has_entry(cpuid, leaf, CORE_LEVEL_SUBLEAF) {
        cpuid
            .push(kvm_cpuid_entry2 {
                function: leaf,
                index: CORE_LEVEL_SUBLEAF,
                flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
                ..Default::default()
            })
            .map_err(|error| CpuidError::AddTopologyLevel { leaf, error })?;
    }
    // Bits of the x2APIC id that number the cores: enough for ids 0..count.
    let core_shift = count.next_power_of_two().trailing_zeros();
    for entry in leaf_entries_mut(cpuid, leaf) {
        let (shift, processors, level_type) = match entry.index {
            SMT_LEVEL_SUBLEAF => (0, 1, LEVEL_TYPE_SMT),
            CORE_LEVEL_SUBLEAF => (core_shift, count, LEVEL_TYPE_CORE),
            _ => (0, 0, LEVEL_TYPE_INVALID),
        };
        entry.eax = 0;
        set_field(&mut entry.eax, 0, TOPOLOGY_EAX_SHIFT_WIDTH, shift);
        entry.ebx = 0;
        set_field(&mut entry.ebx, 0, TOPOLOGY_EBX_COUNT_WIDTH, processors);
        entry.ecx = level_type << TOPOLOGY_ECX_LEVEL_TYPE_SHIFT;
        set_field(
            &mut entry.ecx,
            0,
            TOPOLOGY_ECX_LEVEL_NUMBER_WIDTH,
            entry.index,
        );
        entry.edx = index;
    }
    Ok(())
}

/// Leaf 0x40000000: KVM's signature, with 0x40000001 as the highest hypervisor leaf.
fn set_hypervisor_signature(cpuid: &mut CpuId) -> Result<(), CpuidError> {
    let signature = kvm_cpuid_entry2 {
        function: LEAF_HYPERVISOR,
        index: 0,
        flags: 0,
        eax: LEAF_KVM_FEATURES,
        ebx: KVM_SIGNATURE_EBX,
        ecx: KVM_SIGNATURE_ECX,
        edx: KVM_SIGNATURE_EDX,
        ..Default::default()
    };
    let mut found = false;
    for entry in leaf_entries_mut(cpuid, LEAF_HYPERVISOR) {
        *entry = kvm_cpuid_entry2 {
            index: entry.index,
            flags: entry.flags,
            ..signature
        };
        found = true;
    }
    if !found {
        cpuid
            .push(signature)
            .map_err(CpuidError::AddHypervisorLeaf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

    use super::super::tests::{all_ones_cpuid, entry, get, host_like_cpuid};
    use super::*;

    /// The hypervisor signature of a table, as text without the trailing NULs.
    fn signature(cpuid: &CpuId) -> String {
        let hv = get(cpuid, LEAF_HYPERVISOR, 0);
        let bytes = [hv.ebx, hv.ecx, hv.edx].map(u32::to_le_bytes).concat();
        String::from_utf8(bytes)
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    }

    #[test]
    fn test_leaf1_apic_id_and_count() {
        for (index, count) in [(0, 4), (3, 4)] {
            for mut cpuid in [all_ones_cpuid(), host_like_cpuid()] {
                let before = get(&cpuid, LEAF_FEATURES, 0);
                normalize(&mut cpuid, index, count).unwrap();
                let leaf1 = get(&cpuid, LEAF_FEATURES, 0);
                assert_eq!(leaf1.ebx >> 24, u32::from(index));
                assert_eq!((leaf1.ebx >> 16) & 0xff, u32::from(count));
                assert_eq!((leaf1.ebx >> 8) & 0xff, 8, "CLFLUSH line size");
                assert_eq!(leaf1.ebx & 0xff, before.ebx & 0xff, "brand index kept");
                assert_eq!(leaf1.eax, before.eax);
            }
        }
    }

    #[test]
    fn test_leaf1_hypervisor_bit_set_rest_of_ecx_kept() {
        let mut cpuid = host_like_cpuid();
        let before = get(&cpuid, LEAF_FEATURES, 0);
        normalize(&mut cpuid, 0, 1).unwrap();
        let leaf1 = get(&cpuid, LEAF_FEATURES, 0);
        assert_eq!(leaf1.ecx, before.ecx | (1 << 31));
        // TSC-deadline (bit 24) is as KVM reported it, in both directions.
        assert_ne!(leaf1.ecx & (1 << 24), 0);
        let mut cpuid = CpuId::from_entries(&[entry(0x1, 0, [0; 4])]).unwrap();
        normalize(&mut cpuid, 0, 1).unwrap();
        assert_eq!(get(&cpuid, LEAF_FEATURES, 0).ecx, 1 << 31);
    }

    #[test]
    fn test_leaf1_htt_only_with_several_vcpus() {
        let mut cpuid = all_ones_cpuid();
        normalize(&mut cpuid, 0, 1).unwrap();
        let edx = get(&cpuid, LEAF_FEATURES, 0).edx;
        assert_eq!(edx, !(1 << 28));
        let mut cpuid = CpuId::from_entries(&[entry(0x1, 0, [0; 4])]).unwrap();
        normalize(&mut cpuid, 1, 2).unwrap();
        assert_eq!(get(&cpuid, LEAF_FEATURES, 0).edx, 1 << 28);
    }

    #[test]
    fn test_leaf4_cores_and_cache_sharing() {
        let mut cpuid = host_like_cpuid();
        normalize(&mut cpuid, 3, 4).unwrap();
        let [l1, l2, l3] = [0, 1, 2].map(|i| get(&cpuid, LEAF_CACHE_PARAMS, i).eax);
        for eax in [l1, l2, l3] {
            assert_eq!(eax >> 26, 3, "cores per package - 1");
        }
        assert_eq!((l1 >> 14) & 0xfff, 0);
        assert_eq!((l2 >> 14) & 0xfff, 0);
        assert_eq!((l3 >> 14) & 0xfff, 3);
        // Type, level and the rest of the entry are kept.
        assert_eq!(l1 & 0x3fff, 0x0121);
        assert_eq!(l3 & 0x3fff, 0x0163);
        let before = get(&host_like_cpuid(), LEAF_CACHE_PARAMS, 2);
        let after = get(&cpuid, LEAF_CACHE_PARAMS, 2);
        assert_eq!(
            (after.ebx, after.ecx, after.edx),
            (before.ebx, before.ecx, before.edx)
        );
    }

    #[test]
    fn test_leaf4_all_ones_is_shared_cache() {
        // Level 7 (all ones) is above L2, so shared by the package.
        let mut cpuid = all_ones_cpuid();
        normalize(&mut cpuid, 0, 32).unwrap();
        for i in 0..3 {
            let eax = get(&cpuid, LEAF_CACHE_PARAMS, i).eax;
            assert_eq!(eax, (31 << 26) | (31 << 14) | 0x3fff);
        }
    }

    #[test]
    fn test_leaf4_null_entry_unchanged() {
        let mut cpuid = CpuId::from_entries(&[entry(0x4, 0, [0; 4])]).unwrap();
        normalize(&mut cpuid, 0, 4).unwrap();
        assert_eq!(get(&cpuid, LEAF_CACHE_PARAMS, 0).eax, 0);
    }

    #[test]
    fn test_amd_cache_topology_sharing() {
        let mut cpuid = CpuId::from_entries(&[
            entry(0x8000_001d, 0, [0x0000_0121, 0x01c0_003f, 0x3f, 0]),
            entry(0x8000_001d, 3, [0x0000_4163, 0x03c0_003f, 0x7fff, 1]),
            entry(0x8000_001d, 4, [0; 4]),
        ])
        .unwrap();
        normalize(&mut cpuid, 0, 2).unwrap();
        assert_eq!(get(&cpuid, LEAF_AMD_CACHE_TOPOLOGY, 0).eax, 0x0000_0121);
        assert_eq!(get(&cpuid, LEAF_AMD_CACHE_TOPOLOGY, 3).eax, 0x0000_4163);
        assert_eq!(get(&cpuid, LEAF_AMD_CACHE_TOPOLOGY, 4).eax, 0);
        normalize(&mut cpuid, 0, 1).unwrap();
        assert_eq!(get(&cpuid, LEAF_AMD_CACHE_TOPOLOGY, 3).eax, 0x0000_0163);
    }

    #[test]
    fn test_leaf6_clears_power_features_keeps_arat() {
        let mut cpuid = all_ones_cpuid();
        normalize(&mut cpuid, 0, 1).unwrap();
        let leaf6 = get(&cpuid, LEAF_POWER_MGMT, 0);
        // Cleared: 0 DTS, 1 turbo, 4 PLN, 5 ECMD, 6 PTM, 7-11 HWP, 13 HDC, 14 Turbo Max 3.0.
        assert_eq!(leaf6.eax, !0x6ff3);
        assert_ne!(leaf6.eax & (1 << 2), 0, "ARAT kept");
        assert_eq!(leaf6.ebx, !0xf);
        assert_eq!(leaf6.ecx, !0x9);
        assert_eq!(leaf6.edx, u32::MAX);
        let mut cpuid = host_like_cpuid();
        normalize(&mut cpuid, 0, 1).unwrap();
        assert_eq!(get(&cpuid, LEAF_POWER_MGMT, 0).eax, 0x4);
    }

    #[test]
    fn test_leaf_b_topology_for_vcpu_0_and_3_of_4() {
        for index in [0, 3] {
            for mut cpuid in [all_ones_cpuid(), host_like_cpuid()] {
                normalize(&mut cpuid, index, 4).unwrap();
                let smt = get(&cpuid, LEAF_EXT_TOPOLOGY, 0);
                assert_eq!(
                    (smt.eax, smt.ebx, smt.ecx, smt.edx),
                    (0, 1, 0x100, u32::from(index))
                );
                let core = get(&cpuid, LEAF_EXT_TOPOLOGY, 1);
                assert_eq!(
                    (core.eax, core.ebx, core.ecx, core.edx),
                    (2, 4, 0x201, u32::from(index))
                );
            }
        }
    }

    #[test]
    fn test_topology_shift_width() {
        for (count, shift) in [(1, 0), (2, 1), (3, 2), (4, 2), (32, 5)] {
            let mut cpuid = all_ones_cpuid();
            normalize(&mut cpuid, count - 1, count).unwrap();
            let core = get(&cpuid, LEAF_EXT_TOPOLOGY, 1);
            assert_eq!(core.eax, shift, "{count} vCPUs");
            assert_eq!(core.ebx, u32::from(count));
            assert_eq!(core.edx, u32::from(count - 1));
        }
    }

    #[test]
    fn test_topology_later_subleaves_invalid() {
        let mut cpuid = CpuId::from_entries(&[
            entry(0xb, 0, [u32::MAX; 4]),
            entry(0xb, 1, [u32::MAX; 4]),
            entry(0xb, 2, [u32::MAX; 4]),
        ])
        .unwrap();
        normalize(&mut cpuid, 1, 2).unwrap();
        let invalid = get(&cpuid, LEAF_EXT_TOPOLOGY, 2);
        assert_eq!(
            (invalid.eax, invalid.ebx, invalid.ecx, invalid.edx),
            (0, 0, 2, 1)
        );
    }

    #[test]
    fn test_topology_core_level_added_when_missing() {
        // What current KVM reports: subleaf 0 only.
        let mut cpuid = CpuId::from_entries(&[entry(0xb, 0, [0, 0, 0, 1])]).unwrap();
        normalize(&mut cpuid, 2, 3).unwrap();
        let core = get(&cpuid, LEAF_EXT_TOPOLOGY, 1);
        assert_eq!(core.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        assert_eq!(get(&cpuid, LEAF_EXT_TOPOLOGY, 0).edx, 2);
        // 0xB, its new subleaf and the hypervisor leaf.
        assert_eq!(cpuid.as_slice().len(), 3);
    }

    #[test]
    fn test_leaf_1f_like_leaf_b_only_when_present() {
        let mut cpuid = host_like_cpuid();
        let len = cpuid.as_slice().len();
        normalize(&mut cpuid, 0, 2).unwrap();
        assert!(!cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == LEAF_EXT_TOPOLOGY_V2));
        assert_eq!(
            cpuid.as_slice().len(),
            len + 1,
            "only the hypervisor leaf added"
        );

        let mut cpuid = CpuId::from_entries(&[
            entry(0x1f, 0, [u32::MAX; 4]),
            entry(0x1f, 1, [u32::MAX; 4]),
            entry(0x1f, 2, [u32::MAX; 4]),
        ])
        .unwrap();
        normalize(&mut cpuid, 3, 4).unwrap();
        let smt = get(&cpuid, LEAF_EXT_TOPOLOGY_V2, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        let core = get(&cpuid, LEAF_EXT_TOPOLOGY_V2, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let end = get(&cpuid, LEAF_EXT_TOPOLOGY_V2, 2);
        assert_eq!((end.eax, end.ebx, end.ecx, end.edx), (0, 0, 2, 3));
    }

    #[test]
    fn test_addr_sizes_core_count() {
        let mut cpuid = host_like_cpuid();
        normalize(&mut cpuid, 0, 4).unwrap();
        let leaf = get(&cpuid, LEAF_ADDR_SIZES, 0);
        assert_eq!(leaf.ecx, 3);
        assert_eq!(leaf.eax, 0x3027, "address sizes kept");
        let mut cpuid = all_ones_cpuid();
        normalize(&mut cpuid, 0, 1).unwrap();
        assert_eq!(get(&cpuid, LEAF_ADDR_SIZES, 0).ecx, 0xffff_0f00);
    }

    #[test]
    fn test_hypervisor_leaf_added_with_kvm_signature() {
        let mut cpuid = all_ones_cpuid();
        let len = cpuid.as_slice().len();
        normalize(&mut cpuid, 0, 1).unwrap();
        assert_eq!(cpuid.as_slice().len(), len + 1);
        assert_eq!(signature(&cpuid), "KVMKVMKVM");
        let hv = get(&cpuid, LEAF_HYPERVISOR, 0);
        assert_eq!(hv.eax, 0x4000_0001);
        assert_eq!(hv.flags, 0);
    }

    #[test]
    fn test_hypervisor_leaf_rewritten_in_place() {
        let mut cpuid = CpuId::from_entries(&[
            entry(0x4000_0000, 0, [0x4000_0010, 1, 2, 3]),
            entry(0x4000_0001, 0, [0x0100_7efb, 0, 0, 0]),
        ])
        .unwrap();
        normalize(&mut cpuid, 0, 1).unwrap();
        assert_eq!(cpuid.as_slice().len(), 2);
        assert_eq!(signature(&cpuid), "KVMKVMKVM");
        assert_eq!(get(&cpuid, LEAF_HYPERVISOR, 0).eax, 0x4000_0001);
        let features = get(&cpuid, LEAF_KVM_FEATURES, 0);
        assert_eq!(
            (features.eax, features.ebx, features.ecx, features.edx),
            (0x0100_7efb, 0, 0, 0)
        );
    }

    #[test]
    fn test_missing_leaves_stay_missing() {
        let mut cpuid = CpuId::from_entries(&[entry(0x0, 0, [0xd, 0, 0, 0])]).unwrap();
        normalize(&mut cpuid, 0, 2).unwrap();
        let functions: Vec<u32> = cpuid.as_slice().iter().map(|e| e.function).collect();
        assert_eq!(functions, [0x0, 0x4000_0000]);
        assert_eq!(get(&cpuid, 0x0, 0).eax, 0xd);
    }

    #[test]
    fn test_normalize_is_idempotent() {
        let mut once = host_like_cpuid();
        normalize(&mut once, 1, 2).unwrap();
        let mut twice = once.clone();
        normalize(&mut twice, 1, 2).unwrap();
        assert_eq!(once.as_slice(), twice.as_slice());
    }

    #[test]
    fn test_invalid_vcpu_count_and_index_rejected() {
        let mut cpuid = host_like_cpuid();
        assert!(matches!(
            normalize(&mut cpuid, 0, 0),
            Err(CpuidError::InvalidVcpuCount(0))
        ));
        assert!(matches!(
            normalize(&mut cpuid, 0, MAX_VCPU_COUNT + 1),
            Err(CpuidError::InvalidVcpuCount(65))
        ));
        let err = normalize(&mut cpuid, 4, 4).unwrap_err();
        assert!(matches!(
            err,
            CpuidError::InvalidVcpuIndex { index: 4, count: 4 }
        ));
        assert_eq!(
            err.to_string(),
            "The vCPU index 4 is not below the vCPU count 4"
        );
        assert_eq!(cpuid.as_slice(), host_like_cpuid().as_slice(), "untouched");
        normalize(&mut cpuid, MAX_VCPU_COUNT - 1, MAX_VCPU_COUNT).unwrap();
        assert_eq!(get(&cpuid, LEAF_CACHE_PARAMS, 0).eax >> 26, 63);
    }

    #[test]
    fn test_full_table_cannot_take_hypervisor_leaf() {
        let entries = vec![entry(0x8000_0001, 0, [0; 4]); KVM_MAX_CPUID_ENTRIES];
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        let err = normalize(&mut cpuid, 0, 1).unwrap_err();
        assert!(matches!(err, CpuidError::AddHypervisorLeaf(_)));
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(
            format!("{err}: {}", cause.unwrap_or_default()),
            "Cannot add the hypervisor CPUID leaf: The max size has been exceeded"
        );
    }
}
