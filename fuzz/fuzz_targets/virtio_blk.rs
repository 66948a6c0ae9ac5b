// SPDX-License-Identifier: Apache-2.0
//! virtio-blk request parsing and execution on a queue the fuzzer fills,
//! against a small image file (writes land in a scratch copy).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::block::Block;
use vmm::devices::virtio::VirtioDevice;
use vmpod_fuzz::{guest_with_queue, queue_set};

/// A 64 KiB scratch image shared by all runs.
fn image() -> &'static std::path::Path {
    static IMAGE: OnceLock<std::path::PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("vmpod-fuzz-blk-{}.img", std::process::id()));
        std::fs::write(&path, vec![0x5a; 64 * 1024]).expect("scratch image");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    let (mem, queue) = guest_with_queue(data);
    let readonly = data.first().is_some_and(|b| b & 0x80 != 0);
    let mut disk = Block::new(image(), readonly).expect("scratch image opens");
    // Activation serves whatever is already queued.
    let _ = disk.activate(queue_set(mem, vec![queue]));
    disk.process_queue();
});
