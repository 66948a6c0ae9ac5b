// SPDX-License-Identifier: Apache-2.0
//! The virtio-fs device: tag in config space, requests from the hiprio and
//! request queues handed to the FUSE server.
//!
//! The guest is untrusted. Each request passes [`super::filter`] first
//! (unknown opcodes get `ENOSYS`; on a read-only share, changes get
//! `EROFS`). The server then parses the request with bounds checks of its
//! own; a request it cannot decode, or whose reply does not fit the
//! guest's buffers, is completed with length 0 and counted. Lookups cannot
//! leave the shared directory: the passthrough file system resolves names
//! one component at a time relative to directory descriptors, refuses
//! names with `/`, maps `..` at the root to the root, never follows
//! symlinks itself (the guest resolves them, inside its mount), and is
//! configured without open-by-handle.

use std::path::{Path, PathBuf};

use fuse_backend_rs::abi::fuse_abi::{InHeader, OpenIn, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::filter::{verdict, Verdict};
use super::{NUM_QUEUES, QUEUE_SIZE, TAG_LEN};
use crate::devices::virtio::device::{read_config_space, ActivateError, QueueSet, VirtioDevice};
use crate::devices::virtio::ids::VIRTIO_ID_FS;
use crate::devices::virtio::iovec::{split_chain, ReadableBuffers};
use crate::devices::virtio::persist::{expect_same, DeviceState, DeviceStateError};
use crate::devices::virtio::{feature, VIRTIO_F_VERSION_1};
use crate::vstate::memory::{ByteValued, GuestMemoryMmap};

/// FUSE OPEN.
const FUSE_OPEN: u32 = 14;
/// FUSE INIT: the guest mounts the share.
const FUSE_INIT: u32 = 26;

/// Errors setting up a shared directory.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The tag cannot be put in the config space.
    #[error("Invalid virtio-fs tag '{0}': 1 to {TAG_LEN} bytes, no NUL")]
    Tag(String),
    /// The directory is missing or not a directory.
    #[error("The shared directory {0} does not exist or is not a directory")]
    NotADirectory(PathBuf),
    /// The FUSE server cannot open the directory.
    #[error("Cannot serve the shared directory {path}")]
    Server {
        /// The directory.
        path: PathBuf,
        /// The passthrough server's error opening or importing the
        /// directory (permissions, descriptor limit).
        #[source]
        source: std::io::Error,
    },
    /// A queue event cannot be created.
    #[error("Cannot create a virtio-fs queue event")]
    QueueEvent(#[source] std::io::Error),
}

/// How requests fared.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FsCounters {
    /// Requests the server answered.
    pub served: u64,
    /// Requests the device refused (`ENOSYS`, `EROFS`).
    pub refused: u64,
    /// Requests completed with length 0 (undecodable, or no room to reply).
    pub failed: u64,
    /// `FUSE_INIT` requests: the guest mounting the share. From the first
    /// on, the server holds session state a snapshot cannot carry (a
    /// driver reset does not clear it: the server keeps its tables).
    pub mounts: u64,
}

/// A virtio-fs device sharing one host directory.
pub struct Fs {
    tag: [u8; TAG_LEN],
    dir: PathBuf,
    readonly: bool,
    server: Server<PassthroughFs>,
    queue_events: [EventFd; NUM_QUEUES],
    active: Option<QueueSet>,
    counters: FsCounters,
}

