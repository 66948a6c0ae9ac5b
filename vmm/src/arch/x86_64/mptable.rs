// SPDX-License-Identifier: Apache-2.0
//! Intel MultiProcessor Specification 1.4 tables, which tell a guest booted
//! without ACPI about its vCPUs, its IO-APIC and how interrupts are wired.
//!
//! Linux finds the floating pointer by scanning the last KiB below 640 KiB
//! (`smp_scan_config`), so the whole table lives in `MPTABLE_START..MPTABLE_END`.

use crate::vstate::memory::{ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryError};

use super::layout::{APIC_START, IOAPIC_PINS, IOAPIC_START, MAX_VCPUS, MPTABLE_END, MPTABLE_START};

const MPF_SIGNATURE: [u8; 4] = *b"_MP_";
const MPC_SIGNATURE: [u8; 4] = *b"PCMP";
const MP_SPEC_REV: u8 = 4;
const OEM_ID: [u8; 8] = *b"VMPOD   ";
const PRODUCT_ID: [u8; 12] = *b"000000000000";
const BUS_TYPE_ISA: [u8; 6] = *b"ISA   ";
const ISA_BUS_ID: u8 = 0;

// Entry types (spec 4.3, table 4-3).
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;

// Interrupt types (spec 4.3.4, table 4-10).
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// Polarity and trigger mode conform to the bus (spec table 4-11).
const IRQ_FLAGS_CONFORM: u16 = 0;
/// Destination local APIC id meaning "every local APIC" (spec 4.3.5).
const ALL_LAPICS: u8 = 0xff;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BSP: u8 = 1 << 1;
const LAPIC_VERSION: u8 = 0x14;
/// CPUID signature: family 6, model 0, stepping 0 (as Firecracker).
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURE_FPU: u32 = 1 << 0;
const CPU_FEATURE_APIC: u32 = 1 << 9;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_ENABLED: u8 = 1 << 0;

/// The MP table holds 32-bit physical addresses; fails the build otherwise.
const fn addr32(addr: u64) -> u32 {
    assert!(addr <= u32::MAX as u64, "MP table addresses are 32-bit");
    addr as u32
}

/// MP floating pointer structure (spec 4.1, figure 4-2).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    spec: u8,
    checksum: u8,
    features: [u8; 5],
}

/// MP configuration table header (spec 4.2, figure 4-3).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcTable {
    signature: [u8; 4],
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    product: [u8; 12],
    oemptr: u32,
    oemsize: u16,
    count: u16,
    lapic: u32,
    ext_length: u16,
    ext_checksum: u8,
    reserved: u8,
}

/// Processor entry (spec 4.3.1, figure 4-5).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcCpu {
    type_: u8,
    apicid: u8,
    apicver: u8,
    cpuflag: u8,
    signature: u32,
    features: u32,
    reserved: [u32; 2],
}

/// Bus entry (spec 4.3.2, figure 4-6).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcBus {
    type_: u8,
    busid: u8,
    bustype: [u8; 6],
}

/// I/O APIC entry (spec 4.3.3, figure 4-7).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIoapic {
    type_: u8,
    apicid: u8,
    apicver: u8,
    flags: u8,
    apicaddr: u32,
}

/// I/O interrupt assignment entry (spec 4.3.4, figure 4-8).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIntsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbus: u8,
    srcbusirq: u8,
    dstapic: u8,
    dstirq: u8,
}

/// Local interrupt assignment entry (spec 4.3.5, figure 4-9).
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcLintsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbusid: u8,
    srcbusirq: u8,
    destapic: u8,
    destapiclint: u8,
}

/// Implements `ByteValued` for the spec's structures above.
macro_rules! byte_valued {
    ($($t:ty),*) => {$(
        // SAFETY: plain data (integers and byte arrays only); `packed` leaves no padding, and
        // any bit pattern is a valid value of every field.
        unsafe impl ByteValued for $t {}
    )*};
}
byte_valued!(MpfIntel, MpcTable, MpcCpu, MpcBus, MpcIoapic, MpcIntsrc, MpcLintsrc);

// Sizes as the spec's figures give them.
const _: () = assert!(size_of::<MpfIntel>() == 16);
const _: () = assert!(size_of::<MpcTable>() == 44);
const _: () = assert!(size_of::<MpcCpu>() == 20);
const _: () = assert!(size_of::<MpcBus>() == 8);
const _: () = assert!(size_of::<MpcIoapic>() == 8);
const _: () = assert!(size_of::<MpcIntsrc>() == 8);
const _: () = assert!(size_of::<MpcLintsrc>() == 8);

