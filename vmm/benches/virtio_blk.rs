// SPDX-License-Identifier: Apache-2.0
//! VMM CPU cost of a virtio-blk request, in process: a 4 KiB read and a
//! 4 KiB write through the device's queue processing against guest
//! memory and an image file in the page cache (no guest, no exits), so
//! the figure is what the device itself costs per request.
#![allow(clippy::tests_outside_test_module)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::{QueueSet, VirtioDevice, VirtioInterrupt};
use vmm::vstate::memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const IMAGE_SECTORS: u64 = 64 * 2048;
const HEADER: u64 = 0x10_0000;
const STATUS: u64 = 0x10_0100;
const DATA: u64 = 0x20_0000;

fn request(write: bool) -> [RawDescriptor; 3] {
    let next = VRING_DESC_F_NEXT as u16;
    let dev_writes = VRING_DESC_F_WRITE as u16;
    let data_flags = if write { next } else { next | dev_writes };
    [
        Descriptor::new(HEADER, 16, next, 1).into(),
        Descriptor::new(DATA, 4096, data_flags, 2).into(),
        Descriptor::new(STATUS, 1, dev_writes, 0).into(),
    ]
}

fn bench_requests(c: &mut Criterion) {
    let image = std::env::temp_dir().join(format!("vmpod-bench-{}.img", std::process::id()));
    std::fs::write(&image, vec![0x5au8; (IMAGE_SECTORS * 512) as usize]).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    // Rings placed by hand: MockSplitQueue's layout overlaps the used ring
    // with the available ring at this queue size.
    let mock = MockSplitQueue::new(&mem, 256);
    let avail = GuestAddress(0x1000);
    let mut queue = Queue::new(256).unwrap();
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(0x1000), Some(0));
    queue.set_used_ring_address(Some(0x2000), Some(0));
    queue.set_ready(true);
    let mut disk = Block::new(&image, false).unwrap();
    disk.activate(QueueSet {
        mem: mem.clone(),
        queues: vec![queue],
        acked_features: 0,
        interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
    })
    .unwrap();

    let mut group = c.benchmark_group("virtio_blk");
    group.throughput(Throughput::Bytes(4096));
    for (name, write, kind) in [
        ("read_4k", false, VIRTIO_BLK_T_IN),
        ("write_4k", true, VIRTIO_BLK_T_OUT),
    ] {
        for (index, desc) in request(write).into_iter().enumerate() {
            mock.desc_table().store(index as u16, desc).unwrap();
        }
        let mut sector = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
                mem.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
                sector = (sector + 8) % (IMAGE_SECTORS - 8);
                // Post chain 0 as the driver does: ring slot, then index.
                let idx: u16 = mem.read_obj(GuestAddress(avail.0 + 2)).unwrap();
                let slot = GuestAddress(avail.0 + 4 + 2 * u64::from(idx % 256));
                mem.write_obj(0u16, slot).unwrap();
                mem.write_obj(idx.wrapping_add(1), GuestAddress(avail.0 + 2))
                    .unwrap();
                disk.process_queue();
            });
        });
        assert_eq!(disk.counters().io_errors, 0);
    }
    group.finish();
    let _ = std::fs::remove_file(&image);
}

criterion_group!(benches, bench_requests);
criterion_main!(benches);
