// SPDX-License-Identifier: Apache-2.0
//! Pod VM templates: a snapshot of a pod VM taken once its agent serves and
//! before it became any pod's (no CreateSandbox yet, the share not
//! mounted), kept in `<template-dir>/<key>/` (`vmstate`, `memory`), from
//! which every later pod VM of the same shape is restored instead of
//! booted. The key is a SHA-256 over everything the snapshot's identity
//! binds it to: the kernel's and the initrd's contents, the `vmpod-vm`
//! binary's (another build may write another state format), memory,
//! vCPUs, CPU template, kernel command line and the device kinds.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::sizing::VmSize;

/// A snapshot's state file, written last: a directory without it is no
/// template (vmpod-vm's `snapshot::STATE_FILE`).
pub(super) const STATE_FILE: &str = "vmstate";
/// A snapshot's guest memory (vmpod-vm's `snapshot::MEMORY_FILE`).
const MEMORY_FILE: &str = "memory";
/// The hashes of the files a key is made of, in the template directory
/// (no key starts with a dot): a file per hashed file, named by its device,
/// inode, size, modification and change times, holding its SHA-256.
pub(super) const HASH_CACHE: &str = ".sha256";
/// How much of `vmm.log`'s end is searched for vmpod-vm's error line.
const LOG_END: u64 = 16 * 1024;

/// What a template is bound to: a change to any of it is another template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TemplateInputs {
    /// SHA-256 of the guest kernel, hex.
    pub(super) kernel: String,
    /// SHA-256 of the agent initrd, hex.
    pub(super) initrd: String,
    /// SHA-256 of the `vmpod-vm` binary, hex.
    pub(super) vmm: String,
    /// Guest memory, MiB.
    pub(super) memory_mib: u32,
    /// vCPUs.
    pub(super) vcpus: u8,
    /// `--cpu-template` as configured.
    pub(super) cpu_template: String,
    /// The kernel command line.
    pub(super) cmdline: String,
    /// The virtio devices by kind, in vmpod-vm's order (`net` for each
    /// interface, `vsock`, `fs:TAG`, `rng`).
    pub(super) devices: Vec<String>,
}

impl TemplateInputs {
    /// The inputs of a pod VM of `size` with the kernel command line
    /// `cmdline` and the devices `devices` under `config`: hashes the
    /// kernel, the initrd and `vmpod-vm`, or finds their hashes in
    /// `templates`' cache.
    ///
    /// # Errors
    /// A file that cannot be read.
    pub(super) fn of(
        config: &Config,
        templates: &Path,
        size: VmSize,
        cmdline: String,
        devices: Vec<String>,
    ) -> Result<Self, TemplateError> {
        let cache = templates.join(HASH_CACHE);
        Ok(TemplateInputs {
            kernel: sha256_cached(&config.kernel, &cache)?,
            initrd: sha256_cached(&config.initrd, &cache)?,
            vmm: sha256_cached(&config.vmm, &cache)?,
            memory_mib: size.memory_mib,
            vcpus: size.vcpus,
            cpu_template: config.cpu_template.clone(),
            cmdline,
            devices,
        })
    }

    /// The template's key: SHA-256, hex, over every input, each on a line
    /// of its own (the command line last: it alone may hold anything).
    pub(super) fn key(&self) -> String {
        let text = format!(
            "kernel {}\ninitrd {}\nvmm {}\nmemory {}\nvcpus {}\ncpu-template {}\ndevices {}\ncmdline {}",
            self.kernel,
            self.initrd,
            self.vmm,
            self.memory_mib,
            self.vcpus,
            self.cpu_template,
            self.devices.join(","),
            self.cmdline
        );
        hex(&Sha256::digest(text.as_bytes()))
    }
}

/// Failures of finding, keeping or removing a template; each ends up in a
/// warning, never a pod's failure.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A file or directory of the template could not be read, made,
    /// changed, moved or removed.
    #[error("{what} {path}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The path it failed on.
        path: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// What vmpod-vm wrote is not a snapshot directory.
    #[error("{path}: {reason}")]
    NotSnapshot {
        /// The directory.
        path: String,
        /// What is wrong.
        reason: &'static str,
    },
}

