// SPDX-License-Identifier: Apache-2.0
//! What the containerd tests look at on the host: whether they can run
//! here, its processes, mounts and sockets.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Containerd, BUSYBOX};

impl Containerd {
    /// The live shim processes serving this containerd: `containerd-shim-*`
    /// processes whose command line names its socket (they are not its
    /// children: shims daemonise).
    pub fn shim_pids(&self) -> Vec<u32> {
        let address = self.address.as_os_str().as_bytes();
        live_processes()
            .into_iter()
            .filter(|p| {
                p.argv.first().is_some_and(|argv0| {
                    basename(argv0).starts_with(b"containerd-shim")
                        && p.argv.iter().any(|arg| arg.as_slice() == address)
                })
            })
            .map(|p| p.pid)
            .collect()
    }
}

/// Why containerd tests cannot run here: not root, or a missing tool
/// (containerd, ctr, tar, sha256sum, busybox, and `extra_tools`).
pub fn skip_reason(extra_tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("containerd and its shims need root".into());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!(
            "{BUSYBOX} is missing (apt-get install busybox-static)"
        ));
    }
    ["containerd", "ctr", "tar", "sha256sum"]
        .iter()
        .chain(extra_tools)
        .find(|tool| find_in_path(tool).is_none())
        .map(|tool| format!("{tool} is not on PATH (apt-get install containerd runc)"))
}

/// Whether `test` can run containerd (with `extra_tools`); if not, prints
/// `SKIP` and why, and returns false.
///
/// # Panics
/// If it cannot and VMPOD_REQUIRE_AGENT is set (./test.sh installs the
/// prerequisites, so there a skip would hide a failure).
pub fn containerd_or_skip(test: &str, extra_tools: &[&str]) -> bool {
    match skip_reason(extra_tools) {
        None => true,
        Some(reason) if std::env::var_os("VMPOD_REQUIRE_AGENT").is_some() => {
            panic!("{test}: cannot run: {reason}")
        }
        Some(reason) => {
            eprintln!("SKIP {test}: {reason}");
            false
        }
    }
}

/// The mount points at or below `path`, from /proc/self/mountinfo (which
/// names them canonically: pass a canonical path); none if it cannot be
/// read.
pub fn mounts_below(path: &Path) -> Vec<PathBuf> {
    vmpod_sys::mountinfo::points_below(path).unwrap_or_default()
}

/// How many mounts are at or below `path`.
pub fn count_mounts_below(path: &Path) -> usize {
    mounts_below(path).len()
}

/// The pids of live (not zombie) processes called `name`: by the file name
/// of their argv[0], or by their comm (which the kernel cuts at 15 bytes).
pub fn processes_named(name: &str) -> Vec<u32> {
    live_processes()
        .into_iter()
        .filter(|p| {
            p.argv
                .first()
                .is_some_and(|argv0| basename(argv0) == name.as_bytes())
                || p.comm == name
        })
        .map(|p| p.pid)
        .collect()
}

/// The Unix sockets at or below `dir` (symlinks not followed), sorted.
pub fn unix_sockets_below(dir: &Path) -> Vec<PathBuf> {
    let mut sockets = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_socket() {
            sockets.push(path);
        } else if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    sockets.sort();
    sockets
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
}

/// A process of /proc that is not a zombie.
struct Process {
    pid: u32,
    ppid: u32,
    comm: String,
    argv: Vec<Vec<u8>>,
}

/// The live processes; zombies do not count (on hosts whose PID 1 does not
/// reap, exited shims stay as zombies).
fn live_processes() -> Vec<Process> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...", comm possibly holding ") ".
            let (head, tail) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1.to_string();
            let mut fields = tail.split(' ');
            if matches!(fields.next()?, "Z" | "X") {
                return None;
            }
            let ppid = fields.next()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let argv = cmdline
                .split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            Some(Process {
                pid,
                ppid,
                comm,
                argv,
            })
        })
        .collect()
}

fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// `roots` and all their live descendants.
pub(super) fn with_descendants(roots: &[u32]) -> Vec<u32> {
    let processes = live_processes();
    let mut all = roots.to_vec();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            processes
                .iter()
                .filter(|p| p.ppid == parent && !all.contains(&p.pid))
                .map(|p| p.pid)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    all
}

/// Whether all of `pids` are gone (or zombies) within `timeout`.
pub(super) fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        let live = live_processes();
        if !live.iter().any(|p| pids.contains(&p.pid)) {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
