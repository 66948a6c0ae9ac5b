// SPDX-License-Identifier: Apache-2.0
//! virtio-blk (virtio 1.2, 5.2) on a raw image file: read, write, flush
//! and get-id, read-only disks, images whose size is not a multiple of the
//! sector size (the trailing partial sector is not exposed).

mod device;
mod event_handler;
mod request;

pub use device::{Block, BlockError};
pub use request::{Request, RequestError, RequestType};

/// The one request queue's size.
const QUEUE_SIZE: u16 = 256;
/// Bytes per sector, the unit of `sector` and of the capacity.
const SECTOR_SIZE: u64 = 512;
/// Most data segments per request, offered as `seg_max`: the queue size
/// less the header and status descriptors.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest data segment, offered as `size_max`.
const SIZE_MAX: u32 = 128 * 1024;
/// Most data bytes in one request; a driver honouring `seg_max` and
/// `size_max` stays below it.
const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;
/// Length of the GET_ID answer.
const ID_BYTES: usize = 20;
