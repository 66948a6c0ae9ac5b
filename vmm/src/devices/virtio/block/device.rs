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
mod tests {
    use virtio_bindings::virtio_blk::{
        VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    };

    use super::*;
    use crate::devices::virtio::test_utils::{
        guest_memory, readable, submit, submit_raw, writable, Buf, DATA,
    };
    use crate::vstate::memory::GuestAddress;

    const HEADER: u64 = DATA;
    const BUF: u64 = DATA + 0x1000;
    const STATUS: u64 = DATA + 0x100;

    /// A disk image in a temp file, removed on drop.
    struct Image(PathBuf);

    impl Image {
        fn new(name: &str, contents: &[u8]) -> Self {
            let path =
                std::env::temp_dir().join(format!("vmpod-blk-{}-{name}.img", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            Image(path)
        }

        fn contents(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }
    }

    impl Drop for Image {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(HEADER)).unwrap();
        mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HEADER + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap) -> u32 {
        u32::from(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
    }

    fn request(data: Buf) -> [Buf; 3] {
        [readable(HEADER, 16), data, writable(STATUS, 1)]
    }

    /// 8 sectors, each filled with its number.
    fn numbered_sectors(count: u8) -> Vec<u8> {
        (0..count).flat_map(|s| [s; 512]).collect()
    }

    #[test]
    fn test_read_sectors() {
        let image = Image::new("read", &numbered_sectors(8));
        let mut disk = Block::new(&image.0, false).unwrap();
        assert_eq!(disk.capacity_sectors(), 8);
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_IN, 2);
        let used = submit(&mut disk, &mem, &request(writable(BUF, 1024)));
        assert_eq!(used, Some(1025));
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let mut data = [0u8; 1024];
        mem.read_slice(&mut data, GuestAddress(BUF)).unwrap();
        assert!(data[..512].iter().all(|&b| b == 2));
        assert!(data[512..].iter().all(|&b| b == 3));
    }

    #[test]
    fn test_write_then_read_back_and_flush() {
        let image = Image::new("write", &numbered_sectors(8));
        let mut disk = Block::new(&image.0, false).unwrap();
        let mem = guest_memory();
        mem.write_slice(&[0xab; 512], GuestAddress(BUF)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 5);
        assert_eq!(
            submit(&mut disk, &mem, &request(readable(BUF, 512))),
            Some(1)
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        let flush = [readable(HEADER, 16), writable(STATUS, 1)];
        assert_eq!(submit(&mut disk, &mem, &flush), Some(1));
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
        let on_disk = image.contents();
        assert!(on_disk[5 * 512..6 * 512].iter().all(|&b| b == 0xab));
        assert!(on_disk[4 * 512..5 * 512].iter().all(|&b| b == 4));
        header(&mem, VIRTIO_BLK_T_IN, 5);
        mem.write_slice(&[0; 512], GuestAddress(BUF)).unwrap();
        submit(&mut disk, &mem, &request(writable(BUF, 512)));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(BUF + 511)).unwrap(), 0xab);
        assert_eq!(disk.counters().ok, 3);
    }

