// SPDX-License-Identifier: Apache-2.0
//! virtio-rng request handling on a queue the fuzzer fills.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::rng::Entropy;
use vmm::devices::virtio::VirtioDevice;
use vmpod_fuzz::{guest_with_queue, queue_set};

fuzz_target!(|data: &[u8]| {
    let (mem, queue) = guest_with_queue(data);
    let mut rng = Entropy::new().expect("entropy device");
    // Activation serves whatever is already queued.
    let _ = rng.activate(queue_set(mem, vec![queue]));
    rng.process_queue();
});
