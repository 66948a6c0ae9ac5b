// SPDX-License-Identifier: Apache-2.0
//! virtio-vsock: guest packets from a transmit queue the fuzzer fills (the
//! same fuzzed ring also serves as the receive queue for the replies).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::vsock::Vsock;
use vmm::devices::virtio::VirtioDevice;
use vmpod_fuzz::{guest_with_queue, queue_set};

/// A scratch directory for the device's Unix socket.
fn socket_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vmpod-fuzz-vsock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut vsock) = Vsock::new(3, &socket_dir().join("v.sock")) else {
        return;
    };
    let (mem, rx) = guest_with_queue(data);
    let (_, tx) = guest_with_queue(data);
    let (_, events) = guest_with_queue(&[]);
    let _ = vsock.activate(queue_set(mem, vec![rx, tx, events]));
    vsock.process_tx();
    vsock.process_rx();
});
