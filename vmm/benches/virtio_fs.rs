// SPDX-License-Identifier: Apache-2.0
//! VMM CPU cost of virtio-fs requests, in process: a FUSE LOOKUP and a
//! 4 KiB READ through the device's queue processing and the passthrough
//! server, against a file in the page cache (no guest, no exits); each
//! also under the device thread's seccomp filter (`.../seccomp`).
#![allow(clippy::tests_outside_test_module)]

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmm::devices::virtio::fs::Fs;
use vmm::devices::virtio::test_utils::{guest_memory, queue_set, readable, writable, DriverQueue};
use vmm::devices::virtio::VirtioDevice;
use vmm::vstate::memory::{Bytes, GuestAddress, GuestMemoryMmap};

const REQUEST: u64 = 0x10_0000;
const REPLY: u64 = 0x20_0000;
const FUSE_LOOKUP: u32 = 1;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_INIT: u32 = 26;

/// The hiprio queue's driver, which always posts the same two-descriptor
/// chain: request, reply.
struct Driver {
    mem: GuestMemoryMmap,
    queue: DriverQueue,
}

impl Driver {
    /// Writes the request (header + body) and posts the chain.
    fn post(&mut self, opcode: u32, nodeid: u64, body: &[u8]) {
        let len = 40 + body.len() as u32;
        let mut msg = Vec::with_capacity(len as usize);
        msg.extend_from_slice(&len.to_le_bytes());
        msg.extend_from_slice(&opcode.to_le_bytes());
        msg.extend_from_slice(&1u64.to_le_bytes());
        msg.extend_from_slice(&nodeid.to_le_bytes());
        msg.extend_from_slice(&[0u8; 16]);
        msg.extend_from_slice(body);
        self.mem.write_slice(&msg, GuestAddress(REQUEST)).unwrap();
        let chain = [readable(REQUEST, len), writable(REPLY, 0x2_0000)];
        self.queue.post(&self.mem, &chain);
    }

    fn reply_error(&self) -> i32 {
        self.mem.read_obj(GuestAddress(REPLY + 4)).unwrap()
    }
}

/// The share, its driver and the open file READs go to.
struct Share {
    driver: Driver,
    fs: Fs,
    nodeid: u64,
    fh: u64,
    offset: u64,
}

fn lookup(s: &mut Share) {
    s.driver.post(FUSE_LOOKUP, 1, b"file\0");
    s.fs.process_queue(0);
}

fn read_4k(s: &mut Share) {
    let mut read = Vec::with_capacity(40);
    read.extend_from_slice(&s.fh.to_le_bytes());
    read.extend_from_slice(&s.offset.to_le_bytes());
    read.extend_from_slice(&4096u32.to_le_bytes());
    read.extend_from_slice(&[0u8; 20]);
    s.offset = (s.offset + 4096) % (1 << 20);
    s.driver.post(FUSE_READ, s.nodeid, &read);
    s.fs.process_queue(0);
}

fn bench_requests(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("vmpod-bench-fs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("file"), vec![0x5au8; 1 << 20]).unwrap();
    let mut driver = Driver {
        mem: guest_memory(),
        queue: DriverQueue::new(0),
    };
    let mut fs = Fs::new("bench", &dir, false).unwrap();
    // hiprio carries the requests; the request queue stays empty.
    let idle = DriverQueue::new(2 * DriverQueue::SPAN);
    let queues = vec![driver.queue.queue(), idle.queue()];
    fs.activate(queue_set(driver.mem.clone(), queues)).unwrap();

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

    let mut share = Share {
        driver,
        fs,
        nodeid,
        fh,
        offset: 0,
    };
    let mut group = c.benchmark_group("virtio_fs");
    share = common::with_and_without_filter(&mut group, "lookup", share, lookup);
    assert_eq!(share.driver.reply_error(), 0);
    group.throughput(Throughput::Bytes(4096));
    share = common::with_and_without_filter(&mut group, "read_4k", share, read_4k);
    assert_eq!(share.driver.reply_error(), 0);
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_requests);
criterion_main!(benches);
