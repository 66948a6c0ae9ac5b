// SPDX-License-Identifier: Apache-2.0
//! Taps the jailed VMM may attach: a persistent tap made by the pod's
//! owner (the shim) needs `CAP_NET_ADMIN` to attach unless it belongs to
//! the attaching uid or group, and the jailed VMM has no `CAP_NET_ADMIN`.
//! The jailer, still root in the pod's network namespace, gives each named
//! tap to the jail's uid and gid.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Failures of handing a tap over.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// Not an interface name.
    #[error("tap {0:?}: not an interface name")]
    Name(String),
    /// `/dev/net/tun` or one of its ioctls refused.
    #[error("tap {name}: {what}")]
    Io {
        /// The tap.
        name: String,
        /// The step (open /dev/net/tun, TUNSETIFF, TUNSETOWNER, TUNSETGROUP).
        what: &'static str,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// Makes the existing persistent tap `name` (in the calling thread's
/// network namespace) attachable by `id` (uid and gid).
///
/// # Errors
/// [`TapError`] naming the tap and the step.
pub fn hand_over(name: &str, id: u32) -> Result<(), TapError> {
    let mut ifr = vmpod_sys::ifname::ifreq(name).ok_or_else(|| TapError::Name(name.to_owned()))?;
    let io = |what| {
        let name = name.to_owned();
        move |source| TapError::Io { name, what, source }
    };
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(io("open /dev/net/tun"))?;
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    let call = |request, arg: libc::c_ulong, what| {
        // SAFETY: tun ioctls on a descriptor we own, with an integer argument.
        if unsafe { libc::ioctl(tun.as_raw_fd(), request, arg) } == 0 {
            Ok(())
        } else {
            Err(io(what)(std::io::Error::last_os_error()))
        }
    };
    // SAFETY: TUNSETIFF reads and writes the ifreq we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } != 0 {
        return Err(io("TUNSETIFF")(std::io::Error::last_os_error()));
    }
    call(libc::TUNSETOWNER, libc::c_ulong::from(id), "TUNSETOWNER")?;
    call(libc::TUNSETGROUP, libc::c_ulong::from(id), "TUNSETGROUP")
}
