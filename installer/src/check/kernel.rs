// SPDX-License-Identifier: Apache-2.0
//! The system calls the shim and the jailer need from the host kernel,
//! probed: each is called with arguments it must refuse (an invalid flag, a
//! bad descriptor), so nothing happens, and only `ENOSYS` — the kernel does
//! not have it — counts as missing.

use super::Line;

/// A system call to probe: its name, the kernel that brought it, and a
/// call that fails before doing anything.
struct Probe {
    name: &'static str,
    since: &'static str,
    call: fn() -> libc::c_long,
}

/// An invalid flag bit for every call below: none of them defines it.
const BAD_FLAGS: libc::c_uint = 1 << 31;

const PROBES: [Probe; 7] = [
    Probe {
        name: "openat2",
        since: "5.6",
        // SAFETY: a size of 0 is refused (EINVAL) before the null pointers
        // are read.
        call: || unsafe {
            libc::syscall(
                libc::SYS_openat2,
                -1,
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                0usize,
            )
        },
    },
    Probe {
        name: "open_tree",
        since: "5.2",
        // SAFETY: an unknown flag is refused before the path is read.
        call: || unsafe {
            libc::syscall(libc::SYS_open_tree, -1, std::ptr::null::<u8>(), BAD_FLAGS)
        },
    },
    Probe {
        name: "move_mount",
        since: "5.2",
        // SAFETY: an unknown flag is refused before the paths are read.
        call: || unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                -1,
                std::ptr::null::<u8>(),
                -1,
                std::ptr::null::<u8>(),
                BAD_FLAGS,
            )
        },
    },
    Probe {
        name: "fsopen",
        since: "5.2",
        // SAFETY: an unknown flag (or missing privilege) is refused before
        // the name is read.
        call: || unsafe { libc::syscall(libc::SYS_fsopen, std::ptr::null::<u8>(), BAD_FLAGS) },
    },
    Probe {
        name: "fsconfig",
        since: "5.2",
        // SAFETY: an unknown command on a bad descriptor; no pointer is read.
        call: || unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                -1,
                BAD_FLAGS,
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                0,
            )
        },
    },
    Probe {
        name: "fsmount",
        since: "5.2",
        // SAFETY: an unknown flag on a bad descriptor; no pointer.
        call: || unsafe { libc::syscall(libc::SYS_fsmount, -1, BAD_FLAGS, 0) },
    },
    Probe {
        name: "mount_setattr",
        since: "5.12",
        // SAFETY: an unknown flag is refused before the pointers are read.
        call: || unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                std::ptr::null::<u8>(),
                BAD_FLAGS,
                std::ptr::null::<u8>(),
                0usize,
            )
        },
    },
];

/// One line for path resolution (`openat2`) and one for the mount API.
pub(super) fn syscalls() -> Vec<Line> {
    let release = release();
    let missing = |names: &[&str]| -> Vec<String> {
        PROBES
            .iter()
            .filter(|probe| names.contains(&probe.name))
            .filter(|probe| {
                (probe.call)() == -1
                    && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS)
            })
            .map(|probe| format!("{} (Linux {})", probe.name, probe.since))
            .collect()
    };
    let groups: [(&str, &[&str]); 2] = [
        ("kernel: openat2", &["openat2"]),
        (
            "kernel: mount API",
            &[
                "open_tree",
                "move_mount",
                "fsopen",
                "fsconfig",
                "fsmount",
                "mount_setattr",
            ],
        ),
    ];
    groups
        .iter()
        .map(|(what, names)| {
            let lacking = missing(names);
            if lacking.is_empty() {
                Line::ok(*what, format!("{} on Linux {release}", names.join(", ")))
            } else {
                Line::missing(
                    *what,
                    format!("Linux {release} lacks {}", lacking.join(", ")),
                )
            }
        })
        .collect()
}

/// The running kernel's release (`uname -r`).
fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "(unknown release)".to_owned())
}
