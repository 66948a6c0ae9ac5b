// SPDX-License-Identifier: Apache-2.0
//! Named CPU templates: which of KVM's supported CPUID features the guest gets to see.

use std::fmt;

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use self::Register::{Eax, Ebx, Ecx, Edx};
use super::{
    leaf_entries_mut, set_bit, CpuidError, LEAF_AMX_TILE, LEAF_AMX_TMUL, LEAF_EXT_FEATURES,
    LEAF_FEATURES, LEAF_SGX, LEAF_XSAVE,
};

/// A CPU template: the CPUID features a guest is offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CpuTemplate {
    /// `EmulatedSupervisor` when the start-up probe finds the guest's supervisor mode
    /// emulated, `Host` otherwise (see [`CpuTemplate::resolve`]).
    #[default]
    Auto,
    /// Everything KVM supports on this host, only normalised per vCPU.
    Host,
    /// A conservative, migration-friendly set: no AVX-512, TSX, MPX, SGX, PKU, WAITPKG or
    /// AMX, and none of their XSAVE state components.
    Baseline,
    /// `Baseline` without XSAVE, AVX, POPCNT, SMEP, SMAP and PKU, for hosts whose emulator
    /// for the guest's supervisor mode lacks those instructions. It also adds kernel
    /// command-line switches (see [`CpuTemplate::kernel_cmdline_switches`]).
    EmulatedSupervisor,
}

/// A CPUID register.
#[derive(Clone, Copy, Debug)]
enum Register {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One feature bit: where it is in the CPUID table.
#[derive(Clone, Copy, Debug)]
struct FeatureBit {
    /// The leaf (EAX input).
    leaf: u32,
    /// The subleaf (ECX input).
    subleaf: u32,
    /// The output register holding the bit.
    register: Register,
    /// The bit number.
    bit: u32,
}

impl FeatureBit {
    /// A bit of leaf 0x1.
    const fn leaf1(register: Register, bit: u32) -> Self {
        Self {
            leaf: LEAF_FEATURES,
            subleaf: 0,
            register,
            bit,
        }
    }

    /// A bit of leaf 0x7 subleaf `subleaf`.
    const fn leaf7(subleaf: u32, register: Register, bit: u32) -> Self {
        Self {
            leaf: LEAF_EXT_FEATURES,
            subleaf,
            register,
            bit,
        }
    }

    /// A supported-XCR0 bit: leaf 0xD subleaf 0 EAX, one bit per XSAVE state component.
    const fn xcr0(component: u32) -> Self {
        Self {
            leaf: LEAF_XSAVE,
            subleaf: 0,
            register: Register::Eax,
            bit: component,
        }
    }

