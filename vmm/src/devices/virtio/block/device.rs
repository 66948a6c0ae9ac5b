// SPDX-License-Identifier: Apache-2.0
//! The virtio-blk device: config space, features and request execution
//! against the image file. Data moves between the file and guest memory
//! directly (`read_volatile_from`/`write_volatile_to`), with no buffer
//! sized by the guest.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{Request, RequestType};
use super::{ID_BYTES, QUEUE_SIZE, SECTOR_SIZE, SEG_MAX, SIZE_MAX};
use crate::devices::virtio::device::{read_config_space, ActivateError, QueueSet, VirtioDevice};
use crate::devices::virtio::ids::VIRTIO_ID_BLOCK;
use crate::devices::virtio::persist::{expect_same, DeviceState, DeviceStateError};
use crate::devices::virtio::{feature, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use crate::vstate::memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Errors setting up a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image cannot be opened.
    #[error("Cannot open the disk image {path}")]
    Open {
        /// The image.
        path: PathBuf,
        /// The open error (missing file, no permission, read-only file
        /// opened for writing).
        #[source]
        source: std::io::Error,
    },
    /// The image's size cannot be read.
    #[error("Cannot read the size of the disk image {path}")]
    Size {
        /// The image.
        path: PathBuf,
        /// The metadata or seek error.
        #[source]
        source: std::io::Error,
    },
    /// The image is not a regular file or block device.
    #[error("The disk image {0} is not a file")]
    NotAFile(PathBuf),
    /// The queue's notification event cannot be created.
    #[error("Cannot create the virtio-blk queue event")]
    QueueEvent(#[source] std::io::Error),
}

/// How requests ended, for the log and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockCounters {
    /// Requests completed with `VIRTIO_BLK_S_OK`.
    pub ok: u64,
    /// Requests completed with `VIRTIO_BLK_S_IOERR` (malformed or failed).
    pub io_errors: u64,
    /// Requests completed with `VIRTIO_BLK_S_UNSUPP`.
    pub unsupported: u64,
    /// Requests dropped (no status descriptor).
    pub dropped: u64,
}

/// A virtio-blk disk.
#[derive(Debug)]
pub struct Block {
    file: File,
    path: PathBuf,
    readonly: bool,
    capacity_sectors: u64,
    id: [u8; ID_BYTES],
    queue_events: [EventFd; 1],
    active: Option<QueueSet>,
    counters: BlockCounters,
}

