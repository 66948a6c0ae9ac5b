// SPDX-License-Identifier: Apache-2.0
//! The pod's cgroup, from an OCI `cgroupsPath`: a cgroupfs path
//! (`/kubepods/pod1/abc`) or systemd's `slice:prefix:name`
//! (`kubepods-pod1.slice:cri-containerd:abc`, which names
//! `/kubepods.slice/kubepods-pod1.slice/cri-containerd-abc.scope`).
//!
//! The path is taken below the root of every cgroup hierarchy mounted on the
//! host — the one cgroup2 hierarchy on a unified host; each v1 controller
//! hierarchy and the cgroup2 one on a hybrid host — so a process placed
//! there is accounted to the pod by every controller the host has. Missing
//! directories are made (as runc's cgroupfs driver makes them); on a systemd
//! host the scope is made in cgroupfs directly, not registered with systemd.

use std::collections::HashSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// A cgroup directory's name may be at most this long (NAME_MAX).
const MAX_NAME: usize = 255;
/// How long [`remove`] waits for a killed process to leave a cgroup.
const REMOVE_WAIT: Duration = Duration::from_secs(5);

/// Failures of placing a process in the pod's cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The `cgroupsPath` cannot be used.
    #[error("cgroup path {path:?}: {reason}")]
    Path {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No cgroup hierarchy is mounted.
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    /// The mount table cannot be read.
    #[error("reading the mount table")]
    Mounts(#[source] std::io::Error),
    /// A cgroup directory or control file could not be made, read or written.
    #[error("{what} {path}")]
    Io {
        /// The operation (create, join, remove...).
        what: &'static str,
        /// The directory or file.
        path: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.display().to_string();
    move |source| CgroupError::Io { what, path, source }
}

/// A checked `cgroupsPath`: the same relative path below every hierarchy's
/// root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupPath(PathBuf);

impl CgroupPath {
    /// Parses a spec's `cgroupsPath`. Relative cgroupfs paths (relative to
    /// the runtime's own cgroup) are refused: a pod's cgroup must not depend
    /// on where the shim happens to run.
    ///
    /// # Errors
    /// [`CgroupError::Path`] naming the fault.
    pub fn parse(path: &str) -> Result<Self, CgroupError> {
        let bad = |reason| CgroupError::Path {
            path: path.to_owned(),
            reason,
        };
        let relative = if let Some(absolute) = path.strip_prefix('/') {
            PathBuf::from(absolute)
        } else if path.matches(':').count() == 2 {
            let mut parts = path.splitn(3, ':');
            let (slice, prefix, name) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            systemd_path(slice, prefix, name).map_err(bad)?
        } else {
            return Err(bad(
                "neither an absolute cgroupfs path nor systemd's slice:prefix:name",
            ));
        };
        let mut names = 0;
        for component in relative.components() {
            match component {
                Component::Normal(name) if name.len() <= MAX_NAME => names += 1,
                Component::Normal(_) => return Err(bad("a name is longer than 255 bytes")),
                _ => return Err(bad("it holds . or .. components")),
            }
        }
        if names == 0 {
            return Err(bad("it names the root cgroup"));
        }
        Ok(CgroupPath(relative.components().collect()))
    }

    /// The path below a hierarchy's root.
    pub fn relative(&self) -> &Path {
        &self.0
    }
}

/// systemd's unit path of `slice:prefix:name`: the slice expanded to its
/// parents (`a-b.slice` is `a.slice/a-b.slice`), then the scope
/// `prefix-name.scope` (a name that is itself a `.slice` is a slice).
fn systemd_path(slice: &str, prefix: &str, name: &str) -> Result<PathBuf, &'static str> {
    if [slice, prefix, name].iter().any(|part| part.contains('/')) {
        return Err("a systemd slice, prefix or name holds a /");
    }
    if name.is_empty() {
        return Err("the systemd unit name is empty");
    }
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut path = expand_slice(slice)?;
    if name.ends_with(".slice") {
        path.push(name);
    } else if prefix.is_empty() {
        path.push(format!("{name}.scope"));
    } else {
        path.push(format!("{prefix}-{name}.scope"));
    }
    Ok(path)
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the root.
fn expand_slice(slice: &str) -> Result<PathBuf, &'static str> {
    let stem = slice
        .strip_suffix(".slice")
        .ok_or("the systemd slice does not end in .slice")?;
    let mut path = PathBuf::new();
    if stem == "-" {
        return Ok(path);
    }
    if stem.is_empty() || stem.starts_with('-') || stem.ends_with('-') || stem.contains("--") {
        return Err("the systemd slice is not a valid slice name");
    }
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Ok(path)
}

/// The mount points of the host's cgroup hierarchies, one per hierarchy
/// (a hierarchy mounted twice counts once).
///
/// # Errors
/// The mount table cannot be read, or holds no cgroup hierarchy.
pub fn hierarchies() -> Result<Vec<PathBuf>, CgroupError> {
    let mut devices = HashSet::new();
    let mounts: Vec<PathBuf> = vmpod_sys::mountinfo::mounts()
        .map_err(CgroupError::Mounts)?
        .into_iter()
        .filter(|mount| mount.fs_type == "cgroup" || mount.fs_type == "cgroup2")
        .map(|mount| mount.point)
        .filter(|point| fs::metadata(point).is_ok_and(|meta| devices.insert(meta.dev())))
        .collect();
    if mounts.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    Ok(mounts)
}

/// Where a process was and is: per hierarchy, the pod's cgroup and the
/// process's cgroup before it joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The pod's cgroup directory in each hierarchy.
    pub dirs: Vec<PathBuf>,
    /// The process's previous cgroup directory in each hierarchy, where one
    /// was found (same order as `dirs`).
    pub previous: Vec<Option<PathBuf>>,
}