    /// Clears the bit in `entry` if the entry is this bit's leaf and subleaf.
    fn clear_in(self, entry: &mut kvm_cpuid_entry2) {
        if entry.function != self.leaf || entry.index != self.subleaf {
            return;
        }
        let reg = match self.register {
            Register::Eax => &mut entry.eax,
            Register::Ebx => &mut entry.ebx,
            Register::Ecx => &mut entry.ecx,
            Register::Edx => &mut entry.edx,
        };
        set_bit(reg, self.bit, false);
    }
}

/// Leaf 0x1 ECX bit 13: CMPXCHG16B (SLUB's lockless fast path uses it).
const CX16: FeatureBit = FeatureBit::leaf1(Ecx, 13);
/// Leaf 0x1 ECX bit 23: POPCNT.
const POPCNT: FeatureBit = FeatureBit::leaf1(Ecx, 23);
/// Leaf 0x1 ECX bit 26: XSAVE/XRSTOR and XCR0.
const XSAVE: FeatureBit = FeatureBit::leaf1(Ecx, 26);
/// Leaf 0x1 ECX bit 27: OSXSAVE, the OS has set CR4.OSXSAVE.
const OSXSAVE: FeatureBit = FeatureBit::leaf1(Ecx, 27);
/// Leaf 0x1 ECX bit 28: AVX.
const AVX: FeatureBit = FeatureBit::leaf1(Ecx, 28);

/// Leaf 0x7.0 EBX bit 2: SGX.
const SGX: FeatureBit = FeatureBit::leaf7(0, Ebx, 2);
/// Leaf 0x7.0 EBX bit 4: HLE (TSX hardware lock elision).
const HLE: FeatureBit = FeatureBit::leaf7(0, Ebx, 4);
/// Leaf 0x7.0 EBX bit 7: SMEP.
const SMEP: FeatureBit = FeatureBit::leaf7(0, Ebx, 7);
/// Leaf 0x7.0 EBX bit 11: RTM (TSX restricted transactional memory).
const RTM: FeatureBit = FeatureBit::leaf7(0, Ebx, 11);
/// Leaf 0x7.0 EBX bit 14: MPX.
const MPX: FeatureBit = FeatureBit::leaf7(0, Ebx, 14);
/// Leaf 0x7.0 EBX bit 16: AVX512F.
const AVX512F: FeatureBit = FeatureBit::leaf7(0, Ebx, 16);
/// Leaf 0x7.0 EBX bit 17: AVX512DQ.
const AVX512DQ: FeatureBit = FeatureBit::leaf7(0, Ebx, 17);
/// Leaf 0x7.0 EBX bit 20: SMAP.
const SMAP: FeatureBit = FeatureBit::leaf7(0, Ebx, 20);
/// Leaf 0x7.0 EBX bit 21: AVX512_IFMA.
const AVX512_IFMA: FeatureBit = FeatureBit::leaf7(0, Ebx, 21);
/// Leaf 0x7.0 EBX bit 26: AVX512PF.
const AVX512PF: FeatureBit = FeatureBit::leaf7(0, Ebx, 26);
/// Leaf 0x7.0 EBX bit 27: AVX512ER.
const AVX512ER: FeatureBit = FeatureBit::leaf7(0, Ebx, 27);
/// Leaf 0x7.0 EBX bit 28: AVX512CD.
const AVX512CD: FeatureBit = FeatureBit::leaf7(0, Ebx, 28);
/// Leaf 0x7.0 EBX bit 30: AVX512BW.
const AVX512BW: FeatureBit = FeatureBit::leaf7(0, Ebx, 30);
/// Leaf 0x7.0 EBX bit 31: AVX512VL.
const AVX512VL: FeatureBit = FeatureBit::leaf7(0, Ebx, 31);

/// Leaf 0x7.0 ECX bit 1: AVX512_VBMI.
const AVX512_VBMI: FeatureBit = FeatureBit::leaf7(0, Ecx, 1);
/// Leaf 0x7.0 ECX bit 3: PKU (protection keys for user pages).
const PKU: FeatureBit = FeatureBit::leaf7(0, Ecx, 3);
/// Leaf 0x7.0 ECX bit 4: OSPKE, the OS has set CR4.PKE.
const OSPKE: FeatureBit = FeatureBit::leaf7(0, Ecx, 4);
/// Leaf 0x7.0 ECX bit 5: WAITPKG (UMONITOR, UMWAIT, TPAUSE).
const WAITPKG: FeatureBit = FeatureBit::leaf7(0, Ecx, 5);
/// Leaf 0x7.0 ECX bit 6: AVX512_VBMI2.
const AVX512_VBMI2: FeatureBit = FeatureBit::leaf7(0, Ecx, 6);
/// Leaf 0x7.0 ECX bit 11: AVX512_VNNI.
const AVX512_VNNI: FeatureBit = FeatureBit::leaf7(0, Ecx, 11);
/// Leaf 0x7.0 ECX bit 12: AVX512_BITALG.
const AVX512_BITALG: FeatureBit = FeatureBit::leaf7(0, Ecx, 12);
/// Leaf 0x7.0 ECX bit 14: AVX512_VPOPCNTDQ.
const AVX512_VPOPCNTDQ: FeatureBit = FeatureBit::leaf7(0, Ecx, 14);
/// Leaf 0x7.0 ECX bit 30: SGX_LC (SGX launch configuration).
const SGX_LC: FeatureBit = FeatureBit::leaf7(0, Ecx, 30);

/// Leaf 0x7.0 EDX bit 2: AVX512_4VNNIW.
const AVX512_4VNNIW: FeatureBit = FeatureBit::leaf7(0, Edx, 2);
/// Leaf 0x7.0 EDX bit 3: AVX512_4FMAPS.
const AVX512_4FMAPS: FeatureBit = FeatureBit::leaf7(0, Edx, 3);
/// Leaf 0x7.0 EDX bit 8: AVX512_VP2INTERSECT.
const AVX512_VP2INTERSECT: FeatureBit = FeatureBit::leaf7(0, Edx, 8);
/// Leaf 0x7.0 EDX bit 16: TSXLDTRK (TSX suspend load address tracking).
const TSXLDTRK: FeatureBit = FeatureBit::leaf7(0, Edx, 16);
/// Leaf 0x7.0 EDX bit 22: AMX_BF16.
const AMX_BF16: FeatureBit = FeatureBit::leaf7(0, Edx, 22);
/// Leaf 0x7.0 EDX bit 23: AVX512_FP16.
const AVX512_FP16: FeatureBit = FeatureBit::leaf7(0, Edx, 23);
/// Leaf 0x7.0 EDX bit 24: AMX_TILE.
const AMX_TILE: FeatureBit = FeatureBit::leaf7(0, Edx, 24);
/// Leaf 0x7.0 EDX bit 25: AMX_INT8.
const AMX_INT8: FeatureBit = FeatureBit::leaf7(0, Edx, 25);

/// Leaf 0x7.1 EAX bit 5: AVX512_BF16.
const AVX512_BF16: FeatureBit = FeatureBit::leaf7(1, Eax, 5);
/// Leaf 0x7.1 EAX bit 21: AMX_FP16.
const AMX_FP16: FeatureBit = FeatureBit::leaf7(1, Eax, 21);
/// Leaf 0x7.1 EDX bit 8: AMX_COMPLEX.
const AMX_COMPLEX: FeatureBit = FeatureBit::leaf7(1, Edx, 8);

/// XSAVE state component 3: MPX bound registers (BNDREGS).
const XSTATE_BNDREGS: u32 = 3;
/// XSAVE state component 4: MPX bound configuration (BNDCSR).
const XSTATE_BNDCSR: u32 = 4;
/// XSAVE state component 5: AVX-512 opmask registers.
const XSTATE_OPMASK: u32 = 5;
/// XSAVE state component 6: upper halves of ZMM0-15 (ZMM_Hi256).
const XSTATE_ZMM_HI256: u32 = 6;
/// XSAVE state component 7: ZMM16-31 (Hi16_ZMM).
const XSTATE_HI16_ZMM: u32 = 7;
/// XSAVE state component 9: PKRU.
const XSTATE_PKRU: u32 = 9;
/// XSAVE state component 17: AMX tile configuration (XTILECFG).
const XSTATE_XTILECFG: u32 = 17;
/// XSAVE state component 18: AMX tile data (XTILEDATA).
const XSTATE_XTILEDATA: u32 = 18;
/// XSAVE state components of the features `Baseline` hides. Their bits leave the supported
/// XCR0 (leaf 0xD.0 EAX) and their leaf 0xD subleaves are zeroed, so the guest cannot enable
/// state for features it was told are absent.
const BASELINE_XSTATE_COMPONENTS: [u32; 8] = [
    XSTATE_BNDREGS,
    XSTATE_BNDCSR,
    XSTATE_OPMASK,
    XSTATE_ZMM_HI256,
    XSTATE_HI16_ZMM,
    XSTATE_PKRU,
    XSTATE_XTILECFG,
    XSTATE_XTILEDATA,
];

/// Feature bits `Baseline` clears: AVX-512, TSX, MPX, SGX, PKU/OSPKE, WAITPKG and AMX,
/// plus the supported-XCR0 bits of their state components.
const BASELINE_CLEARED: [FeatureBit; 40] = [
    // AVX-512.
    AVX512F,
    AVX512DQ,
    AVX512_IFMA,
    AVX512PF,
    AVX512ER,
    AVX512CD,
    AVX512BW,
    AVX512VL,
    AVX512_VBMI,
    AVX512_VBMI2,
    AVX512_VNNI,
    AVX512_BITALG,
    AVX512_VPOPCNTDQ,
    AVX512_4VNNIW,
    AVX512_4FMAPS,
    AVX512_VP2INTERSECT,
    AVX512_FP16,
    AVX512_BF16,
    // TSX.
    HLE,
    RTM,
    TSXLDTRK,
    // MPX, SGX, protection keys, user wait.
    MPX,
    SGX,
    SGX_LC,
    PKU,
    OSPKE,
    WAITPKG,
    // AMX.
    AMX_BF16,
    AMX_TILE,
    AMX_INT8,
    AMX_FP16,
    AMX_COMPLEX,
    // Their XSAVE state components.
    FeatureBit::xcr0(XSTATE_BNDREGS),
    FeatureBit::xcr0(XSTATE_BNDCSR),
    FeatureBit::xcr0(XSTATE_OPMASK),
    FeatureBit::xcr0(XSTATE_ZMM_HI256),
    FeatureBit::xcr0(XSTATE_HI16_ZMM),
    FeatureBit::xcr0(XSTATE_PKRU),
    FeatureBit::xcr0(XSTATE_XTILECFG),
    FeatureBit::xcr0(XSTATE_XTILEDATA),
];

/// Leaves `Baseline` zeroes whole: they only describe features it hides (SGX, AMX).
const BASELINE_ZEROED_LEAVES: [u32; 3] = [LEAF_SGX, LEAF_AMX_TILE, LEAF_AMX_TMUL];

/// Feature bits `EmulatedSupervisor` clears on top of `Baseline`: the instructions the
/// supervisor-mode emulator lacks (XSAVE family, POPCNT, CMPXCHG16B, CLAC/STAC of SMAP) and what
/// depends on them (AVX needs XSAVE), plus SMEP and PKU.
const EMULATED_SUPERVISOR_CLEARED: [FeatureBit; 8] =
    [XSAVE, OSXSAVE, AVX, POPCNT, CX16, SMEP, SMAP, PKU];

/// Kernel command-line switches for `EmulatedSupervisor`: on hosts whose guest supervisor
/// mode is emulated the guest's CPUID answers come from the hardware, not from the VMM's
/// table, so the guest kernel must be told to keep off these features itself.
const EMULATED_SUPERVISOR_CMDLINE: [&str; 2] =
    ["noxsave", "clearcpuid=smap,smep,pku,xsave,popcnt,cx16"];

impl CpuTemplate {
    /// Resolves `Auto`: `EmulatedSupervisor` if `supervisor_emulated` (what the start-up
    /// probe found), `Host` otherwise. Other templates are returned unchanged.
    pub fn resolve(self, supervisor_emulated: bool) -> CpuTemplate {
        match self {
            CpuTemplate::Auto if supervisor_emulated => CpuTemplate::EmulatedSupervisor,
            CpuTemplate::Auto => CpuTemplate::Host,
            other => other,
        }
    }