pub(super) fn io_error(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.display().to_string();
    move |source| TemplateError::Io { what, path, source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of the file at `path`, hex, from the cache in `cache` when the
/// file's identity (device, inode, size, modification and change times,
/// read from the open file) has a hash there; computed and cached else (a
/// cache that cannot be written is no error).
fn sha256_cached(path: &Path, cache: &Path) -> Result<String, TemplateError> {
    let file = File::open(path).map_err(io_error("open", path))?;
    let meta = file.metadata().map_err(io_error("read", path))?;
    let entry = cache.join(cache_entry(&meta));
    if let Ok(hash) = std::fs::read_to_string(&entry) {
        if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(hash);
        }
    }
    let hash = sha256_of(file, path)?;
    let partial = entry.with_extension("partial");
    let _ = std::fs::create_dir_all(cache)
        .and_then(|()| std::fs::write(&partial, &hash))
        .and_then(|()| std::fs::rename(&partial, &entry));
    Ok(hash)
}

/// The name of a file's entry in the hash cache: its identity.
pub(super) fn cache_entry(meta: &std::fs::Metadata) -> String {
    format!(
        "{:x}-{:x}-{:x}-{}.{}-{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// SHA-256 of the file at `path`, hex.
#[cfg(test)]
fn sha256_file(path: &Path) -> Result<String, TemplateError> {
    sha256_of(File::open(path).map_err(io_error("open", path))?, path)
}

/// SHA-256 of the open `file` (at `path`), hex.
fn sha256_of(mut file: File, path: &Path) -> Result<String, TemplateError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_error("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex(&hasher.finalize()))
}

/// The template of one pod VM shape.
#[derive(Debug, Clone)]
pub(super) struct Template {
    /// Its key ([`TemplateInputs::key`]).
    pub(super) key: String,
    /// `<template-dir>/<key>`.
    pub(super) dir: PathBuf,
}

impl Template {
    /// The template of `inputs` in `templates`.
    pub(super) fn new(templates: &Path, inputs: &TemplateInputs) -> Self {
        let key = inputs.key();
        Template {
            dir: templates.join(&key),
            key,
        }
    }

    /// Whether the template is there: a directory (not a link) with its
    /// state file, written last.
    pub(super) fn exists(&self) -> bool {
        self.dir.symlink_metadata().is_ok_and(|meta| meta.is_dir())
            && self.dir.join(STATE_FILE).is_file()
    }

    /// Claims the making of this template: of the pods of a shape that
    /// boot at once with no template, one snapshots its VM, the others
    /// boot plain. The claim is a `flock` on `.<key>.lock` beside the
    /// template, held by the returned file (and let go when the shim
    /// dies); `None` when another pod holds it or it cannot be taken.
    pub(super) fn claim(&self) -> Option<File> {
        self.lock(libc::LOCK_EX)
    }

    /// Holds the template while a pod restores it, so that pruning
    /// ([`super::prune::prune`]) leaves it alone: a shared `flock` on the
    /// same `.<key>.lock` (which a claim excludes, but a claim is only
    /// taken for a template not there).
    /// `None` when it cannot be taken; the restore then goes on unheld.
    pub(super) fn hold(&self) -> Option<File> {
        self.lock(libc::LOCK_SH)
    }

    /// `.<key>.lock` beside the template.
    pub(super) fn lock_path(&self) -> PathBuf {
        self.dir.with_file_name(format!(".{}.lock", self.key))
    }

    /// A `flock` of kind `operation` (without waiting) on the template's
    /// lock file, made if missing; `None` when it is held otherwise.
    pub(super) fn lock(&self, operation: libc::c_int) -> Option<File> {
        let lock = self.lock_path();
        if let Some(parent) = lock.parent() {
            std::fs::create_dir_all(parent).ok()?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock)
            .ok()?;
        // SAFETY: flock on a descriptor the file owns.
        let locked = unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0;
        locked.then_some(file)
    }

    /// Marks the template used now: its directory's modification time, by
    /// which pruning ([`super::prune::prune`]) orders templates (nothing in
    /// a sealed template changes it otherwise). The directory is opened
    /// without following a link.
    ///
    /// # Errors
    /// The directory cannot be opened or its time set.
    pub(super) fn touch(&self) -> Result<(), TemplateError> {
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&self.dir)
            .map_err(io_error("open", &self.dir))?;
        dir.set_modified(std::time::SystemTime::now())
            .map_err(io_error("touch", &self.dir))
    }

    /// Removes the template (a restore refused it).
    ///
    /// # Errors
    /// The directory could not be removed (one gone already is success).
    pub(super) fn remove(&self) -> Result<(), TemplateError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(err) => Err(io_error("remove", &self.dir)(err)),
        }
    }

    /// Makes the snapshot vmpod-vm wrote to `snapshot` (in the pod's
    /// sockets' directory, which a jailed VMM can write) the template:
    /// its directory and two files become root's and read-only, and the
    /// directory is moved into place. Returns `false` when another pod's
    /// template took the place first; then `snapshot` is removed.
    ///
    /// # Errors
    /// `snapshot` is not a directory holding the two files, or a step
    /// failed (`snapshot` is then removed too).
    pub(super) fn keep(&self, snapshot: &Path) -> Result<bool, TemplateError> {
        let kept = seal(snapshot).and_then(|()| self.move_into_place(snapshot));
        if !matches!(kept, Ok(true)) {
            let _ = std::fs::remove_dir_all(snapshot);
        }
        kept
    }

    fn move_into_place(&self, snapshot: &Path) -> Result<bool, TemplateError> {
        if let Some(parent) = self.dir.parent() {
            std::fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
        let c = |path: &Path| {
            CString::new(path.as_os_str().as_bytes())
                .map_err(|err| io_error("move", path)(err.into()))
        };
        let (from, to) = (c(snapshot)?, c(&self.dir)?);
        // SAFETY: renameat2 with two NUL-terminated paths alive for the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EEXIST | libc::ENOTEMPTY) => Ok(false),
            _ => Err(io_error("move a snapshot to", &self.dir)(err)),
        }
    }
}

