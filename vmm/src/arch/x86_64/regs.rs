// SPDX-License-Identifier: Apache-2.0
//! The boot vCPU's registers for each entry protocol: 64-bit long mode with
//! identity-mapped page tables (Linux boot protocol), or 32-bit protected
//! mode without paging (PVH).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};

use super::gdt::{gdt_entry, kvm_segment_from_gdt};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};
use crate::vstate::memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryError};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;
/// RFLAGS bit 1 is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word at reset: all exceptions masked.
const FPU_CONTROL_WORD: u16 = 0x37f;
/// SSE control/status at reset: all exceptions masked.
const MXCSR_DEFAULT: u32 = 0x1f80;
/// Page-table entry flags: present, writable.
const PTE_PRESENT_RW: u64 = 0x3;
/// Page-directory entry flags: present, writable, 2 MiB page.
const PDE_HUGE_PRESENT_RW: u64 = 0x83;

/// How the kernel wants to be entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootProtocol {
    /// 64-bit entry with paging on and `boot_params` in RSI.
    Linux64,
    /// PVH: 32-bit entry, paging off, `hvm_start_info` in RBX.
    Pvh,
}

/// Where and how the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPoint {
    /// Guest-physical address of the first instruction.
    pub addr: GuestAddress,
    /// The protocol the kernel is entered with.
    pub protocol: BootProtocol,
}

/// Errors writing the boot tables.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// Guest memory does not hold the GDT, IDT or page tables.
    #[error("Cannot write the boot {0} to guest memory")]
    Write(&'static str, #[source] GuestMemoryError),
}

fn gdt_for(protocol: BootProtocol) -> [u64; 4] {
    match protocol {
        BootProtocol::Linux64 => [
            0,
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
        BootProtocol::Pvh => [
            0,
            gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x008b, 0, 0x67),    // TSS
        ],
    }
}

/// Writes the GDT, an empty IDT and (for 64-bit entry) page tables that
/// identity-map the first GiB.
///
/// # Errors
/// [`RegsError::Write`] when guest memory is too small.
pub fn write_boot_tables<M: GuestMemory>(mem: &M, protocol: BootProtocol) -> Result<(), RegsError> {
    for (i, entry) in gdt_for(protocol).iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|e| RegsError::Write("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| RegsError::Write("IDT", e))?;
    if protocol == BootProtocol::Linux64 {
        let write = |value: u64, addr: u64| {
            mem.write_obj(value, GuestAddress(addr))
                .map_err(|e| RegsError::Write("page tables", e))
        };
        write(PDPTE_START | PTE_PRESENT_RW, PML4_START)?;
        write(PDE_START | PTE_PRESENT_RW, PDPTE_START)?;
        for i in 0..512u64 {
            write((i << 21) | PDE_HUGE_PRESENT_RW, PDE_START + i * 8)?;
        }
    }
    Ok(())
}

/// Segment and control registers for `protocol`, starting from the vCPU's
/// current `sregs` (which keep KVM's APIC base and the like).
pub fn boot_sregs(mut sregs: kvm_sregs, protocol: BootProtocol) -> kvm_sregs {
    let gdt = gdt_for(protocol);
    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    match protocol {
        BootProtocol::Linux64 => {
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

/// General-purpose registers at the kernel's entry.
pub fn boot_regs(entry: EntryPoint) -> kvm_regs {
    let mut regs = kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry.addr.0,
        ..Default::default()
    };
    match entry.protocol {
        BootProtocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        BootProtocol::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// x87/SSE state at reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::create_guest_memory;

    #[test]
    fn test_long_mode_tables_identity_map_the_first_gib() {
        let mem = create_guest_memory(16 << 20).unwrap();
        write_boot_tables(&mem, BootProtocol::Linux64).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 0x3);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte, PDE_START | 0x3);
        let last: u64 = mem.read_obj(GuestAddress(PDE_START + 511 * 8)).unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, gdt_entry(0xa09b, 0, 0xfffff));
    }

    #[test]
    fn test_pvh_tables_have_no_paging() {
        let mem = create_guest_memory(16 << 20).unwrap();
        write_boot_tables(&mem, BootProtocol::Pvh).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, 0);
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, gdt_entry(0xc09b, 0, 0xfffff));
    }

    #[test]
    fn test_tables_need_low_memory() {
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0x10_0000), 4096)])
            .unwrap();
        assert!(matches!(
            write_boot_tables(&mem, BootProtocol::Linux64),
            Err(RegsError::Write("GDT", _))
        ));
    }

    #[test]
    fn test_long_mode_sregs() {
        let sregs = boot_sregs(kvm_sregs::default(), BootProtocol::Linux64);
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.l, sregs.cs.selector), (1, 8));
        assert_eq!(sregs.ss.selector, 16);
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn test_pvh_sregs_are_flat_protected_mode() {
        let start = kvm_sregs {
            cr4: X86_CR4_PAE,
            efer: EFER_LME,
            ..Default::default()
        };
        let sregs = boot_sregs(start, BootProtocol::Pvh);
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!((sregs.cs.l, sregs.cs.db), (0, 1));
        assert_eq!(sregs.cs.limit, 0xffff_ffff);
    }

    #[test]
    fn test_entry_registers_per_protocol() {
        let linux = boot_regs(EntryPoint {
            addr: GuestAddress(0x100_0000),
            protocol: BootProtocol::Linux64,
        });
        assert_eq!(
            (linux.rip, linux.rsi, linux.rsp, linux.rflags),
            (0x100_0000, ZERO_PAGE_START, BOOT_STACK_POINTER, 2)
        );
        let pvh = boot_regs(EntryPoint {
            addr: GuestAddress(0x100_0040),
            protocol: BootProtocol::Pvh,
        });
        assert_eq!((pvh.rip, pvh.rbx, pvh.rsi), (0x100_0040, PVH_INFO_START, 0));
        assert_eq!(boot_fpu().fcw, 0x37f);
    }
}
