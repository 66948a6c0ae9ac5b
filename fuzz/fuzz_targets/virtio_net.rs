// SPDX-License-Identifier: Apache-2.0
//! virtio-net transmit and receive on queues the fuzzer fills, with a
//! socket pair standing in for the tap.
#![no_main]

use std::os::fd::AsRawFd;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::net::Net;
use vmm::devices::virtio::VirtioDevice;
use vmpod_fuzz::{guest_with_queue, queue_set, PairBackend};

fuzz_target!(|data: &[u8]| {
    let (ours, host) = PairBackend::pair();
    let Ok(mut net) = Net::with_backend(Box::new(ours), None) else {
        return;
    };
    // The same fuzzed ring serves as receive and transmit queue: every
    // chain is parsed both ways.
    let (mem, rx) = guest_with_queue(data);
    let (_, tx) = guest_with_queue(data);
    // A frame waiting on the host side, for the receive path.
    let frame = [0u8; 64];
    // SAFETY: the pointer and length describe the live `frame`.
    unsafe { libc::send(host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    let _ = net.activate(queue_set(mem, vec![rx, tx]));
    net.process_tx();
    net.process_rx();
});
