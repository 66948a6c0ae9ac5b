// SPDX-License-Identifier: Apache-2.0
//! VMM CPU cost of a virtio-blk request, in process: a 4 KiB read and a
//! 4 KiB write through the device's queue processing against guest
//! memory and an image file in the page cache (no guest, no exits), so
//! the figure is what the device itself costs per request; each figure
//! also under the device thread's seccomp filter (`.../seccomp`).
#![allow(clippy::tests_outside_test_module)]

mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::test_utils::{
    guest_memory, queue_set, readable, writable, Buf, DriverQueue,
};
use vmm::devices::virtio::VirtioDevice;
use vmm::vstate::memory::{Bytes, GuestAddress, GuestMemoryMmap};

const IMAGE_SECTORS: u64 = 64 * 2048;
const HEADER: u64 = 0x10_0000;
const STATUS: u64 = 0x10_0100;
const DATA: u64 = 0x20_0000;

fn request(write: bool) -> [Buf; 3] {
    let data = if write {
        readable(DATA, 4096)
    } else {
        writable(DATA, 4096)
    };
    [readable(HEADER, 16), data, writable(STATUS, 1)]
}

/// What one request needs: the disk, its driver and the next request.
struct Disk {
    mem: GuestMemoryMmap,
    driver: DriverQueue,
    disk: Block,
    head: u16,
    kind: u32,
    sector: u64,
}

fn one_request(d: &mut Disk) {
    d.mem.write_obj(d.kind, GuestAddress(HEADER)).unwrap();
    d.mem.write_obj(d.sector, GuestAddress(HEADER + 8)).unwrap();
    d.sector = (d.sector + 8) % (IMAGE_SECTORS - 8);
    d.driver.make_available(&d.mem, d.head);
    d.disk.process_queue();
}

fn bench_requests(c: &mut Criterion) {
    let image = std::env::temp_dir().join(format!("vmpod-bench-{}.img", std::process::id()));
    std::fs::write(&image, vec![0x5au8; (IMAGE_SECTORS * 512) as usize]).unwrap();
    let mem = guest_memory();
    let driver = DriverQueue::new(0);
    let mut disk = Block::new(&image, false).unwrap();
    disk.activate(queue_set(mem.clone(), vec![driver.queue()]))
        .unwrap();
    let mut state = Disk {
        mem,
        driver,
        disk,
        head: 0,
        kind: 0,
        sector: 0,
    };

    let mut group = c.benchmark_group("virtio_blk");
    group.throughput(Throughput::Bytes(4096));
    for (name, write, kind) in [
        ("read_4k", false, VIRTIO_BLK_T_IN),
        ("write_4k", true, VIRTIO_BLK_T_OUT),
    ] {
        state.head = state.driver.add_chain(&state.mem, &request(write));
        state.kind = kind;
        state.sector = 0;
        state = common::with_and_without_filter(&mut group, name, state, one_request);
        assert_eq!(state.disk.counters().io_errors, 0);
    }
    group.finish();
    let _ = std::fs::remove_file(&image);
}

criterion_group!(benches, bench_requests);
criterion_main!(benches);
