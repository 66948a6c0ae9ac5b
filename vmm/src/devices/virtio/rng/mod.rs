// SPDX-License-Identifier: Apache-2.0
//! virtio-rng (virtio 1.2, 5.4): entropy for the guest from the host's
//! `getrandom`.

mod device;
mod event_handler;

pub use device::{Entropy, EntropyError};

/// One request queue.
const QUEUE_SIZE: u16 = 256;
/// Most bytes served per request: a guest asking for more gets this much
/// (the driver copes with short reads), so a single descriptor cannot make
/// the VMM allocate or read without bound.
const MAX_REQUEST_BYTES: u32 = 64 * 1024;
