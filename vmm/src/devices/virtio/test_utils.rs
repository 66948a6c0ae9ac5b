// SPDX-License-Identifier: Apache-2.0
//! Test helpers for the unit tests, the benchmarks and the fuzz targets
//! (the `test-utils` feature): guest memory, the driver side of a split
//! queue ([`DriverQueue`], or `virtio_queue::mock::MockSplitQueue` for one
//! chain at a time with [`submit`]), and a socket pair standing in for a
//! tap ([`PairBackend`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{QueueSet, VirtioDevice, VirtioInterrupt};
use super::net::NetBackend;
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

/// The driver side of one split queue of [`QUEUE_SIZE`] at `base`:
/// descriptor table there, available ring at +0x1000, used ring at
/// +0x2000 (0x4000 bytes in all). It posts chains as a driver does and
/// reads back what the device completed.
#[derive(Debug, Clone)]
pub struct DriverQueue {
    base: u64,
    next_desc: u16,
    next_avail: u16,
    last_used: u16,
}

impl DriverQueue {
    /// Bytes the rings of one queue take from `base`.
    pub const SPAN: u64 = 0x4000;

    /// A driver queue on rings at `base`; the rings must be zero.
    pub fn new(base: u64) -> Self {
        DriverQueue {
            base,
            next_desc: 0,
            next_avail: 0,
            last_used: 0,
        }
    }

    /// The descriptor table.
    pub fn desc_table(&self) -> GuestAddress {
        GuestAddress(self.base)
    }

    /// The available ring.
    pub fn avail_ring(&self) -> GuestAddress {
        GuestAddress(self.base + 0x1000)
    }

    /// The used ring.
    pub fn used_ring(&self) -> GuestAddress {
        GuestAddress(self.base + 0x2000)
    }

    /// The device side: a ready queue on these rings.
    pub fn queue(&self) -> Queue {
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        let low = |addr: GuestAddress| Some(addr.0 as u32);
        let high = |addr: GuestAddress| Some((addr.0 >> 32) as u32);
        queue.set_desc_table_address(low(self.desc_table()), high(self.desc_table()));
        queue.set_avail_ring_address(low(self.avail_ring()), high(self.avail_ring()));
        queue.set_used_ring_address(low(self.used_ring()), high(self.used_ring()));
        queue.set_ready(true);
        queue
    }

    /// Writes the descriptors of one chain of `bufs` into the next free
    /// table slots (wrapping round); returns its head, not yet posted.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, desc) in chain(bufs).into_iter().enumerate() {
            let slot = (head + i as u16) % QUEUE_SIZE;
            let next = (slot + 1) % QUEUE_SIZE;
            let desc = SplitDescriptor::from(desc);
            let linked = SplitDescriptor::new(desc.addr().0, desc.len(), desc.flags(), next);
            let at = self.desc_table().unchecked_add(16 * u64::from(slot));
            mem.write_obj(linked, at).unwrap();
        }
        self.next_desc = (head + bufs.len() as u16) % QUEUE_SIZE;
        head
    }

    /// Makes the chain at `head` available to the device.
    pub fn make_available(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.next_avail % QUEUE_SIZE);
        mem.write_obj(head, self.avail_ring().unchecked_add(4 + 2 * slot))
            .unwrap();
        self.next_avail = self.next_avail.wrapping_add(1);
        mem.write_obj(self.next_avail, self.avail_ring().unchecked_add(2))
            .unwrap();
    }

    /// [`DriverQueue::add_chain`] and [`DriverQueue::make_available`].
    pub fn post(&mut self, mem: &GuestMemoryMmap, bufs: &[Buf]) -> u16 {
        let head = self.add_chain(mem, bufs);
        self.make_available(mem, head);
        head
    }

    /// Used entries since the last call: (head, length).
    pub fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(self.used_ring().unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != idx {
            let slot = u64::from(self.last_used % QUEUE_SIZE);
            let entry = self.used_ring().unchecked_add(4 + 8 * slot);
            out.push((
                mem.read_obj(entry).unwrap(),
                mem.read_obj(entry.unchecked_add(4)).unwrap(),
            ));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }

    /// The guest address the descriptor at `index` points to.
    pub fn desc_addr(&self, mem: &GuestMemoryMmap, index: u32) -> u64 {
        let slot = u64::from(index % u32::from(QUEUE_SIZE));
        mem.read_obj(self.desc_table().unchecked_add(16 * slot))
            .unwrap()
    }
}

/// One end of a datagram socket pair standing in for a tap; the other end
/// is the host's.
#[derive(Debug)]
pub struct PairBackend(OwnedFd);

impl PairBackend {
    /// The device's end and the host's end.
    pub fn pair() -> (PairBackend, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`.
        let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) };
        assert_eq!(rc, 0, "socketpair: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors are fresh and owned here.
        let (ours, host) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (PairBackend(ours), host)
    }
}

impl AsRawFd for PairBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for PairBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: the pointer and length describe the live `buf`.
        let n = unsafe {
            libc::recv(
                self.0.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n.unsigned_abs())
    }

    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        // SAFETY: the pointer and length describe the live `frame`.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(n.unsigned_abs())
    }
}
