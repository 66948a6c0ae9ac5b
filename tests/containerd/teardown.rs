// SPDX-License-Identifier: Apache-2.0
//! Stopping a [`Containerd`] so that nothing of it is left: its tasks,
//! its process, the shims serving it and their descendants, what their
//! tasks left outside its directory, its mounts and its directory.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::host::{wait_gone, with_descendants};
use super::{Containerd, HOST_STATE, KILL_TIMEOUT, NAMESPACE, TASK_CLEANUP_TIMEOUT, TERM_TIMEOUT};

impl Containerd {
    /// Stops containerd and removes everything it left: tasks still there
    /// are deleted through containerd first (so that their shims clean up
    /// as in production), then containerd gets SIGTERM (SIGKILL after
    /// 10 s), shims still serving it are killed with their descendants
    /// (containers, VMs) and what their tasks left in [`HOST_STATE`] and
    /// the cgroups removed, the mounts below its directory detached, and
    /// its directory removed. Idempotent; drop calls it.
    ///
    /// # Errors
    /// A message listing what could not be cleaned up (all of it was tried).
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut problems = Vec::new();
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                self.delete_tasks();
            }
            terminate(&mut child);
        }
        let shims = self.shim_pids();
        let victims = with_descendants(&shims);
        for pid in victims
            .iter()
            .filter_map(|&pid| libc::pid_t::try_from(pid).ok())
        {
            // SAFETY: kill has no memory-safety preconditions; the pids are
            // this containerd's shims and their descendants, just listed.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if !wait_gone(&victims, KILL_TIMEOUT) {
            problems.push(format!("processes {victims:?} survived SIGKILL"));
        }
        let cgroup_roots = cgroup_roots();
        self.remove_task_leftovers(&cgroup_roots);
        if let Err(e) = vmpod_sys::mountinfo::unmount_below(&self.dir) {
            problems.push(format!("unmount below {}: {e}", self.dir.display()));
        }
        // Empty unless another test's containers are in them.
        for root in &cgroup_roots {
            let _ = fs::remove_dir(root.join(NAMESPACE));
        }
        let _ = fs::remove_dir(Path::new(HOST_STATE).join("runc").join(NAMESPACE));
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            problems.push(format!("rm -r {}: {e}", self.dir.display()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Deletes (killing them first) the tasks and containers left in our
    /// namespace, within [`TASK_CLEANUP_TIMEOUT`] overall.
    fn delete_tasks(&self) {
        let deadline = Instant::now() + TASK_CLEANUP_TIMEOUT;
        let left = || deadline.saturating_duration_since(Instant::now());
        let ids = |kind: &str| -> Vec<String> {
            self.ctr_with_input(&[kind, "ls", "-q"], b"", left())
                .stdout
                .lines()
                .map(str::to_string)
                .collect()
        };
        for id in ids("tasks") {
            self.ctr_with_input(&["tasks", "rm", "-f", &id], b"", left());
        }
        for id in ids("containers") {
            self.ctr_with_input(&["containers", "rm", &id], b"", left());
        }
    }

    /// Removes what the tasks of killed shims leave outside our directory,
    /// which their shims and ctr would have removed: the task's cgroups,
    /// and in containerd's compiled-in [`HOST_STATE`] (whatever our config
    /// says) the shim's socket (named in the bundle's `address`), runc's
    /// state and ctr's FIFOs.
    fn remove_task_leftovers(&self, cgroup_roots: &[PathBuf]) {
        let Ok(bundles) = fs::read_dir(self.tasks_dir()) else {
            return;
        };
        for bundle in bundles.flatten() {
            if let Ok(address) = fs::read_to_string(bundle.path().join("address")) {
                let socket = Path::new(address.trim().trim_start_matches("unix://"));
                if fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = fs::remove_file(socket);
                }
            }
            let id = bundle.file_name();
            let _ =
                fs::remove_dir_all(Path::new(HOST_STATE).join("runc").join(NAMESPACE).join(&id));
            for root in cgroup_roots {
                let _ = fs::remove_dir(root.join(NAMESPACE).join(&id));
            }
            if let Some(id) = id.to_str() {
                remove_fifo_dirs(id);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.stopped {
            eprintln!("containerd's log (tail):\n{}", self.log_tail(60));
        }
        if let Err(e) = self.stop() {
            eprintln!("containerd teardown: {e}");
        }
    }
}

/// SIGTERM, then SIGKILL after [`TERM_TIMEOUT`]; reaps the child.
fn terminate(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // unreaped child's, so it cannot name another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let start = Instant::now();
    while start.elapsed() < TERM_TIMEOUT {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The mount points of the cgroup hierarchies (one per controller on a
/// cgroup v1 host, plus the unified one on a hybrid host).
fn cgroup_roots() -> Vec<PathBuf> {
    vmpod_sys::mountinfo::mounts()
        .unwrap_or_default()
        .into_iter()
        .filter(|mount| matches!(mount.fs_type.as_str(), "cgroup" | "cgroup2"))
        .map(|mount| mount.point)
        .collect()
}

/// Removes ctr's FIFO directories for container `id` (ctr makes one per
/// process, holding `<id>-stdin`, `-stdout`, `-stderr`, and removes it
/// only when it sees the process end).
fn remove_fifo_dirs(id: &str) {
    let Ok(dirs) = fs::read_dir(Path::new(HOST_STATE).join("fifo")) else {
        return;
    };
    let ours = |name: &std::ffi::OsStr| {
        name.to_str().is_some_and(|name| {
            ["-stdin", "-stdout", "-stderr"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix) == Some(id))
        })
    };
    for dir in dirs.flatten() {
        let Ok(entries) = fs::read_dir(dir.path()) else {
            continue;
        };
        let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        if !names.is_empty() && names.iter().all(|name| ours(name)) {
            let _ = fs::remove_dir_all(dir.path());
        }
    }
}
