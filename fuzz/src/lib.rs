// SPDX-License-Identifier: Apache-2.0
//! Shared set-up for the fuzz targets: guest memory holding one split
//! queue whose descriptors, available ring and buffer contents all come
//! from the fuzzer's input, as a hostile guest driver would write them.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm::devices::virtio::{QueueSet, VirtioInterrupt};
use vmm::vstate::memory::{create_guest_memory, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest memory size: small, so that out-of-range addresses are common.
pub const MEM_SIZE: u64 = 1 << 20;
/// Queue size used by every target.
pub const QUEUE_SIZE: u16 = 256;
/// Where the rings and buffers live in guest memory.
pub const DESC_TABLE: u64 = 0x0;
/// The available ring.
pub const AVAIL_RING: u64 = 0x1000;
/// The used ring.
pub const USED_RING: u64 = 0x2000;
/// Start of the area buffer contents are copied to.
pub const DATA_AREA: u64 = 0x4000;
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
    let n_desc = take(&mut data, 1).map_or(0, |b| usize::from(b[0]) % MAX_ENTRIES);
    for i in 0..n_desc {
        let Some(raw) = take(&mut data, 16) else {
            break;
        };
        let addr = GuestAddress(DESC_TABLE + 16 * i as u64);
        mem.write_slice(raw, addr)
            .expect("descriptor table is in memory");
    }
    if let Some(idx) = take(&mut data, 2) {
        mem.write_slice(idx, GuestAddress(AVAIL_RING + 2))
            .expect("available ring is in memory");
    }
    let n_avail = take(&mut data, 1).map_or(0, |b| usize::from(b[0]) % MAX_ENTRIES);
    for i in 0..n_avail {
        let Some(head) = take(&mut data, 2) else {
            break;
        };
        mem.write_slice(head, GuestAddress(AVAIL_RING + 4 + 2 * i as u64))
            .expect("available ring is in memory");
    }
    let len = data.len().min((MEM_SIZE - DATA_AREA) as usize);
    mem.write_slice(&data[..len], GuestAddress(DATA_AREA))
        .expect("data area is in memory");

    let mut queue = Queue::new(QUEUE_SIZE).expect("valid queue size");
    queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
    queue.set_ready(true);
    (mem, queue)
}

/// What a device's `activate` needs, around `queues`.
pub fn queue_set(mem: GuestMemoryMmap, queues: Vec<Queue>, acked_features: u64) -> QueueSet {
    QueueSet {
        mem,
        queues,
        acked_features,
        interrupt: Arc::new(VirtioInterrupt::new(
            EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        )),
    }
}
