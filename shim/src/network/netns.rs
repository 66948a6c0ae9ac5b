// SPDX-License-Identifier: Apache-2.0
//! Reaching into a pod's network namespace without moving the shim: its
//! file, and a netlink socket made inside it (by a thread that enters it,
//! [`vmpod_sys::netns::run_in`]) that stays there.

use std::fs::File;
use std::path::Path;

use rtnetlink::Handle;

/// Opens the network namespace file at `path` (e.g. `/var/run/netns/NAME`).
///
/// # Errors
/// The open's error.
pub fn open(path: &Path) -> std::io::Result<File> {
    File::open(path)
}

/// An rtnetlink handle whose socket lives in `namespace`; its connection
/// runs on the caller's tokio runtime.
///
/// # Errors
/// setns(2)'s or the socket's error.
pub fn netlink(namespace: &File) -> std::io::Result<Handle> {
    let runtime = tokio::runtime::Handle::current();
    let (connection, handle, _) = vmpod_sys::netns::run_in(namespace, || {
        let _entered = runtime.enter();
        rtnetlink::new_connection()
    })??;
    tokio::spawn(connection);
    Ok(handle)
}
