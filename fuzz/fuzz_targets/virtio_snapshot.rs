// SPDX-License-Identifier: Apache-2.0
//! A snapshot's virtio device state from a corrupt or hostile file:
//! arbitrary bytes as the JSON of a `VirtioDeviceState`, restored onto a
//! virtio-rng behind a fresh transport. A refused state must be an error,
//! never a panic; an accepted one must leave a transport whose registers
//! and queue the device can then serve.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vmm::devices::bus::BusDevice;
use vmm::devices::virtio::rng::Entropy;
use vmm::devices::virtio::transport::MmioTransport;
use vmm::devices::virtio::{VirtioDeviceState, VirtioInterrupt};
use vmm::vstate::memory::create_guest_memory;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fuzz_target!(|data: &[u8]| {
    let Ok(state) = serde_json::from_slice::<VirtioDeviceState>(data) else {
        return;
    };
    let mem = create_guest_memory(1 << 20).expect("guest memory");
    let device = Arc::new(Mutex::new(Entropy::new().expect("entropy device")));
    let interrupt = Arc::new(VirtioInterrupt::new(
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ));
    let Ok(mut transport) = MmioTransport::restore(device.clone(), mem, interrupt, &state) else {
        return;
    };
    device
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .process_queue();
    let mut register = [0u8; 4];
    for offset in (0..0x100).step_by(4) {
        transport.read(offset, &mut register);
    }
    let saved = transport.save_state().expect("a restored virtio-rng saves again");
    assert_eq!(saved.device_type, state.device_type);
});
