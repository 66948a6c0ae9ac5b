// SPDX-License-Identifier: Apache-2.0
//! Shared set-up for the fuzz targets: guest memory holding one split
//! queue whose descriptors, available ring and buffer contents all come
//! from the fuzzer's input, as a hostile guest driver would write them.
//! The rings are those of the VMM's own test driver
//! ([`vmm::devices::virtio::test_utils::DriverQueue`]), filled raw.

use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress};
use vmm::devices::virtio::test_utils::DriverQueue;
use vmm::vstate::memory::{create_guest_memory, GuestMemoryMmap};

pub use vmm::devices::virtio::test_utils::{queue_set, PairBackend};

/// Guest memory size: small, so that out-of-range addresses are common.
pub const MEM_SIZE: u64 = 1 << 20;
/// Start of the area buffer contents are copied to: past the rings.
pub const DATA_AREA: u64 = DriverQueue::SPAN;
/// Most descriptors and available entries taken from one input.
const MAX_ENTRIES: usize = 32;

/// Cuts `n` bytes off the front of `data`.
fn take<'a>(data: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let (head, rest) = (data.get(..n)?, data.get(n..)?);
    *data = rest;
    Some(head)
}

/// Guest memory and one ready queue built from `data`:
/// `[n_desc: u8][n_desc × 16-byte raw descriptor][avail_idx: u16]`
/// `[n_avail: u8][n_avail × u16 head index][rest: buffer contents]`.
/// Whatever is missing stays zero.
pub fn guest_with_queue(mut data: &[u8]) -> (GuestMemoryMmap, Queue) {
    let mem = create_guest_memory(MEM_SIZE).expect("1 MiB of guest memory");
    let driver = DriverQueue::new(0);
    let n_desc = take(&mut data, 1).map_or(0, |b| usize::from(b[0]) % MAX_ENTRIES);
    for i in 0..n_desc {
        let Some(raw) = take(&mut data, 16) else {
            break;
        };
        let addr = driver.desc_table().unchecked_add(16 * i as u64);
        mem.write_slice(raw, addr)
            .expect("descriptor table is in memory");
    }
    if let Some(idx) = take(&mut data, 2) {
        mem.write_slice(idx, driver.avail_ring().unchecked_add(2))
            .expect("available ring is in memory");
    }
    let n_avail = take(&mut data, 1).map_or(0, |b| usize::from(b[0]) % MAX_ENTRIES);
    for i in 0..n_avail {
        let Some(head) = take(&mut data, 2) else {
            break;
        };
        let slot = driver.avail_ring().unchecked_add(4 + 2 * i as u64);
        mem.write_slice(head, slot)
            .expect("available ring is in memory");
    }
    let len = data.len().min((MEM_SIZE - DATA_AREA) as usize);
    mem.write_slice(&data[..len], GuestAddress(DATA_AREA))
        .expect("data area is in memory");
    (mem, driver.queue())
}
