// SPDX-License-Identifier: Apache-2.0
//! Persistent tap devices: made by the shim in the pod's namespace before
//! the VM starts (so tc can join them to the CNI's interface first), opened
//! by `vmpod-vm`, deleted by the shim at teardown.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Creates the persistent tap `name` (with virtio-net headers, as
/// `vmpod-vm` opens it) in `namespace`.
///
/// # Errors
/// Not an interface name, or opening `/dev/net/tun`, TUNSETIFF (e.g. the
/// name is taken) or TUNSETPERSIST failed.
pub fn create(namespace: &File, name: &str) -> std::io::Result<()> {
    vmpod_sys::netns::run_in(namespace, || create_here(name))?
}

fn create_here(name: &str) -> std::io::Result<()> {
    let mut ifr = vmpod_sys::ifname::ifreq(name).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not an interface name ({})", vmpod_sys::ifname::RULE),
        )
    })?;
    // IFF_TUN_EXCL: a tap of that name already there is an error, not ours
    // to take over.
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL) as i16;
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TUNSETPERSIST takes an integer argument.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