/// Moves process `pid` (all its threads) into `path` in every hierarchy,
/// making the missing directories.
///
/// # Errors
/// [`CgroupError`] naming the directory or file.
pub fn join(path: &CgroupPath, pid: u32) -> Result<Joined, CgroupError> {
    let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut joined = Joined {
        dirs: Vec::new(),
        previous: Vec::new(),
    };
    for hierarchy in hierarchies()? {
        let dir = hierarchy.join(path.relative());
        make_dirs(&hierarchy, path.relative())?;
        joined.previous.push(current_cgroup(&hierarchy, &own, pid));
        move_process(&dir, pid)?;
        joined.dirs.push(dir);
    }
    Ok(joined)
}

/// Writes `pid` into `dir`'s `cgroup.procs`.
///
/// # Errors
/// [`CgroupError::Io`] naming the file.
pub fn move_process(dir: &Path, pid: u32) -> Result<(), CgroupError> {
    let procs = dir.join("cgroup.procs");
    fs::write(&procs, pid.to_string()).map_err(io_error("join", &procs))
}

/// Makes `relative` below `hierarchy`, directory by directory. A new cpuset
/// (v1) gets its parent's CPUs and memory nodes, without which nothing can
/// join it.
fn make_dirs(hierarchy: &Path, relative: &Path) -> Result<(), CgroupError> {
    let mut dir = hierarchy.to_path_buf();
    for name in relative.components() {
        let parent = dir.clone();
        dir.push(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(io_error("create", &dir)(err)),
        }
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = fs::read_to_string(parent.join(file)) {
                let own = dir.join(file);
                if fs::read_to_string(&own).is_ok_and(|v| v.trim().is_empty()) {
                    fs::write(&own, value.trim()).map_err(io_error("write", &own))?;
                }
            }
        }
    }
    Ok(())
}

