// SPDX-License-Identifier: Apache-2.0
//! VMM CPU cost of moving 64 KiB from the guest to a host Unix socket
//! through virtio-vsock, in process: the device parses the packet from
//! guest memory and writes it to the connection's stream, and the host
//! side reads it (no guest, no exits).
#![allow(clippy::tests_outside_test_module)]

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use virtio_queue::{Queue, QueueT};
use vmm::devices::virtio::vsock::{Header, Vsock};
use vmm::devices::virtio::{QueueSet, VirtioDevice, VirtioInterrupt};
use vmm::vstate::memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const TX_RING: u64 = 0x4000;
const TX_BUF: u64 = 0x10_0000;
const PAYLOAD: u32 = 64 * 1024;
const GUEST_PORT: u32 = 40000;
const HOST_PORT: u32 = 5000;

fn queue(base: u64) -> Queue {
    let mut queue = Queue::new(256).unwrap();
    queue.set_desc_table_address(Some(base as u32), Some(0));
    queue.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    queue.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    queue.set_ready(true);
    queue
}

/// Posts one packet (header and payload in one buffer) on the tx ring.
fn post(mem: &GuestMemoryMmap, op: u16, len: u32) {
    let header = Header {
        src_cid: 3,
        dst_cid: 2,
        src_port: GUEST_PORT,
        dst_port: HOST_PORT,
        len,
        kind: 1,
        op,
        flags: 0,
        buf_alloc: 256 * 1024,
        fwd_cnt: 0,
    };
    mem.write_slice(&header.to_bytes(), GuestAddress(TX_BUF))
        .unwrap();
    mem.write_obj(TX_BUF, GuestAddress(TX_RING)).unwrap();
    mem.write_obj(Header::LEN as u32 + len, GuestAddress(TX_RING + 8))
        .unwrap();
    mem.write_obj(0u16, GuestAddress(TX_RING + 12)).unwrap();
    let idx: u16 = mem.read_obj(GuestAddress(TX_RING + 0x1002)).unwrap();
    mem.write_obj(
        0u16,
        GuestAddress(TX_RING + 0x1004 + 2 * u64::from(idx % 256)),
    )
    .unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(TX_RING + 0x1002))
        .unwrap();
}

fn bench_transfer(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("vmpod-bench-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", path.display())).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
    let mut vsock = Vsock::new(3, &path).unwrap();
    vsock
        .activate(QueueSet {
            mem: mem.clone(),
            queues: vec![queue(0), queue(TX_RING), queue(0x8000)],
            acked_features: 0,
            interrupt: Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap())),
        })
        .unwrap();
    // The guest connects to host port 5000.
    post(&mem, 1, 0);
    vsock.process_tx();
    let (mut stream, _) = listener.accept().unwrap();
    let mut sink = vec![0u8; PAYLOAD as usize];

    let mut group = c.benchmark_group("virtio_vsock");
    group.throughput(Throughput::Bytes(u64::from(PAYLOAD)));
    group.bench_function("guest_to_host_64k", |b| {
        b.iter(|| {
            post(&mem, 5, PAYLOAD);
            vsock.process_tx();
            // The host side takes the 64 KiB before the next packet, as a
            // guest waiting for credit would let it.
            stream.read_exact(&mut sink).unwrap();
        });
    });
    group.finish();
    let counters = vsock.counters();
    assert_eq!(counters.resets, 0, "the connection was reset: {counters:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_transfer);
criterion_main!(benches);