impl std::fmt::Debug for Fs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fs")
            .field("dir", &self.dir)
            .field("readonly", &self.readonly)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Fs {
    /// Shares `dir` under `tag`; `readonly` refuses every change.
    ///
    /// # Errors
    /// [`FsError`] naming the tag or directory.
    pub fn new(tag: &str, dir: &Path, readonly: bool) -> Result<Self, FsError> {
        if tag.is_empty() || tag.len() > TAG_LEN || tag.contains('\0') {
            return Err(FsError::Tag(tag.to_string()));
        }
        let mut tag_bytes = [0u8; TAG_LEN];
        tag_bytes[..tag.len()].copy_from_slice(tag.as_bytes());
        let dir = dir
            .canonicalize()
            .ok()
            .filter(|d| d.is_dir())
            .ok_or_else(|| FsError::NotADirectory(dir.to_path_buf()))?;
        let server_error = |source| FsError::Server {
            path: dir.clone(),
            source,
        };
        let config = Config {
            root_dir: dir.to_string_lossy().into_owned(),
            do_import: true,
            writeback: false,
            no_open: false,
            xattr: false,
            inode_file_handles: false,
            ..Config::default()
        };
        let fs = PassthroughFs::new(config).map_err(server_error)?;
        fs.import().map_err(server_error)?;
        let event = || EventFd::new(EFD_NONBLOCK).map_err(FsError::QueueEvent);
        Ok(Fs {
            tag: tag_bytes,
            dir,
            readonly,
            server: Server::new(fs),
            queue_events: [event()?, event()?],
            active: None,
            counters: FsCounters::default(),
        })
    }

    /// The tag, as given at creation.
    pub fn tag(&self) -> String {
        let len = self.tag.iter().position(|&b| b == 0).unwrap_or(TAG_LEN);
        String::from_utf8_lossy(&self.tag[..len]).into_owned()
    }

    /// How requests fared so far.
    pub fn counters(&self) -> FsCounters {
        self.counters
    }

    /// Serves every request on queue `index` (0: hiprio, 1: requests).
    pub fn process_queue(&mut self, index: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let Some(queue) = active.queues.get_mut(index) else {
            return;
        };
        let mut completed = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let used = serve(&self.server, self.readonly, &mem, chain, &mut self.counters);
            if queue.add_used(&mem, head, used).is_err() {
                break;
            }
            completed = true;
        }
        if completed && queue.needs_notification(&mem).unwrap_or(true) {
            if let Err(err) = active.interrupt.signal_used_queue() {
                tracing::warn!("virtio-fs: cannot interrupt the guest: {err}");
            }
        }
    }
}

/// fuse-backend-rs serves the guest's root with the serving thread's own
/// effective ids (it switches to other ids only, and back to 0 after): a
/// VMM jailed as its own uid (vmpod-jailer, `CAP_SETUID`/`CAP_SETGID` kept)
/// takes 0 first, so that root's files are root's. Run as root, a no-op.
fn serve_as_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // SAFETY: raw setresgid/setresuid change this thread's ids only
        // (libc's wrappers would change every thread's); a failure leaves
        // the ids as they were.
        unsafe {
            libc::syscall(libc::SYS_setresgid, -1, 0, -1);
            libc::syscall(libc::SYS_setresuid, -1, 0, -1);
        }
    }
}

/// Answers one request; returns the used length.
fn serve<M>(
    server: &Server<PassthroughFs>,
    readonly: bool,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    counters: &mut FsCounters,
) -> u32
where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    let Some((header, open_flags)) = peek_header(mem, chain.clone()) else {
        counters.failed += 1;
        return 0;
    };
    if header.opcode == FUSE_INIT {
        counters.mounts += 1;
    }
    if let Verdict::Refuse(errno) = verdict(header.opcode, open_flags, readonly) {
        counters.refused += 1;
        return reply_error(mem, chain, header.unique, errno);
    }
    let (Ok(reader), Ok(writer)) = (
        Reader::from_descriptor_chain(mem, chain.clone()),
        VirtioFsWriter::new(mem, chain),
    ) else {
        counters.failed += 1;
        return 0;
    };
    serve_as_root();
    match server.handle_message(reader, writer.into(), None, None) {
        Ok(written) => {
            counters.served += 1;
            u32::try_from(written).unwrap_or(0)
        }
        Err(err) => {
            tracing::debug!("virtio-fs: request failed: {err}");
            counters.failed += 1;
            0
        }
    }
}

/// The request's header, and its open flags if it is an OPEN.
fn peek_header<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> Option<(InHeader, Option<u32>)>
where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    // Only the header is copied here; the server reads the rest in place.
    let (request, _) = split_chain(mem, chain, usize::MAX, 0).ok()?;
    let header: InHeader = read_obj_at(mem, &request, 0)?;
    let open_flags = if header.opcode == FUSE_OPEN {
        read_obj_at::<OpenIn>(mem, &request, size_of::<InHeader>()).map(|open| open.flags)
    } else {
        None
    };
    Some((header, open_flags))
}

/// The `T` at `offset` in the request, if the request holds all of it.
fn read_obj_at<T: ByteValued + Default>(
    mem: &GuestMemoryMmap,
    request: &ReadableBuffers,
    offset: usize,
) -> Option<T> {
    let mut obj = T::default();
    let bytes = obj.as_mut_slice();
    let read = request.read_at(mem, offset, bytes).ok()?;
    (read == bytes.len()).then_some(obj)
}