/// The directory of `pid`'s cgroup in `hierarchy`: the line of
/// `/proc/PID/cgroup` (`own`) whose directory lists the process.
fn current_cgroup(hierarchy: &Path, own: &str, pid: u32) -> Option<PathBuf> {
    own.lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .map(|path| hierarchy.join(path.trim_start_matches('/')))
        .find(|dir| {
            fs::read_to_string(dir.join("cgroup.procs"))
                .is_ok_and(|procs| procs.lines().any(|line| line == pid.to_string()))
        })
}

/// Removes the pod's cgroup `dirs` (not their parents, which may be
/// another's: as runc, only the leaf), waiting up to [`REMOVE_WAIT`] for
/// killed processes to leave. A directory already gone is no error.
///
/// # Errors
/// The first directory that could not be removed.
pub fn remove(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let deadline = std::time::Instant::now() + REMOVE_WAIT;
    for dir in dirs {
        loop {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(err) if err.kind() == ErrorKind::NotFound => break,
                Err(err)
                    if err.raw_os_error() == Some(libc::EBUSY)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => return Err(io_error("remove", dir)(err)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(path: &str) -> String {
        CgroupPath::parse(path)
            .map(|p| p.relative().display().to_string())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn test_cgroupfs_and_systemd_paths() {
        assert_eq!(parsed("/default/pod1"), "default/pod1");
        assert_eq!(
            parsed("/kubepods/burstable/podx/abc/"),
            "kubepods/burstable/podx/abc"
        );
        assert_eq!(
            parsed("kubepods-burstable-pod1.slice:cri-containerd:abc"),
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope"
        );
        assert_eq!(parsed(":vmpod:abc"), "system.slice/vmpod-abc.scope");
        assert_eq!(parsed("-.slice::abc"), "abc.scope");
        assert_eq!(parsed("a.slice::b-c.slice"), "a.slice/b-c.slice");
    }

    #[test]
    fn test_bad_paths_are_named() {
        for (path, reason) in [
            ("default/pod1", "neither an absolute"),
            ("/", "the root cgroup"),
            ("/a/../b", ". or .."),
            ("a:b:c/d", "holds a /"),
            ("a:b:", "unit name is empty"),
            ("a:b:c", "does not end in .slice"),
            ("a--b.slice:p:n", "not a valid slice name"),
        ] {
            let err = parsed(path);
            assert!(err.starts_with(&format!("cgroup path {path:?}")), "{err}");
            assert!(err.contains(reason), "{path}: {err}");
        }
        let long = format!("/{}", "x".repeat(256));
        assert!(parsed(&long).contains("longer than 255"));
    }

    #[test]
    fn test_every_mounted_hierarchy_is_found_once() {
        let Ok(found) = hierarchies() else {
            eprintln!("skipped: no cgroup hierarchy mounted");
            return;
        };
        let unique: HashSet<_> = found.iter().collect();
        assert_eq!(unique.len(), found.len());
        for dir in &found {
            assert!(dir.join("cgroup.procs").is_file(), "{}", dir.display());
        }
    }

    #[test]
    fn test_a_process_joins_and_the_leaf_is_removed() {
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } != 0 || hierarchies().is_err() {
            eprintln!("skipped: needs root and a cgroup hierarchy");
            return;
        }
        let name = format!("/vmpod-jailer-test-{}/leaf", std::process::id());
        let path = CgroupPath::parse(&name).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let joined = join(&path, child.id()).unwrap();
        assert_eq!(joined.dirs.len(), hierarchies().unwrap().len());
        for (dir, previous) in joined.dirs.iter().zip(&joined.previous) {
            let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|l| l == child.id().to_string()),
                "{}",
                dir.display()
            );
            assert!(
                previous.is_some(),
                "{}: previous cgroup not found",
                dir.display()
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
        remove(&joined.dirs).unwrap();
        let parents: Vec<_> = joined
            .dirs
            .iter()
            .filter_map(|d| d.parent())
            .map(Path::to_path_buf)
            .collect();
        remove(&parents).unwrap();
        assert!(joined.dirs.iter().all(|d| !d.exists()));
    }
}
