// SPDX-License-Identifier: Apache-2.0
//! virtio-fs: FUSE requests the fuzzer writes, on a queue it fills, served
//! over a scratch shared directory.
//!
//! Writable shares let fuzzed requests create, write and fallocate files,
//! so they are fuzzed only when `VMPOD_FUZZ_FS_DIR` names a directory on a
//! small tmpfs (see fuzz/README.md); otherwise the share is read-only.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmm::devices::virtio::fs::Fs;
use vmm::devices::virtio::VirtioDevice;
use vmpod_fuzz::{guest_with_queue, queue_set};

/// A scratch directory with a file and a symlink, shared by all runs, and
/// whether it may be written.
fn share() -> &'static (std::path::PathBuf, bool) {
    static SHARE: OnceLock<(std::path::PathBuf, bool)> = OnceLock::new();
    SHARE.get_or_init(|| {
        let (dir, writable) = match std::env::var_os("VMPOD_FUZZ_FS_DIR") {
            Some(dir) => (std::path::PathBuf::from(dir), true),
            None => (
                std::env::temp_dir().join(format!("vmpod-fuzz-fs-{}", std::process::id())),
                false,
            ),
        };
        std::fs::create_dir_all(dir.join("sub")).expect("scratch dir");
        std::fs::write(dir.join("file"), b"contents").expect("scratch file");
        let _ = std::os::unix::fs::symlink("/etc/passwd", dir.join("link"));
        (dir, writable)
    })
}

fuzz_target!(|data: &[u8]| {
    let (mem, hiprio) = guest_with_queue(data);
    let (_, requests) = guest_with_queue(&[]);
    let (dir, writable) = share();
    let readonly = !writable || data.first().is_some_and(|b| b & 0x80 != 0);
    let Ok(mut fs) = Fs::new("fuzz", dir, readonly) else {
        return;
    };
    // Activation serves whatever is queued (on the hiprio queue here).
    let _ = fs.activate(queue_set(mem, vec![hiprio, requests]));
});