/// Opens `name` in the directory `dir` without following a link.
fn open_beneath(dir: &OwnedFd, name: &str, flags: libc::c_int) -> std::io::Result<OwnedFd> {
    let name = CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: openat on a live directory descriptor with a NUL-terminated
    // name; the returned descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Makes the descriptor's file root's with mode `mode`, if it is of the
/// kind `kind` (`S_IFDIR`, `S_IFREG`).
fn seal_fd(fd: &OwnedFd, kind: libc::mode_t, mode: libc::mode_t) -> std::io::Result<bool> {
    // SAFETY: an all-zero stat is a valid value for fstat to fill.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a live descriptor into a writable struct.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if stat.st_mode & libc::S_IFMT != kind {
        return Ok(false);
    }
    // SAFETY: fchown and fchmod on a live descriptor.
    let rc = unsafe {
        if libc::fchown(fd.as_raw_fd(), 0, 0) == 0 {
            libc::fchmod(fd.as_raw_fd(), mode)
        } else {
            -1
        }
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}

/// Makes the snapshot directory `dir` and its two files root's and
/// read-only, through descriptors that follow no link: a jailed VMM made
/// them, and with templates shared by every later pod, none of that pod's
/// may change them.
fn seal(dir: &Path) -> Result<(), TemplateError> {
    let not_snapshot = |reason| TemplateError::NotSnapshot {
        path: dir.display().to_string(),
        reason,
    };
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let name = dir
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| not_snapshot("not a directory name"))?;
    let parent = File::open(parent).map_err(io_error("open", parent))?;
    let parent = OwnedFd::from(parent);
    let flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let fd = open_beneath(&parent, name, flags).map_err(io_error("open", dir))?;
    if !seal_fd(&fd, libc::S_IFDIR, 0o755).map_err(io_error("seal", dir))? {
        return Err(not_snapshot("not a directory"));
    }
    for file in [MEMORY_FILE, STATE_FILE] {
        let path = dir.join(file);
        let file = open_beneath(&fd, file, libc::O_RDONLY).map_err(io_error("open", &path))?;
        if !seal_fd(&file, libc::S_IFREG, 0o444).map_err(io_error("seal", &path))? {
            return Err(not_snapshot("holds something that is not a file"));
        }
    }
    Ok(())
}

/// vmpod-vm's error line in its log at `path` when it refused the template
/// itself (damaged, truncated, or taken of another VM) — then the template
/// is removed; `None` when it failed otherwise or not at all.
pub(super) fn refusal(vmm_log: &Path) -> Option<String> {
    let mut file = File::open(vmm_log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(LOG_END)))
        .ok()?;
    let mut bytes = Vec::new();
    file.take(LOG_END).read_to_end(&mut bytes).ok()?;
    refusal_in(&String::from_utf8_lossy(&bytes))
}