    /// The kebab-case name, as on the command line and in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            CpuTemplate::Auto => "auto",
            CpuTemplate::Host => "host",
            CpuTemplate::Baseline => "baseline",
            CpuTemplate::EmulatedSupervisor => "emulated-supervisor",
        }
    }

    /// Switches the guest kernel's command line needs with this template: for
    /// `EmulatedSupervisor`, `noxsave` and a `clearcpuid=` list, since on such hosts the
    /// guest does not see the VMM's CPUID table; none for the others.
    pub fn kernel_cmdline_switches(self) -> &'static [&'static str] {
        match self {
            CpuTemplate::EmulatedSupervisor => &EMULATED_SUPERVISOR_CMDLINE,
            CpuTemplate::Auto | CpuTemplate::Host | CpuTemplate::Baseline => &[],
        }
    }

    /// Hides from `cpuid` the features this template excludes. `Host` changes nothing;
    /// `Baseline` and `EmulatedSupervisor` clear the bits listed in their docs. Leaves
    /// missing from `cpuid` are not added.
    ///
    /// # Errors
    /// [`CpuidError::UnresolvedTemplate`] for `Auto`, which must be
    /// [resolved](CpuTemplate::resolve) first.
    pub fn apply(self, cpuid: &mut CpuId) -> Result<(), CpuidError> {
        match self {
            CpuTemplate::Auto => Err(CpuidError::UnresolvedTemplate),
            CpuTemplate::Host => Ok(()),
            CpuTemplate::Baseline => {
                apply_baseline(cpuid);
                Ok(())
            }
            CpuTemplate::EmulatedSupervisor => {
                apply_baseline(cpuid);
                clear_bits(cpuid, &EMULATED_SUPERVISOR_CLEARED);
                // No XSAVE: the state enumeration describes nothing.
                zero_leaf(cpuid, LEAF_XSAVE, |_| true);
                Ok(())
            }
        }
    }
}

