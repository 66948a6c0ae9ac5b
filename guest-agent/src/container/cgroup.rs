// SPDX-License-Identifier: Apache-2.0
//! A container's cgroup v2: created under the sandbox's, OCI resources
//! written to its files (converted as runc converts them), freezer, stats,
//! kill and removal.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

/// How long to wait for a freeze or for the last process to leave.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures of cgroup files.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A file could not be written or read.
    #[error("{path}")]
    Io {
        /// The cgroup file.
        path: String,
        /// The kernel's refusal (a value out of range, a busy cgroup).
        #[source]
        source: io::Error,
    },
    /// A resource is asked for but its controller is not enabled here.
    #[error(
        "{resource} needs the {controller} cgroup controller, which this cgroup does not have"
    )]
    NoController {
        /// The OCI resource.
        resource: &'static str,
        /// The controller.
        controller: &'static str,
    },
    /// A `unified` key that is not a file name of this cgroup.
    #[error("linux.resources.unified key {0:?} is not a cgroup file name")]
    UnifiedKey(String),
    /// A value out of range.
    #[error("{0}")]
    Value(String),
    /// Freezing or emptying did not settle in time.
    #[error("cgroup {path} did not become {state} in time")]
    Timeout {
        /// The cgroup.
        path: String,
        /// What it should have become.
        state: &'static str,
    },
}

