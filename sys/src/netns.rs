// SPDX-License-Identifier: Apache-2.0
//! Working inside another network namespace without moving the process:
//! a short-lived thread enters it and makes what must belong to it (a
//! netlink socket, a tap); what it made stays in that namespace after the
//! thread ends, and the caller's threads stay where they were.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Runs `work` on a thread inside the network namespace `namespace` (an
/// open `/var/run/netns/NAME` or `/proc/PID/ns/net`), and returns what it
/// returned.
///
/// # Errors
/// setns(2)'s error (`work` then does not run), or an error of kind
/// `Other` if `work` panicked.
pub fn run_in<T: Send>(namespace: &File, work: impl FnOnce() -> T + Send) -> std::io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns on a descriptor we borrow for the call; it
                // moves only this short-lived thread.
                if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(work())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// Whether the test may create and enter namespaces; prints why not.
    fn root(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped {test}: needs root");
        }
        root
    }

    /// The inode of the calling thread's network namespace.
    fn current_namespace() -> u64 {
        std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
    }

    /// A new network namespace, made by a thread that unshares into it.
    fn new_namespace() -> File {
        std::thread::spawn(|| {
            // SAFETY: unshare moves only this thread, which ends here.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap()
    }

    #[test]
    fn test_work_runs_inside_the_namespace_and_the_caller_stays() {
        if !root("test_work_runs_inside_the_namespace_and_the_caller_stays") {
            return;
        }
        let namespace = new_namespace();
        let outside = current_namespace();
        let inside = run_in(&namespace, current_namespace).unwrap();
        assert_eq!(inside, namespace.metadata().unwrap().ino());
        assert_ne!(inside, outside);
        assert_eq!(current_namespace(), outside);
    }

    #[test]
    fn test_a_file_that_is_no_namespace_is_refused_before_the_work() {
        let file = File::open("/proc/self/status").unwrap();
        let mut ran = false;
        let err = run_in(&file, || ran = true).unwrap_err();
        assert!(err.raw_os_error().is_some(), "{err}");
        assert!(!ran);
    }

    #[test]
    fn test_a_panicking_work_is_an_error() {
        if !root("test_a_panicking_work_is_an_error") {
            return;
        }
        let namespace = File::open("/proc/self/ns/net").unwrap();
        let err = run_in(&namespace, || panic!("work failed")).unwrap_err();
        assert_eq!(err.to_string(), "the namespace thread panicked");
    }
}
