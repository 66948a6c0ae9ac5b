// SPDX-License-Identifier: Apache-2.0
//! What the kernel is told at entry: the E820 memory map, and either the
//! Linux zero page (`boot_params`) or the PVH `hvm_start_info`.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

use super::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, PVH_INFO_START,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use super::regs::BootProtocol;
use crate::vstate::memory::{Address, GuestAddress, GuestMemory};

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Most entries the zero page's E820 table holds.
const E820_MAX_ENTRIES: usize = 128;
/// `boot_flag` value a valid setup header carries.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// "HdrS": a setup header of boot protocol 2.00 or later.
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
/// Boot loader id "undefined" (0xff), as Firecracker and CH use.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// Default kernel alignment when there is no setup header (ELF vmlinux).
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// One range of the guest's physical memory map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// E820 type (1 = RAM).
    pub kind: u32,
}

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdRegion {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Size in bytes.
    pub size: u64,
}

/// Errors writing boot parameters.
#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    /// linux-loader could not write the structures.
    #[error("Cannot write the boot parameters to guest memory")]
    Write(#[source] linux_loader::configurator::Error),
    /// Memory map larger than the zero page holds (cannot happen with the
    /// fixed layout, but the table is bounded).
    #[error("The memory map has {0} entries, more than the boot protocol holds")]
    TooManyE820Entries(usize),
}

/// The RAM ranges the guest may use: low memory below the EBDA, and
/// everything from 1 MiB up, split around the MMIO gap.
pub fn e820_map<M: GuestMemory>(mem: &M) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    let end = mem.last_addr().raw_value() + 1;
    if end <= MMIO_GAP_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: end - HIMEM_START,
            kind: E820_RAM,
        });
    } else {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: MMIO_GAP_START - HIMEM_START,
            kind: E820_RAM,
        });
        if end > MMIO_GAP_END {
            map.push(E820Entry {
                addr: MMIO_GAP_END,
                size: end - MMIO_GAP_END,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// The zero page for a kernel entered through the 64-bit boot protocol.
/// `header` is the bzImage's setup header, if there is one.
///
/// # Errors
/// [`BootParamsError::TooManyE820Entries`] if the map does not fit.
pub fn linux_boot_params(
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
    e820: &[E820Entry],
) -> Result<boot_params, BootParamsError> {
    if e820.len() > E820_MAX_ENTRIES {
        return Err(BootParamsError::TooManyE820Entries(e820.len()));
    }
    let mut params = boot_params::default();
    if let Some(header) = header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr.raw_value() as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    Ok(params)
}

/// Writes the boot parameters `protocol` needs into guest memory.
///
/// # Errors
/// A [`BootParamsError`] when they cannot be written.
pub fn write_boot_params<M: GuestMemory>(
    mem: &M,
    protocol: BootProtocol,
    header: Option<setup_header>,
    cmdline_len: usize,
    initrd: Option<InitrdRegion>,
) -> Result<(), BootParamsError> {
    let e820 = e820_map(mem);
    match protocol {
        BootProtocol::Linux64 => {
            let params = linux_boot_params(header, cmdline_len, initrd, &e820)?;
            let boot = BootParams::new(&params, GuestAddress(ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams(&boot, mem).map_err(BootParamsError::Write)
        }
        BootProtocol::Pvh => {
            let memmap: Vec<hvm_memmap_table_entry> = e820
                .iter()
                .map(|e| hvm_memmap_table_entry {
                    addr: e.addr,
                    size: e.size,
                    type_: e.kind,
                    reserved: 0,
                })
                .collect();
            let mut info = hvm_start_info {
                magic: XEN_HVM_START_MAGIC_VALUE,
                version: 1,
                cmdline_paddr: CMDLINE_START,
                memmap_paddr: PVH_MEMMAP_START,
                memmap_entries: memmap.len() as u32,
                ..Default::default()
            };
            let mut boot = BootParams::new(&info, GuestAddress(PVH_INFO_START));
            boot.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
            if let Some(initrd) = initrd {
                info.nr_modules = 1;
                info.modlist_paddr = PVH_MODLIST_START;
                boot = BootParams::new(&info, GuestAddress(PVH_INFO_START));
                boot.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
                let module = hvm_modlist_entry {
                    paddr: initrd.addr.raw_value(),
                    size: initrd.size,
                    ..Default::default()
                };
                boot.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
            }
            PvhBootConfigurator::write_bootparams(&boot, mem).map_err(BootParamsError::Write)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::memory::{create_guest_memory, Bytes};

    #[test]
    fn test_e820_small_memory() {
        let mem = create_guest_memory(128 << 20).unwrap();
        assert_eq!(
            e820_map(&mem),
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: HIMEM_START,
                    size: (128 << 20) - HIMEM_START,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn test_e820_large_memory_skips_the_gap() {
        let mem = create_guest_memory(4 << 30).unwrap();
        let map = e820_map(&mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_GAP_START);
        assert_eq!(map[2].addr, MMIO_GAP_END);
        assert_eq!(map[2].size, (4 << 30) - MMIO_GAP_START);
        let total: u64 = map.iter().map(|e| e.size).sum();
        assert_eq!(total, (4 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn test_zero_page_without_setup_header() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let initrd = InitrdRegion {
            addr: GuestAddress(0x300_0000),
            size: 0x1234,
        };
        write_boot_params(&mem, BootProtocol::Linux64, None, 42, Some(initrd)).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!(params.e820_entries, 2);
        let second = params.e820_table[1];
        assert_eq!({ second.addr }, HIMEM_START);
    }

    #[test]
    fn test_zero_page_keeps_the_bzimage_header() {
        let header = setup_header {
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            ..Default::default()
        };
        let params = linux_boot_params(Some(header), 0, None, &[]).unwrap();
        let hdr = params.hdr;
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.ramdisk_image }, 0);
    }

    #[test]
    fn test_too_many_e820_entries_is_an_error() {
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: E820_RAM
            };
            129
        ];
        assert!(matches!(
            linux_boot_params(None, 0, None, &map),
            Err(BootParamsError::TooManyE820Entries(129))
        ));
    }

    #[test]
    fn test_pvh_start_info_lists_memory_and_initrd() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let initrd = InitrdRegion {
            addr: GuestAddress(0x200_0000),
            size: 4096,
        };
        write_boot_params(&mem, BootProtocol::Pvh, None, 10, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(PVH_MODLIST_START)).unwrap();
        assert_eq!((module.paddr, module.size), (0x200_0000, 4096));
        let second: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!({ second.addr }, HIMEM_START);
        assert_eq!({ second.type_ }, E820_RAM);
    }
}
