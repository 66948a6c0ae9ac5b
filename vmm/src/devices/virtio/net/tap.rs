// SPDX-License-Identifier: Apache-2.0
//! A Linux tap device with virtio-net headers (`IFF_VNET_HDR`): frames
//! read and written carry the same 12-byte header the guest uses, so they
//! pass between the queues and the tap unchanged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::VNET_HDR_LEN;

/// Errors opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is not a valid interface name.
    #[error("Invalid tap name '{0}'")]
    Name(String),
    /// The tap does not exist and was not to be created.
    #[error("The tap {0} does not exist (add ',create' to --net to create it)")]
    Missing(String),
    /// /dev/net/tun cannot be opened.
    #[error("Cannot open /dev/net/tun for the tap {0}")]
    OpenTun(String, #[source] std::io::Error),
    /// TUNSETIFF failed: not a tap, busy, or no permission.
    #[error("Cannot attach to the tap {0}")]
    Attach(String, #[source] std::io::Error),
    /// The network namespace cannot be opened or entered.
    #[error("Cannot enter the network namespace {0} for the tap {1}")]
    Netns(std::path::PathBuf, String, #[source] std::io::Error),
    /// TUNSETVNETHDRSZ failed.
    #[error("Cannot set the virtio-net header size of the tap {0}")]
    HeaderSize(String, #[source] std::io::Error),
}

/// An open tap; a tap this process created goes away when it is dropped.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

impl Tap {
    /// Opens the tap `name`, creating it if it is missing and `create` is
    /// set (a created tap is not persistent: it vanishes with the VM).
    ///
    /// # Errors
    /// [`TapError`] naming the tap.
    pub fn open(name: &str, create: bool) -> Result<Self, TapError> {
        let mut ifr =
            vmpod_sys::ifname::ifreq(name).ok_or_else(|| TapError::Name(name.to_string()))?;
        // Asked of the calling thread's network namespace (sysfs would show
        // the one it was mounted in).
        let existed = interface_exists(name);
        if !existed && !create {
            return Err(TapError::Missing(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| TapError::OpenTun(name.to_string(), e))?;
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes the ifreq we own.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } != 0 {
            return Err(TapError::Attach(
                name.to_string(),
                std::io::Error::last_os_error(),
            ));
        }
        let header_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads the int we pass a pointer to.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &header_len) } != 0 {
            return Err(TapError::HeaderSize(
                name.to_string(),
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Tap {
            file,
            name: name.to_string(),
            created: !existed,
        })
    }

    /// Opens the tap `name` in the network namespace at `netns` (a pod's),
    /// from a thread that enters it: the tap stays in that namespace, the
    /// VMM's own threads stay in theirs.
    ///
    /// # Errors
    /// [`TapError`] naming the tap, or [`TapError::Netns`].
    pub fn open_in(netns: &Path, name: &str, create: bool) -> Result<Self, TapError> {
        let netns_error = |e| TapError::Netns(netns.to_path_buf(), name.to_string(), e);
        let namespace = File::open(netns).map_err(netns_error)?;
        vmpod_sys::netns::run_in(&namespace, || Tap::open(name, create)).map_err(netns_error)?
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this process created the tap (it then goes away with it).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Reads one frame (with its header); `WouldBlock` when none waits.
    ///
    /// # Errors
    /// The read's error.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    /// Writes one frame (with its header).
    ///
    /// # Errors
    /// The write's error (a full tap queue is `WouldBlock`).
    pub fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// Whether the calling thread's network namespace has an interface `name`.
fn interface_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads the NUL-terminated name we own.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with_tun(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || !Path::new("/dev/net/tun").exists() {
            eprintln!("skipped {test}: needs root and /dev/net/tun");
            return false;
        }
        true
    }

    #[test]
    fn test_names_are_checked() {
        assert!(matches!(Tap::open("", true), Err(TapError::Name(_))));
        assert!(matches!(Tap::open("a/b", true), Err(TapError::Name(_))));
        assert!(matches!(
            Tap::open("sixteen-bytes-xx", true),
            Err(TapError::Name(_))
        ));
    }

    #[test]
    fn test_missing_tap_without_create_is_an_error() {
        let err = Tap::open("vmpodnotap0", false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The tap vmpodnotap0 does not exist (add ',create' to --net to create it)"
        );
    }

    #[test]
    fn test_created_tap_goes_away_with_the_device() {
        if !root_with_tun("test_created_tap_goes_away_with_the_device") {
            return;
        }
        let name = format!("vmpodt{}", std::process::id() % 100_000);
        let sysfs = Path::new("/sys/class/net").join(&name);
        let tap = Tap::open(&name, true).unwrap();
        assert!(tap.created());
        assert!(sysfs.exists());
        drop(tap);
        assert!(!sysfs.exists(), "created tap left behind");
    }

    #[test]
    fn test_missing_netns_is_an_error() {
        let err = Tap::open_in(Path::new("/nonexistent/netns"), "t0", true).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Cannot enter the network namespace /nonexistent/netns for the tap t0"
        );
    }
}