    #[test]
    fn test_get_id_is_the_file_name() {
        let image = Image::new("id", &numbered_sectors(1));
        let mut disk = Block::new(&image.0, false).unwrap();
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let used = submit(&mut disk, &mem, &request(writable(BUF, 20)));
        assert_eq!(used, Some(21));
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(BUF)).unwrap();
        assert!(id.starts_with(b"vmpod-blk-"), "{id:?}");
    }

    #[test]
    fn test_read_only_disk_refuses_writes() {
        let image = Image::new("ro", &numbered_sectors(4));
        let mut disk = Block::new(&image.0, true).unwrap();
        assert_ne!(disk.avail_features() & feature(VIRTIO_BLK_F_RO), 0);
        let mem = guest_memory();
        mem.write_slice(&[0xcd; 512], GuestAddress(BUF)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 1);
        assert_eq!(
            submit(&mut disk, &mem, &request(readable(BUF, 512))),
            Some(1)
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        assert_eq!(image.contents(), numbered_sectors(4));
        // Reads and flushes still work.
        header(&mem, VIRTIO_BLK_T_IN, 1);
        submit(&mut disk, &mem, &request(writable(BUF, 512)));
        assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    }

    #[test]
    fn test_partial_last_sector_is_not_exposed() {
        let mut contents = numbered_sectors(8);
        contents.extend_from_slice(&[9; 100]);
        let image = Image::new("partial", &contents);
        let mut disk = Block::new(&image.0, false).unwrap();
        assert_eq!(disk.capacity_sectors(), 8);
        let mut config = [0u8; 8];
        disk.read_config(0, &mut config);
        assert_eq!(u64::from_le_bytes(config), 8);
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_IN, 8);
        submit(&mut disk, &mem, &request(writable(BUF, 512)));
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
        header(&mem, VIRTIO_BLK_T_IN, 7);
        submit(&mut disk, &mem, &request(writable(BUF, 1024)));
        assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR, "crosses the end");
    }

    #[test]
    fn test_malformed_requests_get_ioerr() {
        let image = Image::new("bad", &numbered_sectors(8));
        let mut disk = Block::new(&image.0, false).unwrap();
        let mem = guest_memory();
        let outside = 1 << 40;
        let cases: Vec<(&str, u32, u64, Vec<Buf>)> = vec![
            (
                "short header",
                VIRTIO_BLK_T_IN,
                0,
                vec![readable(HEADER, 8), writable(BUF, 512), writable(STATUS, 1)],
            ),
            (
                "writable header",
                VIRTIO_BLK_T_IN,
                0,
                vec![
                    writable(HEADER, 16),
                    writable(BUF, 512),
                    writable(STATUS, 1),
                ],
            ),
            (
                "read into readable buffer",
                VIRTIO_BLK_T_IN,
                0,
                request(readable(BUF, 512)).to_vec(),
            ),
            (
                "write from writable buffer",
                VIRTIO_BLK_T_OUT,
                0,
                request(writable(BUF, 512)).to_vec(),
            ),
            (
                "buffer outside memory",
                VIRTIO_BLK_T_IN,
                0,
                request(writable(outside, 512)).to_vec(),
            ),
            (
                "not a multiple of 512",
                VIRTIO_BLK_T_IN,
                0,
                request(writable(BUF, 100)).to_vec(),
            ),
            (
                "past the end",
                VIRTIO_BLK_T_OUT,
                8,
                request(readable(BUF, 512)).to_vec(),
            ),
            (
                "sector overflow",
                VIRTIO_BLK_T_IN,
                u64::MAX,
                request(writable(BUF, 512)).to_vec(),
            ),
            (
                "too many bytes",
                VIRTIO_BLK_T_IN,
                0,
                // Overlapping 12 MiB buffers: each in memory, 36 MiB in all.
                vec![
                    readable(HEADER, 16),
                    writable(BUF, 12 << 20),
                    writable(BUF, 12 << 20),
                    writable(BUF, 12 << 20),
                    writable(STATUS, 1),
                ],
            ),
        ];
        for (what, kind, sector, bufs) in cases {
            header(&mem, kind, sector);
            assert_eq!(submit(&mut disk, &mem, &bufs), Some(1), "{what}");
            assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR, "{what}");
        }
        assert_eq!(image.contents(), numbered_sectors(8));
    }

    #[test]
    fn test_unknown_type_is_unsupported() {
        let image = Image::new("unsupp", &numbered_sectors(1));
        let mut disk = Block::new(&image.0, false).unwrap();
        let mem = guest_memory();
        header(&mem, 11, 0); // DISCARD, not offered.
        assert_eq!(
            submit(&mut disk, &mem, &request(readable(BUF, 16))),
            Some(1)
        );
        assert_eq!(status(&mem), VIRTIO_BLK_S_UNSUPP);
    }

    #[test]
    fn test_chains_without_status_are_dropped() {
        let image = Image::new("nostatus", &numbered_sectors(1));
        let mut disk = Block::new(&image.0, false).unwrap();
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        let cases: [&[Buf]; 3] = [
            &[
                readable(HEADER, 16),
                writable(BUF, 512),
                readable(STATUS, 1),
            ],
            &[
                readable(HEADER, 16),
                writable(BUF, 512),
                writable(STATUS, 0),
            ],
            &[readable(HEADER, 16), writable(1 << 40, 1)],
        ];
        for bufs in cases {
            assert_eq!(submit(&mut disk, &mem, bufs), Some(0), "{bufs:?}");
        }
        assert_eq!(disk.counters().dropped, 3);
    }

    #[test]
    fn test_descriptor_loop_and_bad_avail_index_do_not_hang() {
        let image = Image::new("loop", &numbered_sectors(1));
        let mut disk = Block::new(&image.0, false).unwrap();
        let mem = guest_memory();
        header(&mem, VIRTIO_BLK_T_IN, 0);
        // Two descriptors pointing at each other.
        let mut descs =
            crate::devices::virtio::test_utils::chain(&[readable(HEADER, 16), writable(STATUS, 1)]);
        descs[1] = RawDescriptorExt::looped(STATUS, 1, 0);
        let used = submit_raw(&mut disk, &mem, &descs);
        assert!(used.is_some());
        // An available index far ahead of the ring: nothing is served.
        mem.write_obj(0x8000u16, GuestAddress(0x1000 + 2)).ok();
        disk.process_queue();
    }

    /// Raw descriptors the chain helper will not make.
    struct RawDescriptorExt;

    impl RawDescriptorExt {
        /// A device-writable descriptor whose `next` is `next`.
        fn looped(addr: u64, len: u32, next: u16) -> virtio_queue::desc::RawDescriptor {
            use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
            virtio_queue::desc::RawDescriptor::from(virtio_queue::desc::split::Descriptor::new(
                addr,
                len,
                (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                next,
            ))
        }
    }

    #[test]
    fn test_missing_and_directory_images_are_errors() {
        let err = Block::new(Path::new("/nonexistent/disk.img"), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Cannot open the disk image /nonexistent/disk.img"
        );
        let err = Block::new(&std::env::temp_dir(), true).unwrap_err();
        assert!(err.to_string().contains("is not a file"), "{err}");
    }
}