impl Block {
    /// A disk on the raw image at `path`; `readonly` opens it read-only
    /// and makes the guest see a read-only disk.
    ///
    /// # Errors
    /// [`BlockError`] naming the image.
    pub fn new(path: &Path, readonly: bool) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let metadata = file.metadata().map_err(|source| BlockError::Size {
            path: path.to_path_buf(),
            source,
        })?;
        if metadata.is_dir() {
            return Err(BlockError::NotAFile(path.to_path_buf()));
        }
        let size = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        if size % SECTOR_SIZE != 0 {
            tracing::warn!(
                "disk image {}: {} trailing bytes past the last whole sector are not exposed",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        Ok(Block {
            file,
            path: path.to_path_buf(),
            readonly,
            capacity_sectors: size / SECTOR_SIZE,
            id: disk_id(path),
            queue_events: [EventFd::new(EFD_NONBLOCK).map_err(BlockError::QueueEvent)?],
            active: None,
            counters: BlockCounters::default(),
        })
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// How requests have ended so far.
    pub fn counters(&self) -> BlockCounters {
        self.counters
    }

    /// Serves every request on the queue, then interrupts the guest if it
    /// wants to be told. Does nothing before activation.
    pub fn process_queue(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let completed = self.drain(&mut active);
        if completed {
            let mem = &active.mem;
            let notify = active
                .queues
                .first_mut()
                .is_some_and(|queue| queue.needs_notification(mem).unwrap_or(true));
            if notify {
                if let Err(err) = active.interrupt.signal_used_queue() {
                    tracing::warn!("virtio-blk: cannot interrupt the guest: {err}");
                }
            }
        }
        self.active = Some(active);
    }

    /// Pops and completes requests until the queue is empty (with event
    /// index suppression: until no more arrive after re-enabling
    /// notifications). Returns whether any was completed.
    fn drain(&mut self, active: &mut QueueSet) -> bool {
        let mem = active.mem.clone();
        let Some(queue) = active.queues.first_mut() else {
            return false;
        };
        let mut completed = false;
        loop {
            if queue.disable_notification(&mem).is_err() {
                break;
            }
            let mut popped = false;
            while let Some(chain) = queue.pop_descriptor_chain(&mem) {
                popped = true;
                let head = chain.head_index();
                let used_len = self.serve(&mem, chain);
                if let Err(err) = queue.add_used(&mem, head, used_len) {
                    tracing::warn!("virtio-blk: cannot complete request {head}: {err}");
                    return completed;
                }
                completed = true;
            }
            match queue.enable_notification(&mem) {
                // More arrived while notifications were off.
                Ok(true) if popped => {}
                // "More" that cannot be popped: the available index is
                // corrupt. Stop here rather than spin; the guest's next
                // notification tries again.
                Ok(true) => {
                    tracing::warn!("virtio-blk: available ring index is corrupt");
                    break;
                }
                Ok(false) | Err(_) => break,
            }
        }
        completed
    }

    /// Executes one request; returns the used length.
    fn serve<M>(&mut self, mem: &GuestMemoryMmap, chain: virtio_queue::DescriptorChain<M>) -> u32
    where
        M: std::ops::Deref + Clone,
        M::Target: GuestMemory,
    {
        let request = match Request::parse(chain, mem, self.capacity_sectors) {
            Ok(request) => request,
            Err(err) => {
                tracing::debug!("virtio-blk {}: {err}", self.path.display());
                return match err.status() {
                    Some(status) => {
                        self.counters.io_errors += 1;
                        write_status(mem, status, VIRTIO_BLK_S_IOERR)
                    }
                    None => {
                        self.counters.dropped += 1;
                        0
                    }
                };
            }
        };
        let (status, written) = match self.execute(mem, &request) {
            Ok(written) => {
                self.counters.ok += 1;
                (VIRTIO_BLK_S_OK, written)
            }
            Err(Failure::Unsupported) => {
                self.counters.unsupported += 1;
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
            Err(Failure::Io(err)) => {
                tracing::warn!("virtio-blk {}: {err}", self.path.display());
                self.counters.io_errors += 1;
                (VIRTIO_BLK_S_IOERR, 0)
            }
        };
        let status_len = write_status(mem, request.status, status);
        // `written` is at most MAX_REQUEST_BYTES, far below u32::MAX.
        u32::try_from(written)
            .unwrap_or(u32::MAX)
            .saturating_add(status_len)
    }

    /// Runs `request`; returns how many bytes went into guest memory.
    fn execute(&mut self, mem: &GuestMemoryMmap, request: &Request) -> Result<u64, Failure> {
        match request.kind {
            RequestType::In => {
                self.seek(request.sector)?;
                for &(addr, len) in &request.data {
                    mem.read_exact_volatile_from(addr, &mut self.file, len as usize)
                        .map_err(|e| Failure::Io(std::io::Error::other(e.to_string())))?;
                }
                Ok(request.data_len)
            }
            RequestType::Out => {
                if self.readonly {
                    return Err(Failure::Io(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "write to a read-only disk",
                    )));
                }
                self.seek(request.sector)?;
                for &(addr, len) in &request.data {
                    mem.write_all_volatile_to(addr, &mut self.file, len as usize)
                        .map_err(|e| Failure::Io(std::io::Error::other(e.to_string())))?;
                }
                Ok(0)
            }
            RequestType::Flush => {
                if !self.readonly {
                    self.file.sync_data().map_err(Failure::Io)?;
                }
                Ok(0)
            }
            RequestType::GetId => {
                let mut id: &[u8] = &self.id;
                let mut written = 0u64;
                for &(addr, len) in &request.data {
                    let n = id.len().min(len as usize);
                    let (chunk, rest) = id.split_at(n);
                    mem.write_slice(chunk, addr)
                        .map_err(|e| Failure::Io(std::io::Error::other(e.to_string())))?;
                    written += n as u64;
                    id = rest;
                }
                Ok(written)
            }
            RequestType::Unsupported(_) => Err(Failure::Unsupported),
        }
    }

    fn seek(&mut self, sector: u64) -> Result<(), Failure> {
        // Parsing checked sector * 512 against the capacity.
        self.file
            .seek(SeekFrom::Start(sector * SECTOR_SIZE))
            .map(|_| ())
            .map_err(Failure::Io)
    }
}

/// Why a parsed request failed.
enum Failure {
    Unsupported,
    Io(std::io::Error),
}

/// Writes the status byte; returns its length for the used entry (0 if
/// the write failed, which parsing makes impossible).
fn write_status(mem: &GuestMemoryMmap, addr: GuestAddress, status: u32) -> u32 {
    match mem.write_obj(status as u8, addr) {
        Ok(()) => 1,
        Err(_) => 0,
    }
}

/// A stable ID for the image: its file name, cut to 20 bytes.
fn disk_id(path: &Path) -> [u8; ID_BYTES] {
    let mut id = [0u8; ID_BYTES];
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes())
        .unwrap_or_default();
    for (dst, src) in id.iter_mut().zip(name) {
        *dst = *src;
    }
    id
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn avail_features(&self) -> u64 {
        let mut features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_RING_F_EVENT_IDX)
            | feature(VIRTIO_BLK_F_FLUSH)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_SIZE_MAX);
        if self.readonly {
            features |= feature(VIRTIO_BLK_F_RO);
        }
        features
    }

    /// `struct virtio_blk_config`: capacity, size_max, seg_max.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 16];
        config[..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        read_config_space(&config, offset, data);
    }

    fn activate(&mut self, queues: QueueSet) -> Result<(), ActivateError> {
        queues.expect_queues(1)?;
        self.active = Some(queues);
        self.process_queue();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queues_in_use(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|active| active.queues.as_slice())
    }

    fn save_state(&self) -> Result<DeviceState, DeviceStateError> {
        Ok(DeviceState::Block {
            capacity_sectors: self.capacity_sectors,
            readonly: self.readonly,
        })
    }

    /// The guest's driver read the size and read-only flag at probe: a
    /// disk that differs in either is refused.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        state.expect_kind(VIRTIO_ID_BLOCK)?;
        if let DeviceState::Block {
            capacity_sectors,
            readonly,
        } = *state
        {
            expect_same(
                "disk size in sectors",
                capacity_sectors,
                self.capacity_sectors,
            )?;
            expect_same("disk read-only flag", readonly, self.readonly)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
