// SPDX-License-Identifier: Apache-2.0
//! Working inside a pod's network namespace without moving the shim: a
//! short-lived thread enters it and makes what must belong to it (a netlink
//! socket, a tap); what it made stays in that namespace after the thread ends.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use rtnetlink::Handle;

/// Runs `work` on a thread inside the network namespace `namespace`.
///
/// # Errors
/// setns(2)'s error; `work`'s own result is returned inside `Ok`.
pub fn run_in<T: Send>(namespace: &File, work: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a descriptor we own; it moves only this
                // short-lived thread.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(work())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

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
    let (connection, handle, _) = run_in(namespace, || {
        let _entered = runtime.enter();
        rtnetlink::new_connection()
    })??;
    tokio::spawn(connection);
    Ok(handle)
}
