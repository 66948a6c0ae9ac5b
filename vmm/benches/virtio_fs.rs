// SPDX-License-Identifier: Apache-2.0
//! VMM CPU cost of virtio-fs requests, in process: a FUSE LOOKUP and a
//! 4 KiB READ through the device's queue processing and the passthrough
//! server, against a file in the page cache (no guest, no exits).
#![allow(clippy::tests_outside_test_module)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vmm::devices::virtio::fs::Fs;
use vmm::devices::virtio::{QueueSet, VirtioDevice, VirtioInterrupt};
use vmm::vstate::memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const REQUEST: u64 = 0x10_0000;
const REPLY: u64 = 0x20_0000;
const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_INIT: u32 = 26;

/// A queue whose rings sit at 0x0 (descriptors), 0x1000 and 0x2000, and
/// which always carries the same two-descriptor chain: request, reply.
struct Driver {
    mem: GuestMemoryMmap,
}

impl Driver {
    fn queue(&self) -> Queue {
        let mut queue = Queue::new(256).unwrap();
        queue.set_desc_table_address(Some(0), Some(0));
        queue.set_avail_ring_address(Some(0x1000), Some(0));
        queue.set_used_ring_address(Some(0x2000), Some(0));
        queue.set_ready(true);
        queue
    }

    /// Writes the request (header + body) and posts the chain.
    fn post(&self, opcode: u32, nodeid: u64, body: &[u8]) {
        let len = 40 + body.len() as u32;
        let mut msg = Vec::with_capacity(len as usize);
        msg.extend_from_slice(&len.to_le_bytes());
        msg.extend_from_slice(&opcode.to_le_bytes());
        msg.extend_from_slice(&1u64.to_le_bytes());
        msg.extend_from_slice(&nodeid.to_le_bytes());
        msg.extend_from_slice(&[0u8; 16]);
        msg.extend_from_slice(body);
        let mem = &self.mem;
        mem.write_slice(&msg, GuestAddress(REQUEST)).unwrap();
        let descs = [
            (REQUEST, len, VRING_DESC_F_NEXT as u16, 1u16),
            (REPLY, 0x2_0000, VRING_DESC_F_WRITE as u16, 0),
        ];
        for (i, (addr, len, flags, next)) in descs.into_iter().enumerate() {
            let d = 16 * i as u64;
            mem.write_obj(addr, GuestAddress(d)).unwrap();
            mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            mem.write_obj(next, GuestAddress(d + 14)).unwrap();
        }
        let idx: u16 = mem.read_obj(GuestAddress(0x1002)).unwrap();
        mem.write_obj(0u16, GuestAddress(0x1004 + 2 * u64::from(idx % 256)))
            .unwrap();
        mem.write_obj(idx.wrapping_add(1), GuestAddress(0x1002))
            .unwrap();
    }

    fn reply_error(&self) -> i32 {
        self.mem.read_obj(GuestAddress(REPLY + 4)).unwrap()
    }
}

fn bench_requests(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("vmpod-bench-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("file"), vec![0x5au8; 1 << 20]).unwrap();
    let driver = Driver {
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap(),
    };
    let mut fs = Fs::new("bench", &dir, false).unwrap();
    // hiprio carries the requests; the request queue stays empty.
    let mut idle = Queue::new(256).unwrap();
    idle.set_desc_table_address(Some(0x8000), Some(0));
    idle.set_avail_ring_address(Some(0x9000), Some(0));
    idle.set_used_ring_address(Some(0xa000), Some(0));
    idle.set_ready(true);
    fs.activate(QueueSet {
        mem: driver.mem.clone(),
        queues: vec![driver.queue(), idle],
        acked_features: 0,
        interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
    })
    .unwrap();

    let init: Vec<u8> = [7u32, 38, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    driver.post(FUSE_INIT, 0, &init);
    fs.process_queue(0);
    assert_eq!(driver.reply_error(), 0, "FUSE_INIT");
    driver.post(FUSE_LOOKUP, 1, b"file\0");
    fs.process_queue(0);
    assert_eq!(driver.reply_error(), 0, "LOOKUP");
    let nodeid: u64 = driver.mem.read_obj(GuestAddress(REPLY + 16)).unwrap();
    let open: Vec<u8> = [0u32, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
    driver.post(FUSE_OPEN, nodeid, &open);
    fs.process_queue(0);
    assert_eq!(driver.reply_error(), 0, "OPEN");
    let fh: u64 = driver.mem.read_obj(GuestAddress(REPLY + 16)).unwrap();

    let mut group = c.benchmark_group("virtio_fs");
    group.bench_function("lookup", |b| {
        b.iter(|| {
            driver.post(FUSE_LOOKUP, 1, b"file\0");
            fs.process_queue(0);
        });
    });
    assert_eq!(driver.reply_error(), 0);
    group.throughput(Throughput::Bytes(4096));
    let mut offset = 0u64;
    group.bench_function("read_4k", |b| {
        b.iter(|| {
            let mut read = Vec::with_capacity(40);
            read.extend_from_slice(&fh.to_le_bytes());
            read.extend_from_slice(&offset.to_le_bytes());
            read.extend_from_slice(&4096u32.to_le_bytes());
            read.extend_from_slice(&[0u8; 20]);
            offset = (offset + 4096) % (1 << 20);
            driver.post(FUSE_READ, nodeid, &read);
            fs.process_queue(0);
        });
    });
    assert_eq!(driver.reply_error(), 0);
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_requests);
criterion_main!(benches);
