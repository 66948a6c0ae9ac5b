// SPDX-License-Identifier: Apache-2.0
//! virtio-fs (virtio 1.2, 5.11) served in process: FUSE requests from the
//! guest go to `fuse-backend-rs`'s passthrough file system over one shared
//! host directory, with no external virtiofsd. No DAX window.

mod device;
mod event_handler;
mod filter;

pub use device::{Fs, FsCounters, FsError};

/// hiprio queue and one request queue.
const NUM_QUEUES: usize = 2;
/// Size of each queue.
const QUEUE_SIZE: u16 = 256;
/// Length of the tag field in the config space.
const TAG_LEN: usize = 36;
