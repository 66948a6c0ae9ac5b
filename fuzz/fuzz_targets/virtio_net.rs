// SPDX-License-Identifier: Apache-2.0
//! virtio-net transmit and receive on queues the fuzzer fills, with a
//! socket pair standing in for the tap.
#![no_main]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::net::{Net, NetBackend};
use vmm::devices::virtio::VirtioDevice;
use vmpod_fuzz::{guest_with_queue, queue_set};

/// One end of a datagram socket pair.
#[derive(Debug)]
struct PairBackend(OwnedFd);

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

fuzz_target!(|data: &[u8]| {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two descriptors into `fds`.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) } != 0 {
        return;
    }
    // SAFETY: both descriptors are fresh and owned here.
    let (ours, host) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let Ok(mut net) = Net::with_backend(Box::new(PairBackend(ours)), None) else {
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
    let _ = net.activate(queue_set(mem, vec![rx, tx], 0));
    net.process_tx();
    net.process_rx();
});
