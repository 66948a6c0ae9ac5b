// SPDX-License-Identifier: Apache-2.0
//! virtio-blk requests from a driver queue against scratch images.

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