/// The refusal in the end of a vmm log (see [`refusal`]): vmpod-vm's last
/// `vmpod-vm: error:` line, if it names the snapshot.
fn refusal_in(log: &str) -> Option<String> {
    let line = log
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("vmpod-vm: error: "))?;
    let snapshot = ["snapshot", "Snapshot"]
        .iter()
        .any(|word| line.contains(word));
    snapshot.then(|| line.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> TemplateInputs {
        TemplateInputs {
            kernel: "aa".into(),
            initrd: "bb".into(),
            vmm: "cc".into(),
            memory_mib: 256,
            vcpus: 1,
            cpu_template: "auto".into(),
            cmdline: "console=ttyS0".into(),
            devices: vec!["vsock".into(), "fs:vmpod".into(), "rng".into()],
        }
    }

    type Change = Box<dyn Fn(&mut TemplateInputs)>;

    #[test]
    fn test_the_key_changes_with_every_input() {
        let base = inputs().key();
        assert_eq!(base.len(), 64);
        assert_eq!(base, inputs().key(), "the key is stable");
        let changes: [(&str, Change); 9] = [
            ("kernel", Box::new(|i| i.kernel = "ab".into())),
            ("initrd", Box::new(|i| i.initrd = "bc".into())),
            ("vmm", Box::new(|i| i.vmm = "cd".into())),
            ("memory", Box::new(|i| i.memory_mib = 512)),
            ("vcpus", Box::new(|i| i.vcpus = 2)),
            ("cpu template", Box::new(|i| i.cpu_template = "host".into())),
            ("cmdline", Box::new(|i| i.cmdline.push_str(" quiet"))),
            ("a net", Box::new(|i| i.devices.insert(0, "net".into()))),
            ("no rng", Box::new(|i| i.devices.truncate(2))),
        ];
        let mut keys = vec![base];
        for (what, change) in changes {
            let mut changed = inputs();
            change(&mut changed);
            let key = changed.key();
            assert!(!keys.contains(&key), "{what}: the key did not change");
            keys.push(key);
        }
    }

    #[test]
    fn test_the_key_hashes_file_contents() {
        let dir = std::env::temp_dir().join(format!("vmpod-template-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("initrd");
        std::fs::write(&file, b"initrd").unwrap();
        let first = sha256_file(&file).unwrap();
        std::fs::write(&file, b"initrd plus").unwrap();
        assert_ne!(first, sha256_file(&file).unwrap());
        let err = sha256_file(&dir.join("none")).unwrap_err();
        assert!(err.to_string().starts_with("open "), "{err}");
        // The cache answers for the same file, and not once it changed.
        let cache = dir.join("cache");
        let hash = sha256_cached(&file, &cache).unwrap();
        assert_eq!(hash, sha256_file(&file).unwrap());
        let entry = std::fs::read_dir(&cache)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&entry, "f".repeat(64)).unwrap();
        assert_eq!(sha256_cached(&file, &cache).unwrap(), "f".repeat(64));
        std::fs::write(&file, b"initrd changed").unwrap();
        assert_eq!(
            sha256_cached(&file, &cache).unwrap(),
            sha256_file(&file).unwrap()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_a_refused_template_is_told_from_other_failures() {
        let refused = [
            "vmpod-vm: error: Invalid snapshot /template/vmstate: the file is truncated",
            "vmpod-vm: error: Cannot restore the snapshot /template: the snapshot was taken \
             with initrd sha256 \"aa\", this VM has \"bb\"",
            "vmpod-vm: error: Cannot read the snapshot file /template/vmstate: No such file",
            "vmpod-vm: error: Cannot map the snapshot's memory file /template/memory: short",
        ];
        for line in refused {
            let log = format!("INFO starting\n{line}\n");
            assert_eq!(
                refusal_in(&log).as_deref(),
                line.strip_prefix("vmpod-vm: error: ")
            );
        }
        let others = [
            "INFO starting\nvmpod-vm: error: Cannot open the tap tap0_vmpod: busy\n",
            "WARN the snapshot of the console\n",
            "",
        ];
        for log in others {
            assert_eq!(refusal_in(log), None, "{log:?}");
        }
    }

    #[test]
    fn test_a_snapshot_is_sealed_and_moved_once() {
        let dir = std::env::temp_dir().join(format!("vmpod-keep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let snapshot = |name: &str| {
            let path = dir.join(name);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::write(path.join(STATE_FILE), b"state").unwrap();
            std::fs::write(path.join(MEMORY_FILE), b"memory").unwrap();
            path
        };
        let template = Template::new(&dir.join("templates"), &inputs());
        assert!(!template.exists());
        // One pod at a time makes a template.
        let claim = template.claim().expect("the first claim");
        assert!(template.claim().is_none(), "a second claim while held");
        drop(claim);
        let claim = template.claim().expect("a claim once let go");
        let first = snapshot("first");
        assert!(template.keep(&first).unwrap());
        drop(claim);
        assert!(template.exists() && !first.exists());
        let meta = std::fs::metadata(template.dir.join(STATE_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o444
        );
        // A second pod's snapshot of the same shape comes too late.
        let second = snapshot("second");
        assert!(!template.keep(&second).unwrap());
        assert!(!second.exists(), "the loser's snapshot is removed");
        // A snapshot without its state file, or with a link, is none.
        let partial = dir.join("partial");
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::write(partial.join(MEMORY_FILE), b"memory").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", partial.join(STATE_FILE)).unwrap();
        let other = Template::new(
            &dir.join("templates"),
            &TemplateInputs {
                vcpus: 2,
                ..inputs()
            },
        );
        let err = other.keep(&partial).unwrap_err();
        assert!(err.to_string().contains("partial/vmstate"), "{err}");
        assert!(!other.exists() && !partial.exists());
        template.remove().unwrap();
        assert!(!template.exists());
        template.remove().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
