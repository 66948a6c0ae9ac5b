// SPDX-License-Identifier: Apache-2.0
//! Test helpers: guest memory and a driver-side split queue
//! (`virtio_queue::mock::MockSplitQueue`) that submits one descriptor
//! chain to a device and reads back what the device completed.

use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{QueueSet, VirtioDevice, VirtioInterrupt};
use crate::vstate::memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

/// Guest memory for device tests: 16 MiB from 0.
pub const MEM_SIZE: usize = 16 << 20;
/// Where tests put their buffers: above the rings.
pub const DATA: u64 = 0x10_0000;
/// Queue size of the mock queues.
pub const QUEUE_SIZE: u16 = 256;

/// Fresh guest memory.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One descriptor: `write` means device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable.
    pub write: bool,
}

/// A device-readable buffer.
pub fn readable(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: false,
    }
}

/// A device-writable buffer.
pub fn writable(addr: u64, len: u32) -> Buf {
    Buf {
        addr,
        len,
        write: true,
    }
}

/// The descriptors of one chain, linked in order.
pub fn chain(bufs: &[Buf]) -> Vec<RawDescriptor> {
    bufs.iter()
        .enumerate()
        .map(|(i, buf)| {
            let mut flags = if buf.write {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            let next = if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
                i as u16 + 1
            } else {
                0
            };
            RawDescriptor::from(SplitDescriptor::new(buf.addr, buf.len, flags, next))
        })
        .collect()
}

/// Activates `device` on a fresh first queue holding `descs` (raw, as
/// given), which makes it serve them; returns the used length of the first used
/// entry, or `None` if the device completed nothing.
pub fn submit_raw(
    device: &mut dyn VirtioDevice,
    mem: &GuestMemoryMmap,
    descs: &[RawDescriptor],
) -> Option<u32> {
    // Fresh rings: the previous test's indexes must not leak in.
    mem.write_slice(&vec![0u8; 0x4000], GuestAddress(0))
        .unwrap();
    // The mock lays the used ring over the upper half of the available
    // ring at this size; harmless here, where each queue serves one batch
    // of chains from the low slots, but no ring for long runs.
    let mock = MockSplitQueue::new(mem, QUEUE_SIZE);
    mock.add_desc_chains(descs, 0).unwrap();
    let mut queues: Vec<Queue> = vec![mock.create_queue().unwrap()];
    // A device with more queues gets empty rings for the others.
    for index in 1..device.queue_max_sizes().len() {
        let base = GuestAddress(0x8000 * index as u64);
        mem.write_slice(&vec![0u8; 0x4000], base).unwrap();
        queues.push(
            MockSplitQueue::create(mem, base, QUEUE_SIZE)
                .create_queue()
                .unwrap(),
        );
    }
    device.reset();
    device.activate(queue_set(mem.clone(), queues)).unwrap();
    let used_idx: u16 = mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap();
    (used_idx > 0).then(|| {
        mem.read_obj::<u32>(mock.used_addr().unchecked_add(8))
            .unwrap()
    })
}

/// [`submit_raw`] of one chain of `bufs`.
pub fn submit(device: &mut dyn VirtioDevice, mem: &GuestMemoryMmap, bufs: &[Buf]) -> Option<u32> {
    submit_raw(device, mem, &chain(bufs))
}

/// What `activate` needs around `queues`, with a fresh interrupt.
pub fn queue_set(mem: GuestMemoryMmap, queues: Vec<Queue>) -> QueueSet {
    QueueSet {
        mem,
        queues,
        acked_features: 0,
        interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
    }
}
