// SPDX-License-Identifier: Apache-2.0
//! What the host's `/proc` says about a jailed `vmpod-vm`: each thread's
//! credentials, capabilities and `NoNewPrivs`, its namespaces, its root, its
//! cgroups and limits.

use std::path::{Path, PathBuf};

/// The capabilities a jailed vmpod-vm keeps (chown, dac_override, fowner,
/// fsetid, setgid, setuid), as `/proc/PID/status` shows a set.
pub const KEPT_CAPS: &str = "00000000000000db";

/// The fields of one line of a status file (`Uid:` → its four values).
pub fn field(status: &str, name: &str) -> Vec<String> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|values| values.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// The `status` file of every thread of `pid`, with the thread's id.
pub fn thread_statuses(pid: u32) -> Vec<(String, String)> {
    let mut statuses: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|task| {
                    let status = std::fs::read_to_string(task.path().join("status")).ok()?;
                    Some((task.file_name().to_string_lossy().into_owned(), status))
                })
                .collect()
        })
        .unwrap_or_default();
    statuses.sort();
    statuses
}

/// The namespace `kind` of process `pid` (`mnt:[4026531840]`), or of the
/// namespace file at `path`.
pub fn namespace(pid: u32, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|link| link.display().to_string())
        .unwrap_or_default()
}

/// The inode of a namespace file (a netns bind mount), as `net:[INODE]`.
pub fn namespace_file(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|meta| format!("net:[{}]", meta.ino()))
        .unwrap_or_default()
}

/// The names in directory `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|dir| {
            dir.flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The cgroup paths of process `pid`, one per hierarchy.
pub fn cgroups(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2).map(str::to_owned))
        .collect()
}

/// The soft limit `name` (`Max address space`) of process `pid`.
pub fn limit(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()?
        .lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| {
            line[name.len()..]
                .split_whitespace()
                .next()
                .map(str::to_owned)
        })
}

/// The directories of cgroup `path` (`/a/b`) in every hierarchy mounted.
pub fn cgroup_dirs(path: &str) -> Vec<PathBuf> {
    vmpod_sys::mountinfo::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|mount| mount.fs_type == "cgroup" || mount.fs_type == "cgroup2")
        .map(|mount| mount.point.join(path.trim_start_matches('/')))
        .collect()
}
