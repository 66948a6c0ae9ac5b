// SPDX-License-Identifier: Apache-2.0
//! The virtio-mmio transport's registers under arbitrary access sequences
//! (with a virtio-rng behind it): out-of-order status, bad queue set-up,
//! odd sizes and offsets.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vmm::devices::bus::BusDevice;
use vmm::devices::virtio::rng::Entropy;
use vmm::devices::virtio::transport::MmioTransport;
use vmm::devices::virtio::VirtioInterrupt;
use vmm::vstate::memory::create_guest_memory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let mem = create_guest_memory(1 << 20).expect("guest memory");
    let device = Arc::new(Mutex::new(Entropy::new().expect("entropy device")));
    let interrupt = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ));
    let mut transport = MmioTransport::new(device.clone(), mem, interrupt);
    // Each access: [kind: u8][offset: u16][value: u32]; kind picks read or
    // write and the access size (1, 2, 4 or 8 bytes).
    for access in data.chunks_exact(7) {
        let kind = access[0];
        let offset = u64::from(u16::from_le_bytes([access[1], access[2]])) % 0x1000;
        let value = [access[3], access[4], access[5], access[6], 0, 0, 0, 0];
        let size = 1usize << (kind & 3);
        if kind & 4 == 0 {
            let mut buf = [0u8; 8];
            transport.read(offset, &mut buf[..size]);
        } else {
            transport.write(offset, &value[..size]);
        }
        if kind & 8 != 0 {
            device
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .process_queue();
        }
    }
});