/// Bytes of the floating pointer plus the whole table for `num_cpus` vCPUs.
const fn table_len(num_cpus: usize) -> usize {
    size_of::<MpfIntel>()
        + size_of::<MpcTable>()
        + num_cpus * size_of::<MpcCpu>()
        + size_of::<MpcBus>()
        + size_of::<MpcIoapic>()
        + IOAPIC_PINS as usize * size_of::<MpcIntsrc>()
        + 2 * size_of::<MpcLintsrc>()
}

// The largest VM's table fits in its KiB (924 of 1024 bytes).
const _: () = assert!(table_len(MAX_VCPUS as usize) as u64 <= MPTABLE_END - MPTABLE_START);

/// Errors writing the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// A VM has at least one vCPU, the boot one.
    #[error("The MP table needs at least one vCPU")]
    NoCpus,
    /// More vCPUs than `MAX_VCPUS`, which bounds the table to its KiB.
    #[error("Too many vCPUs for the MP table: {0} (the most is {max})", max = MAX_VCPUS)]
    TooManyCpus(u8),
    /// The table would cross the 640 KiB boundary.
    #[error("The MP table does not fit below 640 KiB")]
    TooBig,
    /// Guest memory does not cover the table's area.
    #[error("Cannot write the MP table to guest memory")]
    Write(#[source] GuestMemoryError),
}

/// The byte that makes the sum of `parts` plus itself 0 mod 256 (spec 4.1, 4.2).
fn checksum(parts: &[&[u8]]) -> u8 {
    parts
        .iter()
        .flat_map(|part| part.iter())
        .fold(0u8, |sum, byte| sum.wrapping_add(*byte))
        .wrapping_neg()
}

/// Fails unless `len` bytes from `MPTABLE_START` stay below 640 KiB.
fn check_fits(len: usize) -> Result<(), MptableError> {
    match u64::try_from(len) {
        Ok(len) if len <= MPTABLE_END - MPTABLE_START => Ok(()),
        _ => Err(MptableError::TooBig),
    }
}

/// The configuration table's entries for `num_cpus` vCPUs: one per CPU, the
/// ISA bus, the IO-APIC (with ID `num_cpus + 1`), its pins and the local
/// interrupt lines.
fn table_entries(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    // The caller checked num_cpus <= MAX_VCPUS, so this cannot overflow.
    let ioapic_id = num_cpus + 1;
    let mut entries = Vec::with_capacity(table_len(usize::from(num_cpus)));
    for cpu in 0..num_cpus {
        let bsp = if cpu == 0 { CPU_BSP } else { 0 };
        let entry = MpcCpu {
            type_: MP_PROCESSOR,
            apicid: cpu,
            apicver: LAPIC_VERSION,
            cpuflag: CPU_ENABLED | bsp,
            signature: CPU_SIGNATURE,
            features: CPU_FEATURE_FPU | CPU_FEATURE_APIC,
            reserved: [0; 2],
        };
        entries.extend_from_slice(entry.as_slice());
    }
    let bus = MpcBus {
        type_: MP_BUS,
        busid: ISA_BUS_ID,
        bustype: BUS_TYPE_ISA,
    };
    entries.extend_from_slice(bus.as_slice());
    let ioapic = MpcIoapic {
        type_: MP_IOAPIC,
        apicid: ioapic_id,
        apicver: IOAPIC_VERSION,
        flags: IOAPIC_ENABLED,
        apicaddr: const { addr32(IOAPIC_START) },
    };
    entries.extend_from_slice(ioapic.as_slice());
    for pin in 0..IOAPIC_PINS {
        let pin = u8::try_from(pin).map_err(|_| MptableError::TooBig)?;
        let intsrc = MpcIntsrc {
            type_: MP_INTSRC,
            irqtype: MP_INT,
            irqflag: IRQ_FLAGS_CONFORM,
            srcbus: ISA_BUS_ID,
            srcbusirq: pin,
            dstapic: ioapic_id,
            dstirq: pin,
        };
        entries.extend_from_slice(intsrc.as_slice());
    }
    // The 8259 PIC (virtual wire mode) on LINT0 and NMIs on LINT1 of every CPU.
    for (irqtype, lint) in [(MP_EXTINT, 0), (MP_NMI, 1)] {
        let lintsrc = MpcLintsrc {
            type_: MP_LINTSRC,
            irqtype,
            irqflag: IRQ_FLAGS_CONFORM,
            srcbusid: ISA_BUS_ID,
            srcbusirq: 0,
            destapic: ALL_LAPICS,
            destapiclint: lint,
        };
        entries.extend_from_slice(lintsrc.as_slice());
    }
    Ok(entries)
}

