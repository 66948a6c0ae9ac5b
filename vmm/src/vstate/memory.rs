// SPDX-License-Identifier: Apache-2.0
//! Guest memory: the one place that names `vm_memory`'s backend and lays RAM
//! out around the 32-bit MMIO gap.

pub use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryRegion,
    GuestUsize,
};

use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// Guest RAM as mapped anonymous memory in the VMM (no dirty-page bitmap yet).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
/// One mapped region of guest RAM.
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<()>;

/// Errors creating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Mapping failed (typically ENOMEM from the host).
    #[error("Cannot map {size_mib} MiB of guest memory")]
    Map {
        /// The requested size.
        size_mib: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The guest-physical ranges of RAM for `size` bytes: below the MMIO gap
/// first, the rest from 4 GiB up.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    let below_gap = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), below_gap)];
    if size > below_gap {
        ranges.push((GuestAddress(MMIO_GAP_END), size - below_gap));
    }
    ranges
}

/// Maps `size` bytes of guest RAM laid out by [`ram_ranges`].
///
/// # Errors
/// [`MemoryError::Map`] when the host refuses the mapping.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| (start, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        size_mib: size >> 20,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ram_ranges_below_gap_is_one_region() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        assert_eq!(
            ram_ranges(MMIO_GAP_START),
            vec![(GuestAddress(0), MMIO_GAP_START)]
        );
    }

    #[test]
    fn test_ram_ranges_skip_the_mmio_gap() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(
            ranges,
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn test_create_guest_memory_maps_every_range() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert_eq!(mem.last_addr(), GuestAddress((64 << 20) - 1));
        mem.write_obj(0xabu8, GuestAddress(0x1000)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xab);
    }
}