impl fmt::Display for CpuTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `Baseline` template's changes.
fn apply_baseline(cpuid: &mut CpuId) {
    clear_bits(cpuid, &BASELINE_CLEARED);
    zero_leaf(cpuid, LEAF_XSAVE, |subleaf| {
        BASELINE_XSTATE_COMPONENTS.contains(&subleaf)
    });
    for leaf in BASELINE_ZEROED_LEAVES {
        zero_leaf(cpuid, leaf, |_| true);
    }
}

/// Clears each of `bits` wherever the table has its leaf and subleaf.
fn clear_bits(cpuid: &mut CpuId, bits: &[FeatureBit]) {
    for entry in cpuid.as_mut_slice() {
        for bit in bits {
            bit.clear_in(entry);
        }
    }
}

/// Zeroes the registers of the subleaves of `leaf` that `subleaves` selects, keeping the
/// entries themselves.
fn zero_leaf(cpuid: &mut CpuId, leaf: u32, subleaves: impl Fn(u32) -> bool) {
    for entry in leaf_entries_mut(cpuid, leaf) {
        if subleaves(entry.index) {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;
    use serde::de::value::{Error as DeError, StrDeserializer};
    use serde::de::IntoDeserializer;
    use serde::Deserialize;

    use super::super::tests::{all_ones_cpuid, entry, get, host_like_cpuid};
    use super::*;

    const ALL: [CpuTemplate; 4] = [
        CpuTemplate::Auto,
        CpuTemplate::Host,
        CpuTemplate::Baseline,
        CpuTemplate::EmulatedSupervisor,
    ];

    /// Leaf 0x7.0 EBX bits Baseline clears: SGX 2, HLE 4, RTM 11, MPX 14, AVX512F 16,
    /// AVX512DQ 17, AVX512_IFMA 21, AVX512PF 26, AVX512ER 27, AVX512CD 28, AVX512BW 30,
    /// AVX512VL 31.
    const BASELINE_7_EBX: u32 = 0xdc23_4814;
    /// Leaf 0x7.0 ECX: AVX512_VBMI 1, PKU 3, OSPKE 4, WAITPKG 5, AVX512_VBMI2 6,
    /// AVX512_VNNI 11, AVX512_BITALG 12, AVX512_VPOPCNTDQ 14, SGX_LC 30.
    const BASELINE_7_ECX: u32 = 0x4000_587a;
    /// Leaf 0x7.0 EDX: AVX512_4VNNIW 2, AVX512_4FMAPS 3, AVX512_VP2INTERSECT 8, TSXLDTRK 16,
    /// AMX_BF16 22, AVX512_FP16 23, AMX_TILE 24, AMX_INT8 25.
    const BASELINE_7_EDX: u32 = 0x03c1_010c;
    /// Leaf 0x7.1 EAX: AVX512_BF16 5, AMX_FP16 21.
    const BASELINE_7_1_EAX: u32 = 0x0020_0020;
    /// Leaf 0x7.1 EDX: AMX_COMPLEX 8.
    const BASELINE_7_1_EDX: u32 = 0x100;
    /// Leaf 0xD.0 EAX: XCR0 components 3, 4, 5, 6, 7, 9, 17, 18.
    const BASELINE_D_EAX: u32 = 0x0006_02f8;

    /// Registers of every entry, keyed by leaf and subleaf.
    fn regs(cpuid: &CpuId) -> Vec<(u32, u32, [u32; 4])> {
        cpuid
            .as_slice()
            .iter()
            .map(|e| (e.function, e.index, [e.eax, e.ebx, e.ecx, e.edx]))
            .collect()
    }

    /// Asserts that `after` is `before` with the registers `changes` names replaced.
    fn assert_only_changed(before: &CpuId, after: &CpuId, changes: &[((u32, u32), [u32; 4])]) {
        for ((leaf, subleaf, old), (_, _, new)) in regs(before).into_iter().zip(regs(after)) {
            let expected = changes
                .iter()
                .find(|(key, _)| *key == (leaf, subleaf))
                .map_or(old, |(_, regs)| *regs);
            assert_eq!(new, expected, "leaf {leaf:#x}.{subleaf}");
        }
        assert_eq!(before.as_slice().len(), after.as_slice().len());
    }

    #[test]
    fn test_host_leaves_features_alone() {
        for before in [all_ones_cpuid(), host_like_cpuid()] {
            let mut after = before.clone();
            CpuTemplate::Host.apply(&mut after).unwrap();
            assert_eq!(before.as_slice(), after.as_slice());
        }
    }

    #[test]
    fn test_baseline_clears_exactly_its_bits() {
        let before = all_ones_cpuid();
        let mut after = before.clone();
        CpuTemplate::Baseline.apply(&mut after).unwrap();
        let ones = u32::MAX;
        assert_only_changed(
            &before,
            &after,
            &[
                (
                    (0x7, 0),
                    [ones, !BASELINE_7_EBX, !BASELINE_7_ECX, !BASELINE_7_EDX],
                ),
                ((0x7, 1), [!BASELINE_7_1_EAX, ones, ones, !BASELINE_7_1_EDX]),
                ((0xd, 0), [!BASELINE_D_EAX, ones, ones, ones]),
            ],
        );
        // Leaf 1 (XSAVE, AVX, POPCNT) and SMEP/SMAP are kept.
        assert_eq!(get(&after, LEAF_FEATURES, 0).ecx, u32::MAX);
        let leaf7 = get(&after, LEAF_EXT_FEATURES, 0);
        assert_ne!(leaf7.ebx & (1 << 7), 0, "SMEP kept");
        assert_ne!(leaf7.ebx & (1 << 20), 0, "SMAP kept");
        assert_ne!(leaf7.ebx & (1 << 5), 0, "AVX2 kept");
    }

    #[test]
    fn test_baseline_on_host_like_table() {
        let mut cpuid = host_like_cpuid();
        CpuTemplate::Baseline.apply(&mut cpuid).unwrap();
        let leaf7 = get(&cpuid, LEAF_EXT_FEATURES, 0);
        // 0x029c_6fbf without SGX (2), HLE (4), RTM (11) and MPX (14).
        assert_eq!(leaf7.ebx, 0x029c_27ab);
        assert_eq!(leaf7.ecx, 0x4000_0000 & !(1 << 30));
        assert_eq!(leaf7.edx, 0xbc00_0400);
        // x87, SSE and AVX state stay.
        assert_eq!(get(&cpuid, LEAF_XSAVE, 0).eax, 0x7);
        assert_eq!(get(&cpuid, LEAF_XSAVE, 2).ebx, 0x240);
    }

    #[test]
    fn test_baseline_zeroes_hidden_state_and_leaves() {
        let mut cpuid = CpuId::from_entries(&[
            entry(0xd, 0, [0x0006_02ff, 0xa88, 0x2b00, 0]),
            entry(0xd, 2, [0x100, 0x240, 0, 0]),
            entry(0xd, 5, [0x40, 0x440, 0, 0]),
            entry(0xd, 6, [0x200, 0x480, 0, 0]),
            entry(0xd, 7, [0x400, 0x680, 0, 0]),
            entry(0xd, 9, [0x8, 0xa80, 0, 0]),
            entry(0xd, 17, [0x40, 0xac0, 0, 0]),
            entry(0xd, 18, [0x2000, 0xb00, 0x6, 0]),
            entry(0x12, 0, [u32::MAX; 4]),
            entry(0x12, 2, [u32::MAX; 4]),
            entry(0x1d, 0, [u32::MAX; 4]),
            entry(0x1e, 0, [u32::MAX; 4]),
        ])
        .unwrap();
        CpuTemplate::Baseline.apply(&mut cpuid).unwrap();
        assert_eq!(get(&cpuid, LEAF_XSAVE, 0).eax, 0x7);
        assert_eq!(get(&cpuid, LEAF_XSAVE, 2).eax, 0x100);
        for subleaf in [5, 6, 7, 9, 17, 18] {
            let e = get(&cpuid, LEAF_XSAVE, subleaf);
            assert_eq!([e.eax, e.ebx, e.ecx, e.edx], [0; 4], "0xd.{subleaf}");
        }
        for (leaf, subleaf) in [(0x12, 0), (0x12, 2), (0x1d, 0), (0x1e, 0)] {
            let e = get(&cpuid, leaf, subleaf);
            assert_eq!([e.eax, e.ebx, e.ecx, e.edx], [0; 4], "{leaf:#x}.{subleaf}");
        }
        assert_eq!(cpuid.as_slice().len(), 12);
    }

    #[test]
    fn test_emulated_supervisor_clears_exactly_its_bits() {
        let before = all_ones_cpuid();
        let mut after = before.clone();
        CpuTemplate::EmulatedSupervisor.apply(&mut after).unwrap();
        let ones = u32::MAX;
        // Leaf 1 ECX: CX16 13, POPCNT 23, XSAVE 26, OSXSAVE 27, AVX 28.
        let leaf1_ecx = (1 << 13) | (1 << 23) | (1 << 26) | (1 << 27) | (1 << 28);
        // Leaf 7 EBX adds SMEP 7 and SMAP 20; ECX PKU 3 is already in Baseline.
        let leaf7_ebx = BASELINE_7_EBX | (1 << 7) | (1 << 20);
        assert_only_changed(
            &before,
            &after,
            &[
                ((0x1, 0), [ones, ones, !leaf1_ecx, ones]),
                (
                    (0x7, 0),
                    [ones, !leaf7_ebx, !BASELINE_7_ECX, !BASELINE_7_EDX],
                ),
                ((0x7, 1), [!BASELINE_7_1_EAX, ones, ones, !BASELINE_7_1_EDX]),
                ((0xd, 0), [0; 4]),
                ((0xd, 1), [0; 4]),
                ((0xd, 2), [0; 4]),
            ],
        );
        let leaf7 = get(&after, LEAF_EXT_FEATURES, 0);
        assert_eq!(leaf7.ecx & (1 << 3), 0, "PKU cleared");
        let leaf_d = get(&after, LEAF_XSAVE, 1);
        assert_eq!(leaf_d.flags, kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
    }

    #[test]
    fn test_apply_auto_is_an_error() {
        let mut cpuid = all_ones_cpuid();
        let err = CpuTemplate::Auto.apply(&mut cpuid).unwrap_err();
        assert!(matches!(err, CpuidError::UnresolvedTemplate));
        assert_eq!(cpuid.as_slice(), all_ones_cpuid().as_slice());
    }

    #[test]
    fn test_apply_leaves_missing_leaves_missing() {
        for template in [CpuTemplate::Baseline, CpuTemplate::EmulatedSupervisor] {
            let mut cpuid = CpuId::from_entries(&[entry(0x0, 0, [0xd, 0, 0, 0])]).unwrap();
            template.apply(&mut cpuid).unwrap();
            assert_eq!(cpuid.as_slice().len(), 1);
            assert_eq!(get(&cpuid, 0x0, 0).eax, 0xd);
        }
    }

    #[test]
    fn test_auto_resolution() {
        assert_eq!(
            CpuTemplate::Auto.resolve(true),
            CpuTemplate::EmulatedSupervisor
        );
        assert_eq!(CpuTemplate::Auto.resolve(false), CpuTemplate::Host);
        for template in &ALL[1..] {
            assert_eq!(template.resolve(true), *template);
            assert_eq!(template.resolve(false), *template);
        }
        assert_eq!(CpuTemplate::default(), CpuTemplate::Auto);
    }

    #[test]
    fn test_kernel_cmdline_switches() {
        assert_eq!(
            CpuTemplate::EmulatedSupervisor.kernel_cmdline_switches(),
            ["noxsave", "clearcpuid=smap,smep,pku,xsave,popcnt,cx16"]
        );
        for template in [CpuTemplate::Auto, CpuTemplate::Host, CpuTemplate::Baseline] {
            assert!(template.kernel_cmdline_switches().is_empty());
        }
    }

    #[test]
    fn test_names_agree_across_display_clap_and_serde() {
        let names = ["auto", "host", "baseline", "emulated-supervisor"];
        for (template, name) in ALL.into_iter().zip(names) {
            assert_eq!(template.to_string(), name);
            let value = template.to_possible_value().unwrap();
            assert_eq!(value.get_name(), name);
            assert_eq!(CpuTemplate::from_str(name, false).unwrap(), template);
            let de: StrDeserializer<'_, DeError> = name.into_deserializer();
            assert_eq!(CpuTemplate::deserialize(de).unwrap(), template);
        }
        let de: StrDeserializer<'_, DeError> = "EmulatedSupervisor".into_deserializer();
        assert!(CpuTemplate::deserialize(de).is_err());
    }
}
