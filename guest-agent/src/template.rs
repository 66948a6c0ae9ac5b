// SPDX-License-Identifier: Apache-2.0
//! Readying a VM about to become a template: guest kernel work that every
//! pod restored from the template would otherwise repeat is done once,
//! before the snapshot. Where the guest's supervisor mode is emulated that
//! work costs seconds per pod: the device program's verification (see
//! `container::device_cgroup`), and the per-CPU memory that a pod's cgroups
//! take, which the kernel populates in a worker after the first cgroups are
//! made — the next clone then waited ~2.5 s for it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::container::cgroup::{Cgroup, CgroupError};

/// The scratch cgroups' directory under the cgroup root: a leading dot, so
/// never a sandbox's (`vmpod-<id>`, ids start with no dot).
const SCRATCH: &str = ".vmpod-template";
/// How often the kernel's per-CPU memory is read while it settles.
const SETTLE_POLL: Duration = Duration::from_millis(200);
/// For how long it must stay the same to count as settled.
const SETTLED_FOR: Duration = Duration::from_secs(1);
/// The longest wait for it to settle (the template is made anyway).
const SETTLE_LIMIT: Duration = Duration::from_secs(15);

/// What [`warm_cgroups`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Warmed {
    /// The kernel's per-CPU memory (`Percpu` of /proc/meminfo) once
    /// settled, in KiB; `None` where the kernel does not say.
    pub percpu_kib: Option<u64>,
    /// Whether it settled within [`SETTLE_LIMIT`].
    pub settled: bool,
}

/// Makes a pod's cgroups under `root` as CreateSandbox and CreateContainer
/// make them (a cgroup with every controller delegated, and one below it),
/// removes them, and waits for the kernel's per-CPU memory to settle.
///
/// # Errors
///
/// [`CgroupError`] when a cgroup cannot be made or removed (what was made
/// is removed).
pub fn warm_cgroups(root: &Path) -> Result<Warmed, CgroupError> {
    let pod = Cgroup::create(root, SCRATCH)?;
    pod.delegate_controllers();
    let made = Cgroup::create(pod.path(), "container").and_then(|container| container.remove());
    let removed = pod.remove();
    made.and(removed)?;
    Ok(settle(read_percpu_kib))
}

/// Reads `percpu` every [`SETTLE_POLL`] until it stays the same for
/// [`SETTLED_FOR`], at most [`SETTLE_LIMIT`].
fn settle(mut percpu: impl FnMut() -> Option<u64>) -> Warmed {
    let started = Instant::now();
    let mut last = percpu();
    let mut same_since = Instant::now();
    while started.elapsed() < SETTLE_LIMIT {
        std::thread::sleep(SETTLE_POLL);
        let now = percpu();
        if now != last {
            last = now;
            same_since = Instant::now();
        } else if same_since.elapsed() >= SETTLED_FOR {
            return Warmed {
                percpu_kib: last,
                settled: true,
            };
        }
    }
    Warmed {
        percpu_kib: last,
        settled: false,
    }
}

/// `Percpu:` of /proc/meminfo, in KiB.
fn read_percpu_kib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_percpu_kib(&meminfo)
}

fn parse_percpu_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix("Percpu:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_percpu_is_read_from_meminfo() {
        let meminfo = "MemTotal:  246000 kB\nPercpu:       1344 kB\nHugePages_Total: 0\n";
        assert_eq!(parse_percpu_kib(meminfo), Some(1344));
        assert_eq!(parse_percpu_kib("MemTotal: 1 kB\n"), None);
        assert_eq!(parse_percpu_kib("Percpu: lots kB\n"), None);
    }

    #[test]
    fn test_settling_waits_for_a_steady_value() {
        let mut readings = [100, 120, 140, 140, 140, 140, 140, 140, 140, 140]
            .into_iter()
            .map(Some);
        let mut calls = 0;
        let warmed = settle(|| {
            calls += 1;
            readings.next().unwrap_or(Some(140))
        });
        assert_eq!(
            warmed,
            Warmed {
                percpu_kib: Some(140),
                settled: true
            }
        );
        // Two changes, then five polls the same.
        assert!(calls >= 8, "{calls}");
    }
}
