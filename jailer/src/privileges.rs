// SPDX-License-Identifier: Apache-2.0
//! What the VMM may do once jailed: resource limits, the pod's uid and gid,
//! and only the capabilities its in-process virtio-fs server needs to serve
//! the guest's file operations (the set virtiofsd keeps, without mknod and
//! setfcap), kept across `execve` as ambient capabilities and dropped from
//! the bounding set; `NoNewPrivs` on top.
//!
//! The uid switches of the virtio-fs server (fuse-backend-rs changes the
//! effective uid of a serving thread per request, and back to 0) must not
//! cost the process its capabilities, as the kernel's setuid fix-up would
//! once no uid is 0: `SECBIT_NO_SETUID_FIXUP` is set and locked. The server
//! uses `CAP_SETUID` for those switches, so the uid is the pod's identity
//! (its files, its processes, its limits), not a wall: the walls are the
//! bounding set, `NoNewPrivs`, the namespaces and the seccomp filters.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities the jailed VMM keeps: what fuse-backend-rs's
/// passthrough server uses to act as the guest's users on the share.
pub const KEPT: [Capability; 6] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
];
/// The highest capability number a kernel may know (the bounding set is
/// cleared up to it; numbers the kernel does not know are skipped).
const LAST_CAPABILITY: u32 = 63;

/// securebits(7): capabilities do not follow uid changes, and uid 0 gains
/// nothing at `execve`; both locked.
const SECURE_BITS: libc::c_ulong = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3);

/// The process's resource limits in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `RLIMIT_NOFILE`: open files.
    pub open_files: u64,
    /// `RLIMIT_AS` in bytes: the address space (guest RAM + the VMM's own).
    pub address_space: u64,
}

/// Failures of dropping privileges.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// A system call refused.
    #[error("{0}")]
    Call(&'static str, #[source] std::io::Error),
    /// The capability sets could not be set.
    #[error("{0}")]
    Caps(&'static str, #[source] caps::errors::CapsError),
}

fn check(what: &'static str, rc: libc::c_long) -> Result<(), PrivilegeError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PrivilegeError::Call(what, std::io::Error::last_os_error()))
    }
}

/// Sets the resource limits (soft and hard; at most the current hard
/// limit) and forbids core dumps (a core
/// of the VMM would write the guest's memory to the host's disk).
///
/// # Errors
/// [`PrivilegeError::Call`] naming the limit.
pub fn set_limits(limits: Limits) -> Result<(), PrivilegeError> {
    for (resource, value, what) in [
        (
            libc::RLIMIT_NOFILE,
            limits.open_files,
            "setrlimit(RLIMIT_NOFILE)",
        ),
        (
            libc::RLIMIT_AS,
            limits.address_space,
            "setrlimit(RLIMIT_AS)",
        ),
        (libc::RLIMIT_CORE, 0, "setrlimit(RLIMIT_CORE)"),
    ] {
        // Above the hard limit needs CAP_SYS_RESOURCE, which the jailer
        // may not have: the limit is then the hard one.
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let rc = unsafe { libc::getrlimit(resource, &mut current) };
        check(what, rc.into())?;
        let value = value.min(current.rlim_max);
        let limit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct it is given.
        check(what, unsafe { libc::setrlimit(resource, &limit) }.into())?;
    }
    Ok(())
}