/// The floating pointer and the configuration table for `num_cpus` vCPUs (1..=`MAX_VCPUS`), as
/// the guest sees them from `MPTABLE_START` on.
fn build_table(num_cpus: u8) -> Result<Vec<u8>, MptableError> {
    let entries = table_entries(num_cpus)?;
    let count = usize::from(num_cpus) + 2 + IOAPIC_PINS as usize + 2;
    let length = size_of::<MpcTable>() + entries.len();
    let mut header = MpcTable {
        signature: MPC_SIGNATURE,
        length: u16::try_from(length).map_err(|_| MptableError::TooBig)?,
        spec: MP_SPEC_REV,
        oem: OEM_ID,
        product: PRODUCT_ID,
        count: u16::try_from(count).map_err(|_| MptableError::TooBig)?,
        lapic: const { addr32(APIC_START) },
        ..Default::default()
    };
    header.checksum = checksum(&[header.as_slice(), &entries]);

    let mut mpf = MpfIntel {
        signature: MPF_SIGNATURE,
        physptr: const { addr32(MPTABLE_START + size_of::<MpfIntel>() as u64) },
        length: 1, // In 16-byte units.
        spec: MP_SPEC_REV,
        ..Default::default()
    };
    mpf.checksum = checksum(&[mpf.as_slice()]);

    let mut table = Vec::with_capacity(size_of::<MpfIntel>() + length);
    table.extend_from_slice(mpf.as_slice());
    table.extend_from_slice(header.as_slice());
    table.extend_from_slice(&entries);
    Ok(table)
}

