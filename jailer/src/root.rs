// SPDX-License-Identifier: Apache-2.0
//! The jail's root: a small tmpfs holding only what the VMM needs — the
//! binds the caller names (kernel and initrd read-only, the share, the
//! sockets' directory), `/dev/kvm`, `/dev/net/tun`, `/dev/urandom` and a
//! `/proc` of the jail's own PID namespace — made in the jail's private
//! mount namespace, then `pivot_root`ed into. The host's mounts propagate
//! into the jail (the namespace is a slave of the host's), so a container
//! mounted into the share after the VM started reaches it.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// The host devices the VMM opens; a missing optional one is left out.
const DEVICES: [(&str, bool); 3] = [
    ("/dev/kvm", true),
    ("/dev/net/tun", false),
    ("/dev/urandom", true),
];
/// The tmpfs of the jail's root holds directories and empty mount points
/// only.
const ROOT_TMPFS: &str = "mode=0755,size=64k,nr_inodes=256";

/// Failures of building or entering the jail's root.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A mount, directory or file of the jail could not be made.
    #[error("{what} {path}")]
    Io {
        /// The operation (mount, bind, create...).
        what: &'static str,
        /// The path, as the jailer sees it.
        path: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A required host device is missing.
    #[error("the host has no {0}")]
    NoDevice(&'static str),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootError {
    let path = path.display().to_string();
    move |source| RootError::Io { what, path, source }
}

/// A host file or directory bound into the jail: `HOST:JAIL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    /// The host path (absolute).
    pub host: PathBuf,
    /// Where the VMM sees it (absolute, without `.` or `..`).
    pub jail: PathBuf,
}

impl FromStr for Bind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        // The jail side never holds a colon; a host path may.
        let (host, jail) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} is not HOST:JAIL"))?;
        let (host, jail) = (PathBuf::from(host), PathBuf::from(jail));
        if !host.is_absolute() {
            return Err(format!("{}: not an absolute path", host.display()));
        }
        let normal = jail.is_absolute()
            && jail.components().skip(1).count() > 0
            && jail
                .components()
                .skip(1)
                .all(|c| matches!(c, Component::Normal(_)));
        if !normal {
            return Err(format!(
                "{}: not an absolute path below / without . or ..",
                jail.display()
            ));
        }
        if jail.starts_with("/dev") || jail.starts_with("/proc") {
            return Err(format!(
                "{}: /dev and /proc are the jailer's",
                jail.display()
            ));
        }
        Ok(Bind { host, jail })
    }
}

/// What the jail's root holds.
#[derive(Debug, Clone)]
pub struct RootSpec {
    /// The directory the root is built on (made if missing).
    pub dir: PathBuf,
    /// Bound read-only.
    pub read_only: Vec<Bind>,
    /// Bound writable (sub-mounts included).
    pub writable: Vec<Bind>,
}

/// `mount(2)` with C strings; `None` for absent arguments.
fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), RootError> {
    let c = |bytes: &[u8]| CString::new(bytes).map_err(|e| io_error("mount", target)(e.into()));
    let source = source.map(|s| c(s.as_os_str().as_bytes())).transpose()?;
    let target_c = c(target.as_os_str().as_bytes())?;
    let fstype = fstype.map(|s| c(s.as_bytes())).transpose()?;
    let data = data.map(|s| c(s.as_bytes())).transpose()?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string alive for the call,
    // or null where mount(2) accepts null.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io_error("mount", target)(std::io::Error::last_os_error()))
    }
}

impl RootSpec {
    /// The jail path `path` under the root directory.
    fn inside(&self, path: &Path) -> PathBuf {
        self.dir.join(path.strip_prefix("/").unwrap_or(path))
    }