/// Becomes `id` (uid and gid, no supplementary groups) with only [`KEPT`]:
/// bounding set first (which needs `CAP_SETPCAP`), then the securebits, the
/// ids, the sets and the ambient set that carries them across `execve`,
/// and `NoNewPrivs`. The calling process must be single-threaded.
///
/// # Errors
/// [`PrivilegeError`] naming the step.
pub fn drop_to(id: u32) -> Result<(), PrivilegeError> {
    let kept: CapsHashSet = KEPT.into_iter().collect();
    for number in 0..=LAST_CAPABILITY {
        if kept.iter().any(|cap| u32::from(cap.index()) == number) {
            continue;
        }
        // SAFETY: prctl with integer arguments.
        let rc =
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(number), 0, 0, 0) };
        let err = std::io::Error::last_os_error();
        if rc != 0 && err.raw_os_error() != Some(libc::EINVAL) {
            return Err(PrivilegeError::Call("prctl(PR_CAPBSET_DROP)", err));
        }
    }
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, SECURE_BITS, 0, 0, 0) };
    check("prctl(PR_SET_SECUREBITS)", rc.into())?;
    // SAFETY: setgroups with an empty list.
    let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
    check("setgroups", rc.into())?;
    // SAFETY: setresgid/setresuid with integer arguments.
    check("setresgid", unsafe { libc::setresgid(id, id, id) }.into())?;
    // SAFETY: as above.
    check("setresuid", unsafe { libc::setresuid(id, id, id) }.into())?;
    for (set, what) in [
        (CapSet::Inheritable, "setting the inheritable capabilities"),
        (CapSet::Effective, "setting the effective capabilities"),
        (CapSet::Permitted, "setting the permitted capabilities"),
    ] {
        caps::set(None, set, &kept).map_err(|e| PrivilegeError::Caps(what, e))?;
    }
    caps::set(None, CapSet::Ambient, &kept)
        .map_err(|e| PrivilegeError::Caps("raising the ambient capabilities", e))?;
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check("prctl(PR_SET_NO_NEW_PRIVS)", rc.into())
}

/// Makes the calling process die with its parent, which must be `parent`
/// (if it is not any more, it died before the call: the process exits).
/// `None`: the parent is in an ancestor PID namespace, where `getppid`
/// cannot see it; the caller checks otherwise.
///
/// # Errors
/// [`PrivilegeError::Call`] if prctl refuses.
pub fn die_with_parent(parent: Option<libc::pid_t>) -> Result<(), PrivilegeError> {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    check("prctl(PR_SET_PDEATHSIG)", rc.into())?;
    // SAFETY: getppid has no preconditions.
    if parent.is_some_and(|parent| unsafe { libc::getppid() } != parent) {
        // SAFETY: _exit ends the process without running its destructors.
        unsafe { libc::_exit(1) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `work` in a forked child and returns its exit status.
    fn in_child(work: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the test process forks; the child runs `work` and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = work();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        libc::WEXITSTATUS(status)
    }

    #[test]
    fn test_dropped_to_an_id_with_only_the_kept_capabilities() {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let status = in_child(|| {
            if drop_to(54321).is_err() {
                return 10;
            }
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            let kept = KEPT.iter().fold(0u64, |m, c| m | (1 << c.index()));
            let hex = format!("{kept:016x}");
            let checks = [
                field("Uid:") == ["54321"; 4],
                field("Gid:") == ["54321"; 4],
                field("Groups:").is_empty(),
                field("CapEff:") == [hex.as_str()],
                field("CapPrm:") == [hex.as_str()],
                field("CapBnd:") == [hex.as_str()],
                field("CapAmb:") == [hex.as_str()],
                field("NoNewPrivs:") == ["1"],
            ];
            if let Some(failed) = checks.iter().position(|ok| !ok) {
                eprintln!("check {failed} failed:\n{status}");
                return 20 + failed as i32;
            }
            // The virtio-fs server's switch to a guest uid and back to 0
            // keeps the capabilities (no setuid fix-up).
            // SAFETY: raw setresuid on this thread.
            let to_guest = unsafe { libc::syscall(libc::SYS_setresuid, -1, 1000, -1) };
            // SAFETY: as above.
            let back = unsafe { libc::syscall(libc::SYS_setresuid, -1, 0, -1) };
            // SAFETY: as above.
            let again = unsafe { libc::syscall(libc::SYS_setresuid, -1, 1000, -1) };
            if (to_guest, back, again) != (0, 0, 0) {
                return 40;
            }
            let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
            if effective.len() != KEPT.len() {
                return 41;
            }
            0
        });
        assert_eq!(status, 0, "see the child's stderr");
    }
}