/// Writes the MP table for `num_cpus` vCPUs into the last KiB below 640 KiB, where a guest
/// without ACPI learns its CPUs, its IO-APIC and its interrupt routing.
///
/// # Errors
///
/// `NoCpus` or `TooManyCpus` (nothing is written) for a count outside 1..=`MAX_VCPUS`, and
/// `Write` if guest memory does not cover the table's bytes from `MPTABLE_START` on.
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MptableError> {
    if num_cpus == 0 {
        return Err(MptableError::NoCpus);
    }
    if num_cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(num_cpus));
    }
    let table = build_table(num_cpus)?;
    check_fits(table.len())?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    fn memory() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn byte_sum(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> u8 {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
    }

    /// Finds the floating pointer as Linux's `smp_scan_config` does: "_MP_" on a 16-byte
    /// boundary of the last KiB below 640 KiB.
    fn find_mpf(mem: &GuestMemoryMmap<()>) -> Option<u64> {
        (MPTABLE_START..MPTABLE_END)
            .step_by(16)
            .find(|&addr| mem.read_obj::<[u8; 4]>(GuestAddress(addr)).unwrap() == MPF_SIGNATURE)
    }

    /// What the guest reads back: the pointer, the header and every entry by type.
    #[derive(Default)]
    struct Decoded {
        mpf: MpfIntel,
        header: MpcTable,
        cpus: Vec<MpcCpu>,
        buses: Vec<MpcBus>,
        ioapics: Vec<MpcIoapic>,
        intsrcs: Vec<MpcIntsrc>,
        lintsrcs: Vec<MpcLintsrc>,
        /// Bytes from the header's start to the end of the last entry.
        walked: u64,
    }

    /// Reads a `T` at `*addr` and moves `addr` past it.
    fn take<T: ByteValued>(mem: &GuestMemoryMmap<()>, addr: &mut u64) -> T {
        let value = mem.read_obj(GuestAddress(*addr)).unwrap();
        *addr += size_of::<T>() as u64;
        value
    }

    fn decode(mem: &GuestMemoryMmap<()>) -> Decoded {
        let mut addr = find_mpf(mem).expect("no _MP_ signature in the last KiB");
        let mpf: MpfIntel = take(mem, &mut addr);
        let base = u64::from(mpf.physptr);
        addr = base;
        let header: MpcTable = take(mem, &mut addr);
        let mut t = Decoded {
            mpf,
            header,
            ..Default::default()
        };
        for _ in 0..header.count {
            match mem.read_obj::<u8>(GuestAddress(addr)).unwrap() {
                MP_PROCESSOR => t.cpus.push(take(mem, &mut addr)),
                MP_BUS => t.buses.push(take(mem, &mut addr)),
                MP_IOAPIC => t.ioapics.push(take(mem, &mut addr)),
                MP_INTSRC => t.intsrcs.push(take(mem, &mut addr)),
                MP_LINTSRC => t.lintsrcs.push(take(mem, &mut addr)),
                other => panic!("unknown entry type {other}"),
            }
        }
        t.walked = addr - base;
        t
    }

    #[test]
    fn test_floating_pointer_found_by_scan() {
        let mem = memory();
        setup_mptable(&mem, 1).unwrap();
        assert_eq!(find_mpf(&mem), Some(MPTABLE_START));
        let mpf = decode(&mem).mpf;
        assert_eq!((mpf.length, mpf.spec), (1, 4));
        assert_eq!({ mpf.physptr }, MPTABLE_START as u32 + 16);
        assert_eq!(byte_sum(&mem, MPTABLE_START, size_of::<MpfIntel>()), 0);
    }

    #[test]
    fn test_header_matches_entries() {
        let mem = memory();
        setup_mptable(&mem, 3).unwrap();
        let t = decode(&mem);
        let h = t.header;
        assert_eq!((h.signature, h.spec, h.oem), (*b"PCMP", 4, *b"VMPOD   "));
        assert_eq!({ h.lapic }, APIC_START as u32);
        assert_eq!({ h.count }, 3 + 1 + 1 + 24 + 2);
        assert_eq!(u64::from(h.length), t.walked);
        assert_eq!(t.walked + 16, table_len(3) as u64);
        assert_eq!(byte_sum(&mem, MPTABLE_START + 16, usize::from(h.length)), 0);
    }

    #[test]
    fn test_processors_for_1_and_32_cpus() {
        for n in [1, MAX_VCPUS] {
            let mem = memory();
            setup_mptable(&mem, n).unwrap();
            let cpus = decode(&mem).cpus;
            assert_eq!(cpus.len(), usize::from(n));
            for (id, cpu) in (0..n).zip(&cpus) {
                assert_eq!((cpu.apicid, cpu.apicver), (id, 0x14));
                assert_ne!(cpu.cpuflag & CPU_ENABLED, 0);
                assert_eq!({ cpu.signature }, 0x600);
                assert_eq!({ cpu.features }, CPU_FEATURE_FPU | CPU_FEATURE_APIC);
            }
            let bsps: Vec<_> = cpus.iter().filter(|c| c.cpuflag & CPU_BSP != 0).collect();
            assert_eq!(bsps.len(), 1);
            assert_eq!(bsps[0].apicid, 0);
        }
    }

    #[test]
    fn test_ioapic_routes_every_pin() {
        let mem = memory();
        setup_mptable(&mem, 2).unwrap();
        let t = decode(&mem);
        assert_eq!(t.buses.len(), 1);
        assert_eq!((t.buses[0].busid, t.buses[0].bustype), (0, *b"ISA   "));
        assert_eq!(t.ioapics.len(), 1);
        let ioapic = t.ioapics[0];
        assert_eq!((ioapic.apicid, ioapic.apicver, ioapic.flags), (3, 0x11, 1));
        assert_eq!({ ioapic.apicaddr }, IOAPIC_START as u32);
        assert_eq!(t.intsrcs.len(), 24);
        for (pin, src) in (0u8..).zip(&t.intsrcs) {
            assert_eq!((src.irqtype, { src.irqflag }), (MP_INT, 0));
            assert_eq!((src.srcbus, src.srcbusirq), (0, pin));
            assert_eq!((src.dstapic, src.dstirq), (3, pin));
        }
        let lints = t
            .lintsrcs
            .iter()
            .map(|l| (l.irqtype, l.destapic, l.destapiclint));
        let want = [(MP_EXTINT, 0xff, 0), (MP_NMI, 0xff, 1)];
        assert_eq!(lints.collect::<Vec<_>>(), want);
    }

    #[test]
    fn test_max_vcpus_table_fits() {
        let len = build_table(MAX_VCPUS).unwrap().len();
        assert_eq!(len, 924);
        assert!(MPTABLE_START + len as u64 <= MPTABLE_END);
        assert!(setup_mptable(&memory(), MAX_VCPUS).is_ok());
        let err = setup_mptable(&memory(), MAX_VCPUS + 1).unwrap_err();
        assert!(matches!(err, MptableError::TooManyCpus(33)));
        assert_eq!(
            err.to_string(),
            "Too many vCPUs for the MP table: 33 (the most is 32)"
        );
        assert!(matches!(check_fits(1025), Err(MptableError::TooBig)));
    }

    #[test]
    fn test_bad_cpu_counts_write_nothing() {
        let mem = memory();
        let pattern = [0x5au8; 1024];
        mem.write_slice(&pattern, GuestAddress(MPTABLE_START))
            .unwrap();
        assert!(matches!(setup_mptable(&mem, 0), Err(MptableError::NoCpus)));
        let err = setup_mptable(&mem, 33);
        assert!(matches!(err, Err(MptableError::TooManyCpus(33))));
        let mut after = [0u8; 1024];
        mem.read_slice(&mut after, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(after, pattern);
    }

    #[test]
    fn test_small_memory_is_a_write_error() {
        // Below the table, and ending inside it.
        for size in [0x9f000, 0x9fd00] {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size)]).unwrap();
            let err = setup_mptable(&mem, 1).unwrap_err();
            assert!(matches!(err, MptableError::Write(_)), "{size:#x}: {err}");
            assert!(std::error::Error::source(&err).is_some());
        }
    }
}
