// SPDX-License-Identifier: Apache-2.0
//! Guest physical memory layout and interrupt numbering of a vmpod microVM.
//!
//! The same addresses as Firecracker, Cloud Hypervisor and libkrun use, so that
//! a guest kernel built for one of them boots unchanged in vmpod.

/// GDT set up by the VMM for the boot vCPU.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (empty) set up by the VMM for the boot vCPU.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, handed to the kernel in RBX.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries, right after `hvm_start_info`.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// PVH module list (the initrd), after room for 64 memory map entries.
pub const PVH_MODLIST_START: u64 = 0x6800;
/// Linux zero page (`boot_params`), handed to the kernel in RSI.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU (grows down, below the page tables).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables for a 64-bit entry: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table, right after the PML4.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages), right after the PDPT.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line accepted (Linux's `COMMAND_LINE_SIZE` on x86_64).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table lives in its last KiB.
pub const EBDA_START: u64 = 0x9fc00;
/// MP table (Intel MultiProcessor spec 1.4), in the last KiB below 640 KiB.
pub const MPTABLE_START: u64 = EBDA_START;
/// End of the MP table area (exclusive): the 640 KiB boundary.
pub const MPTABLE_END: u64 = 0xa0000;
/// Kernel load address (1 MiB), also the start of high memory in the E820 map.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap; guest RAM resumes at 4 GiB above it.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Size of one device MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// The boot-timer register: the first window of the MMIO gap.
pub const BOOT_TIMER_START: u64 = MMIO_GAP_START;
/// First virtio-mmio window (announced as `virtio_mmio.device=4K@0xc0001000:5`).
pub const VIRTIO_MMIO_START: u64 = MMIO_GAP_START + MMIO_WINDOW_SIZE;
/// IO-APIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Number of IO-APIC pins (KVM's in-kernel IO-APIC has 24).
pub const IOAPIC_PINS: u32 = 24;
/// COM1 interrupt.
pub const SERIAL_GSI: u32 = 4;
/// First interrupt given to virtio devices.
pub const VIRTIO_GSI_START: u32 = 5;
/// COM1 I/O port base.
pub const SERIAL_PORT_BASE: u16 = 0x3f8;
/// Number of COM1 I/O ports.
pub const SERIAL_PORT_LEN: u16 = 8;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port (ports 0x60..=0x64 are decoded).
pub const I8042_PORT_LEN: u16 = 5;
/// Most vCPUs a VM may have: what the MP table's KiB can describe.
pub const MAX_VCPUS: u8 = 32;