    /// Builds the root in the calling process's (new) mount namespace: the
    /// namespace becomes a slave of the host's, a tmpfs goes on `dir`, and
    /// every bind and device is mounted onto an empty file or directory.
    ///
    /// # Errors
    /// [`RootError`] naming the mount.
    pub fn build(&self) -> Result<(), RootError> {
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_REC | libc::MS_SLAVE,
            None,
        )?;
        mount(
            Some(Path::new("tmpfs")),
            &self.dir,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some(ROOT_TMPFS),
        )?;
        const HARDENED: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        for bind in &self.read_only {
            self.bind(&bind.host, &bind.jail, HARDENED | libc::MS_RDONLY)?;
        }
        for bind in &self.writable {
            // A read-only source (a read-only share) stays read-only.
            let read_only = statvfs_read_only(&bind.host);
            let flags = HARDENED | if read_only { libc::MS_RDONLY } else { 0 };
            self.bind(&bind.host, &bind.jail, flags)?;
        }
        for (device, required) in DEVICES {
            let path = Path::new(device);
            if !path.exists() {
                if required {
                    return Err(RootError::NoDevice(device));
                }
                continue;
            }
            self.bind(path, path, libc::MS_NOSUID | libc::MS_NOEXEC)?;
        }
        let proc = self.inside(Path::new("/proc"));
        fs::create_dir_all(&proc).map_err(io_error("create", &proc))?;
        Ok(())
    }

    /// Binds `host` (and what is mounted below it) at `jail`, then sets the
    /// bind's own flags to `flags`.
    fn bind(&self, host: &Path, jail: &Path, flags: libc::c_ulong) -> Result<(), RootError> {
        let target = self.inside(jail);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(io_error("create", parent))?;
        }
        let meta = fs::metadata(host).map_err(io_error("bind", host))?;
        if meta.is_dir() {
            fs::create_dir(&target).map_err(io_error("create", &target))?;
        } else {
            fs::File::create(&target).map_err(io_error("create", &target))?;
        }
        mount(
            Some(host),
            &target,
            None,
            libc::MS_BIND | libc::MS_REC,
            None,
        )?;
        mount(
            None,
            &target,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | flags,
            None,
        )
    }

    /// In a mount namespace of its own, mounts the jail's `/proc` (from
    /// inside its new PID namespace), enters the root with `pivot_root`, lets go of the host's tree and makes the
    /// root's own tmpfs read-only.
    ///
    /// # Errors
    /// [`RootError`] naming the step.
    pub fn enter(&self) -> Result<(), RootError> {
        // A mount namespace of the jail's own (a copy of the jailer's, still
        // a slave of the host's): pivot_root moves the root of every process
        // of the namespace, and the jailer must keep the host's tree to clean
        // up after the jail.
        // SAFETY: unshare with a flag; the calling process is single-threaded.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(io_error("unshare the mount namespace of", &self.dir)(
                std::io::Error::last_os_error(),
            ));
        }
        let proc = self.inside(Path::new("/proc"));
        mount(
            Some(Path::new("proc")),
            &proc,
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        )?;
        std::env::set_current_dir(&self.dir).map_err(io_error("enter", &self.dir))?;
        let dot = c".";
        // SAFETY: pivot_root(".", ".") with a NUL-terminated string; the old
        // root is stacked on the new one and detached just below.
        if unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } != 0 {
            return Err(io_error("pivot_root into", &self.dir)(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: umount2 with a NUL-terminated string.
        if unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io_error("detach the host's root from", &self.dir)(
                std::io::Error::last_os_error(),
            ));
        }
        std::env::set_current_dir("/").map_err(io_error("enter", Path::new("/")))?;
        mount(
            None,
            Path::new("/"),
            None,
            libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC,
            None,
        )
    }
}

/// Whether the mount holding `path` is read-only.
fn statvfs_read_only(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statvfs writes only into the struct it is given.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable struct.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_flag & libc::ST_RDONLY != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_binds_parse_and_bad_ones_are_named() {
        assert_eq!(
            "/var/k:8:/kernel".parse::<Bind>(),
            Ok(Bind {
                host: "/var/k:8".into(),
                jail: "/kernel".into()
            })
        );
        for (bad, why) in [
            ("/var/k", "not HOST:JAIL"),
            ("var/k:/kernel", "var/k: not an absolute"),
            ("/var/k:kernel", "kernel: not an absolute"),
            ("/var/k:/", "not an absolute path below /"),
            ("/var/k:/a/../b", "without . or .."),
            ("/dev/sda:/dev/sda", "/dev and /proc are the jailer's"),
            ("/x:/proc/x", "/dev and /proc are the jailer's"),
        ] {
            let err = bad.parse::<Bind>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }
}