/// One container's (or the sandbox's) cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Cgroup {
    /// Creates (or takes over) `parent/name` and enables for its children
    /// every controller it has.
    ///
    /// # Errors
    ///
    /// [`CgroupError::Io`] when the directory cannot be made.
    pub fn create(parent: &Path, name: &str) -> Result<Self, CgroupError> {
        let path = parent.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(io_error(&path)(source)),
        }
        Ok(Cgroup { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Turns on every controller this cgroup has for its children (a
    /// cgroup with children holds no processes, so only the sandbox's).
    pub fn delegate_controllers(&self) {
        crate::pid1::enable_cgroup_controllers(&self.path);
    }

    /// The directory open, for clone3's CLONE_INTO_CGROUP.
    ///
    /// # Errors
    ///
    /// [`CgroupError::Io`].
    pub fn open(&self) -> Result<File, CgroupError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&self.path)
            .map_err(io_error(&self.path))
    }

    fn has_controller(&self, controller: &str) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.controllers"))
            .is_ok_and(|list| list.split_whitespace().any(|c| c == controller))
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        std::fs::write(&path, value).map_err(io_error(&path))
    }

    fn read(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.path.join(file)).ok()
    }

    /// Writes `memory.swap.max`. A kernel without swap accounting (the
    /// guest's has no swap) has no such file, and no container swaps:
    /// no swap (containerd's CRI plugin asks for it with every memory
    /// limit) and unlimited swap hold as they are, as runc takes them
    /// there; any other amount cannot be given.
    fn apply_swap(&self, value: String) -> Result<(), CgroupError> {
        if self.path.join("memory.swap.max").exists() {
            self.write("memory.swap.max", &value)
        } else if value == "0" || value == "max" {
            Ok(())
        } else {
            Err(CgroupError::Value(format!(
                "memory.swap: {value} bytes of swap, and this kernel has no swap"
            )))
        }
    }

    fn need(&self, resource: &'static str, controller: &'static str) -> Result<(), CgroupError> {
        if self.has_controller(controller) {
            Ok(())
        } else {
            Err(CgroupError::NoController {
                resource,
                controller,
            })
        }
    }

    /// Writes the OCI resources to the cgroup's files. Every resource that
    /// is set is applied or refused: none is silently dropped.
    ///
    /// # Errors
    ///
    /// [`CgroupError`] naming the resource, controller or file.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), CgroupError> {
        if let Some(memory) = resources.memory() {
            if let Some(limit) = memory.limit() {
                self.need("memory.limit", "memory")?;
                self.write("memory.max", &limit_text(limit))?;
            }
            if let Some(reservation) = memory.reservation() {
                self.need("memory.reservation", "memory")?;
                self.write("memory.low", &limit_text(reservation))?;
            }
            if let Some(swap) = memory.swap() {
                self.need("memory.swap", "memory")?;
                self.apply_swap(swap_max(swap, memory.limit())?)?;
            }
        }
        if let Some(cpu) = resources.cpu() {
            if let Some(shares) = cpu.shares() {
                self.need("cpu.shares", "cpu")?;
                self.write("cpu.weight", &shares_to_weight(shares).to_string())?;
            }
            if cpu.quota().is_some() || cpu.period().is_some() {
                self.need("cpu.quota", "cpu")?;
                let period = cpu.period().unwrap_or(100_000);
                let quota = match cpu.quota() {
                    Some(quota) if quota > 0 => quota.to_string(),
                    _ => "max".to_owned(),
                };
                self.write("cpu.max", &format!("{quota} {period}"))?;
            }
            if let Some(cpus) = cpu.cpus().as_deref().filter(|c| !c.is_empty()) {
                self.need("cpu.cpus", "cpuset")?;
                self.write("cpuset.cpus", cpus)?;
            }
            if let Some(mems) = cpu.mems().as_deref().filter(|m| !m.is_empty()) {
                self.need("cpu.mems", "cpuset")?;
                self.write("cpuset.mems", mems)?;
            }
        }
        if let Some(pids) = resources.pids() {
            self.need("pids.limit", "pids")?;
            let limit = pids.limit();
            let value = if limit > 0 {
                limit.to_string()
            } else {
                "max".to_owned()
            };
            self.write("pids.max", &value)?;
        }
        for (key, value) in resources.unified().iter().flatten() {
            if key.contains('/') || key.starts_with('.') || !key.contains('.') {
                return Err(CgroupError::UnifiedKey(key.clone()));
            }
            self.write(key, value)?;
        }
        Ok(())
    }

    /// Freezes (or thaws) every process and waits until it took effect.
    ///
    /// # Errors
    ///
    /// [`CgroupError`] when the freezer cannot be written or does not
    /// settle.
    pub fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        self.write("cgroup.freeze", if frozen { "1" } else { "0" })?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        self.settle(
            |cgroup| {
                cgroup
                    .read("cgroup.events")
                    .is_some_and(|events| events.lines().any(|line| line == want))
            },
            if frozen { "frozen" } else { "thawed" },
        )
    }

    /// Whether the freezer holds the cgroup.
    pub fn is_frozen(&self) -> bool {
        self.read("cgroup.freeze").is_some_and(|v| v.trim() == "1")
    }

    /// PIDs of the cgroup's processes.
    pub fn pids(&self) -> Vec<u32> {
        self.read("cgroup.procs")
            .map(|list| list.lines().filter_map(|pid| pid.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process of the cgroup (cgroup.kill, Linux 5.14) and
    /// waits until it is empty.
    ///
    /// # Errors
    ///
    /// [`CgroupError`] when the processes do not go.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        tracing::info!("killing every process of {}", self.path.display());
        if self.write("cgroup.kill", "1").is_err() {
            for pid in self.pids() {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        self.settle(|cgroup| cgroup.pids().is_empty(), "empty")
    }

    /// Removes the directory (the cgroup must be empty).
    ///
    /// # Errors
    ///
    /// [`CgroupError::Io`] when it is still populated.
    pub fn remove(&self) -> Result<(), CgroupError> {
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io_error(&self.path)(source)),
        }
    }

    /// The number of OOM kills so far (`memory.events`).
    pub fn oom_kills(&self) -> u64 {
        self.keyed("memory.events", "oom_kill").unwrap_or(0)
    }

    /// A value of a flat keyed file (`key value` lines).
    pub fn keyed(&self, file: &str, key: &str) -> Option<u64> {
        self.read(file)?.lines().find_map(|line| {
            let (name, value) = line.split_once(' ')?;
            (name == key).then(|| value.trim().parse().ok()).flatten()
        })
    }

    /// A single-value file; "max" is 0.
    pub fn value(&self, file: &str) -> Option<u64> {
        let text = self.read(file)?;
        let text = text.trim();
        if text == "max" {
            Some(0)
        } else {
            text.parse().ok()
        }
    }

    fn settle(&self, done: impl Fn(&Self) -> bool, state: &'static str) -> Result<(), CgroupError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while !done(self) {
            if Instant::now() > deadline {
                return Err(CgroupError::Timeout {
                    path: self.path.display().to_string(),
                    state,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}

fn limit_text(limit: i64) -> String {
    if limit < 0 {
        "max".to_owned()
    } else {
        limit.to_string()
    }
}

/// cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), as runc.
fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 100;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// cgroup v2's `memory.swap.max` for OCI's `swap` (memory + swap) and
/// memory `limit`.
fn swap_max(swap: i64, limit: Option<i64>) -> Result<String, CgroupError> {
    match (swap, limit) {
        (swap, _) if swap < 0 => Ok("max".to_owned()),
        (swap, Some(limit)) if limit > 0 => {
            if swap < limit {
                return Err(CgroupError::Value(format!(
                    "memory.swap {swap} is below memory.limit {limit}"
                )));
            }
            Ok((swap - limit).to_string())
        }
        (swap, _) => Ok(swap.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory standing for a cgroup with the memory controller and,
    /// with `swap`, swap accounting.
    fn fake_cgroup(name: &str, swap: bool) -> Cgroup {
        let path = std::env::temp_dir().join(format!("vmpod-cgroup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("cgroup.controllers"), "cpu memory pids").unwrap();
        if swap {
            std::fs::write(path.join("memory.swap.max"), "max").unwrap();
        }
        Cgroup { path }
    }

    fn memory(limit: i64, swap: i64) -> LinuxResources {
        serde_json::from_value(serde_json::json!({"memory": {"limit": limit, "swap": swap}}))
            .unwrap()
    }

    #[test]
    fn test_no_swap_holds_without_swap_accounting_and_more_is_refused() {
        let cgroup = fake_cgroup("no-swap", false);
        cgroup.apply(&memory(1 << 24, 1 << 24)).unwrap();
        assert!(!cgroup.path().join("memory.swap.max").exists());
        assert_eq!(cgroup.read("memory.max").as_deref(), Some("16777216"));
        cgroup.apply(&memory(1 << 24, -1)).unwrap();
        let err = cgroup.apply(&memory(1 << 24, 1 << 25)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "memory.swap: 16777216 bytes of swap, and this kernel has no swap"
        );
        std::fs::remove_dir_all(cgroup.path()).unwrap();
    }

    #[test]
    fn test_swap_max_is_the_swap_beyond_the_limit() {
        let cgroup = fake_cgroup("swap", true);
        cgroup.apply(&memory(1 << 24, 1 << 25)).unwrap();
        assert_eq!(cgroup.read("memory.swap.max").as_deref(), Some("16777216"));
        assert!(matches!(
            cgroup.apply(&memory(1 << 25, 1 << 24)),
            Err(CgroupError::Value(_))
        ));
        std::fs::remove_dir_all(cgroup.path()).unwrap();
    }

    #[test]
    fn test_shares_to_weight_as_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(0), 100);
    }

    #[test]
    fn test_negative_limits_are_max() {
        assert_eq!(limit_text(-1), "max");
        assert_eq!(limit_text(4096), "4096");
    }
}
