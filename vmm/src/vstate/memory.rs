// SPDX-License-Identifier: Apache-2.0
//! Guest memory: the one place that names `vm_memory`'s backend and lays RAM
//! out around the 32-bit MMIO gap; a snapshot's memory file is written and
//! mapped back here.

use std::fs::File;
use std::os::unix::fs::FileExt;

pub use vm_memory::{
    Address, ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryRegion,
    GuestUsize,
};

use vm_memory::mmap::{MmapRegionBuilder, MmapRegionError};
use vm_memory::FileOffset;

use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};

/// The unit a memory file skips when it is all zeroes: the host's page.
const PAGE_SIZE: usize = 4096;
/// How much guest memory a dump copies out at a time.
const DUMP_CHUNK: usize = 1 << 20;

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
    /// Writing the memory file failed.
    #[error("Cannot write guest memory to its file")]
    Dump(#[source] std::io::Error),
    /// Guest memory could not be read while dumping it.
    #[error("Cannot read guest memory at {addr:#x}")]
    Read {
        /// The guest-physical address.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: GuestMemoryError,
    },
    /// The memory file's length could not be read.
    #[error("Cannot read the length of the guest memory file")]
    FileMetadata(#[source] std::io::Error),
    /// The memory file is not as long as the guest's RAM.
    #[error("The guest memory file holds {actual} bytes, the VM's RAM is {expected}")]
    FileLength {
        /// The file's length.
        actual: u64,
        /// The RAM size it must hold.
        expected: u64,
    },
    /// Mapping one region of the memory file failed.
    #[error("Cannot map the guest memory file at offset {offset:#x}")]
    MapFile {
        /// Where in the file the region starts.
        offset: u64,
        /// What vm-memory reported.
        #[source]
        source: MmapRegionError,
    },
    /// A region would end past the top of the guest's address space.
    #[error("Guest memory from {0:#x} on would end past the address space")]
    RegionOverflow(u64),
    /// The mapped regions do not form guest memory.
    #[error("Cannot lay out guest memory from its file")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
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

/// Writes every region of `mem`, in order, to `file` (from its start,
/// replacing what it held). All-zero pages are left as holes, so the file
/// takes the space of the pages the guest touched only; syncing it is the
/// caller's. Call with the vCPUs paused, or the dump is torn.
///
/// # Errors
/// [`MemoryError::Dump`] or [`MemoryError::Read`].
pub fn dump_guest_memory(mem: &GuestMemoryMmap, file: &mut File) -> Result<(), MemoryError> {
    let total: u64 = mem.iter().map(|region| region.len()).sum();
    // Emptied first: a hole left over an older file's data would read back
    // as that data, not as the zero page it stands for.
    file.set_len(0).map_err(MemoryError::Dump)?;
    file.set_len(total).map_err(MemoryError::Dump)?;
    let mut buf = vec![0u8; DUMP_CHUNK];
    let mut file_offset = 0u64;
    for region in mem.iter() {
        let mut done = 0u64;
        while done < region.len() {
            let len = (region.len() - done).min(DUMP_CHUNK as u64) as usize;
            let addr = region.start_addr().unchecked_add(done);
            let chunk = &mut buf[..len];
            mem.read_slice(chunk, addr)
                .map_err(|source| MemoryError::Read {
                    addr: addr.raw_value(),
                    source,
                })?;
            write_nonzero_pages(file, chunk, file_offset + done)?;
            done += len as u64;
        }
        file_offset += region.len();
    }
    Ok(())
}

/// Writes the pages of `chunk` that are not all zero at `offset` on.
fn write_nonzero_pages(file: &File, chunk: &[u8], offset: u64) -> Result<(), MemoryError> {
    let mut page_offset = offset;
    for page in chunk.chunks(PAGE_SIZE) {
        if page.iter().any(|&b| b != 0) {
            file.write_all_at(page, page_offset)
                .map_err(MemoryError::Dump)?;
        }
        page_offset += page.len() as u64;
    }
    Ok(())
}

/// Maps `file`, as written by [`dump_guest_memory`], as `size` bytes of
/// guest RAM laid out by [`ram_ranges`]. The mapping is private
/// (copy-on-write): the guest's writes stay in this process, and every VM
/// restored from one file shares the page cache of its clean pages.
///
/// # Errors
/// [`MemoryError::FileLength`] when `file` is not exactly `size` bytes;
/// [`MemoryError::MapFile`] or [`MemoryError::Layout`] when mapping fails.
pub fn guest_memory_from_file(size: u64, file: &File) -> Result<GuestMemoryMmap, MemoryError> {
    let actual = file.metadata().map_err(MemoryError::FileMetadata)?.len();
    if actual != size {
        return Err(MemoryError::FileLength {
            actual,
            expected: size,
        });
    }
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let map_error = |source| MemoryError::MapFile { offset, source };
        let fd = file
            .try_clone()
            .map_err(|e| map_error(MmapRegionError::Mmap(e)))?;
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::new(fd, offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(map_error)?;
        let region =
            GuestRegionMmap::new(mapping, start).ok_or(MemoryError::RegionOverflow(start.0))?;
        regions.push(region);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)
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

    /// A file of its own in the temporary directory, removed when dropped.
    struct TempFile(std::path::PathBuf, File);

    impl TempFile {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("vmpod-memory-{}-{name}", std::process::id()));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            TempFile(path, file)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The first offset at or after `from` that holds data (SEEK_DATA).
    fn next_data(file: &File, from: u64) -> Option<u64> {
        use std::os::fd::AsRawFd;
        // SAFETY: lseek on an fd we own; it only moves the file offset.
        let at = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
        u64::try_from(at).ok()
    }

    #[test]
    fn test_dump_and_map_back_round_trip_leaving_zero_pages_as_holes() {
        const SIZE: u64 = 4 << 20;
        let mem = create_guest_memory(SIZE).unwrap();
        let pattern: Vec<u8> = (0..=255u8).cycle().take(PAGE_SIZE * 2).collect();
        mem.write_slice(&pattern, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0xfeed_f00d_u32, GuestAddress(SIZE - 4))
            .unwrap();
        let mut file = TempFile::new("round-trip");
        // An older snapshot's bytes where the new one has zero pages.
        file.1.write_all_at(&vec![0xee; SIZE as usize], 0).unwrap();

        dump_guest_memory(&mem, &mut file.1).unwrap();

        let meta = file.1.metadata().unwrap();
        assert_eq!(meta.len(), SIZE);
        // Three pages of data; the rest (the first page among them) holes.
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 <= 16 * PAGE_SIZE as u64,
            "{} blocks",
            meta.blocks()
        );
        assert_eq!(next_data(&file.1, 0), Some(0x1000));
        assert_eq!(next_data(&file.1, 0x3000), Some(SIZE - PAGE_SIZE as u64));

        let restored = guest_memory_from_file(SIZE, &file.1).unwrap();
        assert_eq!(restored.num_regions(), 1);
        let mut read = vec![0u8; pattern.len()];
        restored
            .read_slice(&mut read, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(read, pattern);
        let read_u32 = |addr| restored.read_obj::<u32>(GuestAddress(addr)).unwrap();
        assert_eq!(read_u32(SIZE - 4), 0xfeed_f00d);
        assert_eq!(read_u32(0), 0);
        assert_eq!(read_u32(0x10_0000), 0);
    }

    #[test]
    fn test_a_file_of_another_length_is_refused() {
        let file = TempFile::new("short");
        file.1.set_len((4 << 20) - 4096).unwrap();
        let err = guest_memory_from_file(4 << 20, &file.1).unwrap_err();
        assert!(
            matches!(
                err,
                MemoryError::FileLength {
                    actual: 4_190_208,
                    expected: 4_194_304
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "The guest memory file holds 4190208 bytes, the VM's RAM is 4194304"
        );
        file.1.set_len((4 << 20) + 1).unwrap();
        assert!(guest_memory_from_file(4 << 20, &file.1).is_err());
    }

    #[test]
    fn test_guest_writes_stay_private_to_the_mapping() {
        const SIZE: u64 = 2 << 20;
        let file = TempFile::new("private");
        file.1.write_all_at(&[0x11; PAGE_SIZE], 0).unwrap();
        file.1.set_len(SIZE).unwrap();
        let first = guest_memory_from_file(SIZE, &file.1).unwrap();
        let second = guest_memory_from_file(SIZE, &file.1).unwrap();

        first.write_obj(0x22u8, GuestAddress(0)).unwrap();
        first.write_obj(0x33u8, GuestAddress(0x10_0000)).unwrap();

        let mut byte = [0u8; 1];
        file.1.read_exact_at(&mut byte, 0).unwrap();
        assert_eq!(byte, [0x11], "the write reached the file");
        file.1.read_exact_at(&mut byte, 0x10_0000).unwrap();
        assert_eq!(byte, [0]);
        assert_eq!(second.read_obj::<u8>(GuestAddress(0)).unwrap(), 0x11);
        assert_eq!(first.read_obj::<u8>(GuestAddress(0)).unwrap(), 0x22);
    }

    #[test]
    fn test_file_offsets_follow_the_mmio_gap() {
        // Sparse: only the first page above the gap holds data.
        let size = MMIO_GAP_START + (1 << 20);
        let file = TempFile::new("gap");
        file.1.set_len(size).unwrap();
        file.1.write_all_at(&[0x5a], MMIO_GAP_START).unwrap();
        let mem = guest_memory_from_file(size, &file.1).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(MMIO_GAP_END)).unwrap(),
            0x5a
        );
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(MMIO_GAP_START - 1))
                .unwrap(),
            0
        );
    }
}
