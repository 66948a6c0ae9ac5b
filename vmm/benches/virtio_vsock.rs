// SPDX-License-Identifier: Apache-2.0
//! VMM CPU cost of moving 64 KiB from the guest to a host Unix socket
//! through virtio-vsock, in process: the device parses the packet from
//! guest memory and writes it to the connection's stream, and the host
//! side reads it (no guest, no exits); also under the device thread's
//! seccomp filter (`.../seccomp`).
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vmm::devices::virtio::test_utils::{guest_memory, queue_set, readable, DriverQueue};
use vmm::devices::virtio::vsock::{Header, Vsock};
use vmm::devices::virtio::VirtioDevice;
use vmm::vstate::memory::{Bytes, GuestAddress, GuestMemoryMmap};

const TX_BUF: u64 = 0x10_0000;
const PAYLOAD: u32 = 64 * 1024;
const GUEST_PORT: u32 = 40000;
const HOST_PORT: u32 = 5000;

/// Posts one packet (header and payload in one buffer) on the tx ring.
fn post(mem: &GuestMemoryMmap, tx: &mut DriverQueue, op: u16, len: u32) {
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
    tx.post(mem, &[readable(TX_BUF, Header::LEN as u32 + len)]);
}

/// The device, its tx driver and the host end of the connection.
struct Connection {
    mem: GuestMemoryMmap,
    tx: DriverQueue,
    vsock: Vsock,
    stream: UnixStream,
    sink: Vec<u8>,
}

fn transfer(c: &mut Connection) {
    post(&c.mem, &mut c.tx, 5, PAYLOAD);
    c.vsock.process_tx();
    // The host side takes the 64 KiB before the next packet, as a guest
    // waiting for credit would let it.
    c.stream.read_exact(&mut c.sink).unwrap();
}

fn bench_transfer(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("vmpod-bench-vsock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("v.sock");
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", path.display())).unwrap();
    let mem = guest_memory();
    let span = DriverQueue::SPAN;
    let (rx, mut tx, events) = (
        DriverQueue::new(0),
        DriverQueue::new(span),
        DriverQueue::new(2 * span),
    );
    let mut vsock = Vsock::new(3, &path).unwrap();
    let queues = vec![rx.queue(), tx.queue(), events.queue()];
    vsock.activate(queue_set(mem.clone(), queues)).unwrap();
    // The guest connects to host port 5000.
    post(&mem, &mut tx, 1, 0);
    vsock.process_tx();
    let (stream, _) = listener.accept().unwrap();
    let mut connection = Connection {
        mem,
        tx,
        vsock,
        stream,
        sink: vec![0u8; PAYLOAD as usize],
    };

    let mut group = c.benchmark_group("virtio_vsock");
    group.throughput(Throughput::Bytes(u64::from(PAYLOAD)));
    connection =
        common::with_and_without_filter(&mut group, "guest_to_host_64k", connection, transfer);
    group.finish();
    let counters = connection.vsock.counters();
    assert_eq!(counters.resets, 0, "the connection was reset: {counters:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_transfer);
criterion_main!(benches);