/// Writes a FUSE error reply; returns its length, or 0 if it did not fit.
fn reply_error<M>(mem: &GuestMemoryMmap, chain: DescriptorChain<M>, unique: u64, errno: i32) -> u32
where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    let reply = OutHeader {
        len: size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    };
    let Ok((_, answer)) = split_chain(mem, chain, usize::MAX, size_of::<OutHeader>()) else {
        return 0;
    };
    match answer.write_at(mem, 0, reply.as_slice()) {
        Ok(written) if written == size_of::<OutHeader>() => reply.len,
        _ => 0,
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
    }

    /// `struct virtio_fs_config`: tag, num_request_queues (1).
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; TAG_LEN + 4];
        config[..TAG_LEN].copy_from_slice(&self.tag);
        config[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        read_config_space(&config, offset, data);
    }

    fn activate(&mut self, queues: QueueSet) -> Result<(), ActivateError> {
        queues.expect_queues(NUM_QUEUES)?;
        self.active = Some(queues);
        for index in 0..NUM_QUEUES {
            self.process_queue(index);
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queues_in_use(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|active| active.queues.as_slice())
    }

    /// Refused once the guest mounted the share (see
    /// [`crate::devices::virtio::persist`]): the FUSE session's inode and
    /// handle tables refer to this process's descriptors.
    fn save_state(&self) -> Result<DeviceState, DeviceStateError> {
        let tag = self.tag();
        if self.counters.mounts > 0 {
            return Err(DeviceStateError::FsMounted(tag));
        }
        Ok(DeviceState::Fs { tag })
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        state.expect_kind(VIRTIO_ID_FS)?;
        if let DeviceState::Fs { tag } = state {
            expect_same("virtio-fs tag", tag.as_str(), self.tag().as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, readable, submit, writable, DATA};
    use crate::vstate::memory::{Bytes, GuestAddress};

    const REQUEST: u64 = DATA;
    const REPLY: u64 = DATA + 0x10000;

    /// A shared directory in a temp dir, removed on drop.
    struct Share(PathBuf);

    impl Share {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("vmpod-fs-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("from-host.txt"), "host\n").unwrap();
            std::os::unix::fs::symlink("/etc/passwd", dir.join("escape")).unwrap();
            Share(dir)
        }
    }

    impl Drop for Share {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Sends one FUSE request (header fields and body); returns the used
    /// length and the reply's error field.
    fn request(
        fs: &mut Fs,
        mem: &GuestMemoryMmap,
        opcode: u32,
        nodeid: u64,
        body: &[u8],
    ) -> (Option<u32>, i32) {
        let len = 40 + body.len() as u32;
        let mut msg = Vec::new();
        msg.extend_from_slice(&len.to_le_bytes());
        msg.extend_from_slice(&opcode.to_le_bytes());
        msg.extend_from_slice(&7u64.to_le_bytes()); // unique
        msg.extend_from_slice(&nodeid.to_le_bytes());
        msg.extend_from_slice(&[0u8; 16]); // uid, gid, pid, padding
        msg.extend_from_slice(body);
        mem.write_slice(&msg, GuestAddress(REQUEST)).unwrap();
        mem.write_slice(&[0u8; 64], GuestAddress(REPLY)).unwrap();
        // On the hiprio queue: the server answers any request there.
        let used = submit(fs, mem, &[readable(REQUEST, len), writable(REPLY, 4096)]);
        (used, mem.read_obj::<i32>(GuestAddress(REPLY + 4)).unwrap())
    }

    fn init(fs: &mut Fs, mem: &GuestMemoryMmap) {
        let mut body = Vec::new();
        for word in [7u32, 38, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] {
            body.extend_from_slice(&word.to_le_bytes());
        }
        let (used, error) = request(fs, mem, 26, 0, &body);
        assert!(used.unwrap() > 16, "{used:?}");
        assert_eq!(error, 0);
    }

    #[test]
    fn test_bad_tags_and_directories() {
        let share = Share::new("bad");
        assert!(matches!(Fs::new("", &share.0, false), Err(FsError::Tag(_))));
        assert!(matches!(
            Fs::new(&"t".repeat(37), &share.0, false),
            Err(FsError::Tag(_))
        ));
        let err = Fs::new("t", &share.0.join("nope"), false).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not exist or is not a directory"),
            "{err}"
        );
        assert!(Fs::new("t", &share.0.join("from-host.txt"), false).is_err());
    }

    #[test]
    fn test_config_space_has_the_tag() {
        let share = Share::new("config");
        let fs = Fs::new("rootfs", &share.0, false).unwrap();
        let mut config = [0xffu8; 40];
        fs.read_config(0, &mut config);
        assert_eq!(&config[..6], b"rootfs");
        assert!(config[6..36].iter().all(|&b| b == 0));
        assert_eq!(&config[36..], &1u32.to_le_bytes());
    }

    #[test]
    fn test_lookup_and_dotdot_at_the_root_stays_inside() {
        let share = Share::new("lookup");
        let mut fs = Fs::new("t", &share.0, false).unwrap();
        let mem = guest_memory();
        init(&mut fs, &mem);
        let (_, error) = request(&mut fs, &mem, 1, 1, b"from-host.txt\0");
        assert_eq!(error, 0);
        let (_, error) = request(&mut fs, &mem, 1, 1, b"..\0");
        assert_eq!(error, 0);
        // EntryOut follows the 16-byte header; attr.ino at offset 40.
        let ino: u64 = mem.read_obj(GuestAddress(REPLY + 16 + 40)).unwrap();
        assert_eq!(
            ino,
            std::fs::metadata(&share.0).unwrap().ino(),
            "'..' left the share"
        );
        let (_, error) = request(&mut fs, &mem, 1, 1, b"a/b\0");
        assert_ne!(error, 0, "a name with '/' was looked up");
    }

    #[test]
    fn test_symlinks_are_not_followed_by_the_server() {
        let share = Share::new("symlink");
        let mut fs = Fs::new("t", &share.0, false).unwrap();
        let mem = guest_memory();
        init(&mut fs, &mem);
        let (_, error) = request(&mut fs, &mem, 1, 1, b"escape\0");
        assert_eq!(error, 0);
        let nodeid: u64 = mem.read_obj(GuestAddress(REPLY + 16)).unwrap();
        let ino: u64 = mem.read_obj(GuestAddress(REPLY + 16 + 40)).unwrap();
        // The entry is the link itself, not /etc/passwd.
        assert_eq!(
            ino,
            std::fs::symlink_metadata(share.0.join("escape"))
                .unwrap()
                .ino()
        );
        // Opening it does not open the target.
        let open = [0u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        let (_, error) = request(&mut fs, &mem, 14, nodeid, &open);
        assert_ne!(error, 0, "the server opened a symlink");
    }

    #[test]
    fn test_read_only_share_refuses_changes() {
        let share = Share::new("ro");
        let mut fs = Fs::new("t", &share.0, true).unwrap();
        let mem = guest_memory();
        init(&mut fs, &mem);
        let mkdir = [0o755u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        let body = [mkdir.as_slice(), b"newdir\0"].concat();
        let (used, error) = request(&mut fs, &mem, 9, 1, &body);
        assert_eq!((used, error), (Some(16), -libc::EROFS));
        assert!(!share.0.join("newdir").exists());
        let (_, error) = request(&mut fs, &mem, 1, 1, b"from-host.txt\0");
        assert_eq!(error, 0, "lookups still work");
        assert_eq!(fs.counters().refused, 1);
    }

    #[test]
    fn test_writable_share_accepts_mkdir() {
        let share = Share::new("rw");
        let mut fs = Fs::new("t", &share.0, false).unwrap();
        let mem = guest_memory();
        init(&mut fs, &mem);
        let mkdir = [0o755u32.to_le_bytes(), 0u32.to_le_bytes()].concat();
        let body = [mkdir.as_slice(), b"newdir\0"].concat();
        let (_, error) = request(&mut fs, &mem, 9, 1, &body);
        assert_eq!(error, 0);
        assert!(share.0.join("newdir").is_dir());
    }

    #[test]
    fn test_unknown_and_malformed_requests() {
        let share = Share::new("malformed");
        let mut fs = Fs::new("t", &share.0, false).unwrap();
        let mem = guest_memory();
        init(&mut fs, &mem);
        let (used, error) = request(&mut fs, &mem, 7, 1, &[]);
        assert_eq!((used, error), (Some(16), -libc::ENOSYS));
        // Shorter than a FUSE header.
        mem.write_slice(&[1u8; 8], GuestAddress(REQUEST)).unwrap();
        let used = submit(
            &mut fs,
            &mem,
            &[readable(REQUEST, 8), writable(REPLY, 4096)],
        );
        assert_eq!(used, Some(0));
        // Buffers outside guest memory.
        let used = submit(
            &mut fs,
            &mem,
            &[readable(1 << 40, 64), writable(REPLY, 4096)],
        );
        assert_eq!(used, Some(0));
        // No room for the reply.
        let used = submit(&mut fs, &mem, &[readable(REQUEST, 48)]);
        assert_eq!(used, Some(0));
        assert!(fs.counters().failed >= 2, "{:?}", fs.counters());
    }
}
