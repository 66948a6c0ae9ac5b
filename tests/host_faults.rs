// SPDX-License-Identifier: Apache-2.0
//! The guest fault some KVM hosts show (`docs/kvm-hosts.md`, "Known host
//! faults"): at random, a guest process dies of a general protection fault
//! in its start-up. A test knows it by its signature, never by the host's
//! kind: the process ended with status [`FAULT_STATUS`] and a new
//! [`FAULT_LINE`] showed on its VM's console. Then it tries the step again
//! (at most [`RETRIES`] times), says so in a line, and sums the retries up
//! when it ends ([`Retries`]), so that a run shows how often it happened.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::containerd::NAMESPACE;

/// The status of a process killed by SIGSEGV (128 + 11), which the guest
/// kernel sends for a general protection fault in user code.
pub const FAULT_STATUS: i32 = 139;

/// What the guest kernel prints on its console for the fault:
/// `traps: <name>[pid] general protection fault ip:... in busybox[...]`.
pub const FAULT_LINE: &str = "general protection fault";

/// How often a step is tried again after the fault killed its guest
/// process. On a host that shows it, a pod's first process faulted in 2 of
/// 7 test runs (a `true` in 6 of 8 bench runs), an exec in about a quarter
/// of tries: nine attempts make a spurious failure rare.
pub const RETRIES: usize = 8;

/// How often a console that does not exist yet is looked for.
const OPEN_POLL: Duration = Duration::from_millis(50);

/// The guest console of pod `pod` below the vmpod shim's `state-dir`.
pub fn pod_console(pods: &Path, pod: &str) -> PathBuf {
    pods.join(NAMESPACE).join(pod).join("console.log")
}

/// A guest process that died of the host fault: the console lines that
/// showed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFault {
    lines: Vec<String>,
}

impl std::fmt::Display for HostFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {FAULT_STATUS}, console: {}",
            self.lines.join(" | ")
        )
    }
}

/// The console from the point this watch starts, through a handle opened
/// as soon as the file exists: what a step printed stays readable after
/// `ctr run --rm` removed its pod's directory.
#[derive(Debug)]
pub struct ConsoleWatch {
    /// The open console and the offset where this watch's part begins.
    opened: Arc<Mutex<Option<(File, u64)>>>,
    /// Ends the thread that waits for the console to appear.
    stop: Arc<AtomicBool>,
}

impl ConsoleWatch {
    /// Watches `console` from its current end (from its start if it does
    /// not exist yet: a pod that is still to boot).
    pub fn start(console: &Path) -> ConsoleWatch {
        let now = File::open(console).ok().map(|file| {
            let end = file.metadata().map_or(0, |meta| meta.len());
            (file, end)
        });
        let waiting = now.is_none();
        let opened = Arc::new(Mutex::new(now));
        let stop = Arc::new(AtomicBool::new(false));
        if waiting {
            let (opened, stop, console) = (opened.clone(), stop.clone(), console.to_owned());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(file) = File::open(&console) {
                        if let Ok(mut opened) = opened.lock() {
                            *opened = Some((file, 0));
                        }
                        return;
                    }
                    std::thread::sleep(OPEN_POLL);
                }
            });
        }
        ConsoleWatch { opened, stop }
    }

    /// The fault lines the console showed since the watch started.
    pub fn fault_lines(&self) -> Vec<String> {
        let Ok(mut opened) = self.opened.lock() else {
            return Vec::new();
        };
        let Some((file, from)) = opened.as_mut() else {
            return Vec::new();
        };
        let mut text = Vec::new();
        if file.seek(SeekFrom::Start(*from)).is_err() || file.read_to_end(&mut text).is_err() {
            return Vec::new();
        }
        fault_lines(&String::from_utf8_lossy(&text))
    }

    /// The fault, if a process of this console that ended with `status`
    /// (`None`: not known) died of it: the fault's status and a new fault
    /// line.
    pub fn fault(&self, status: Option<i32>) -> Option<HostFault> {
        if status != Some(FAULT_STATUS) {
            return None;
        }
        let lines = self.fault_lines();
        (!lines.is_empty()).then_some(HostFault { lines })
    }
}

impl Drop for ConsoleWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn fault_lines(console: &str) -> Vec<String> {
    console
        .lines()
        .filter(|line| line.contains(FAULT_LINE))
        .map(|line| line.trim().to_owned())
        .collect()
}

/// The steps one test (or benchmark) tried again because their guest
/// process died of the host fault: each retry is said as it happens, and
/// the sum on drop, also when there was none.
#[derive(Debug)]
pub struct Retries {
    test: String,
    steps: Mutex<Vec<String>>,
}

impl Retries {
    /// No retries yet, for `test`.
    pub fn new(test: &str) -> Retries {
        Retries {
            test: test.to_owned(),
            steps: Mutex::new(Vec::new()),
        }
    }

    /// Says that `step` died of `fault` and is tried again, and counts it.
    pub fn again(&self, step: &str, fault: &HostFault) {
        eprintln!("host fault: {step}: {fault}; trying it again");
        if let Ok(mut steps) = self.steps.lock() {
            steps.push(step.to_owned());
        }
    }

    /// Runs `step` (given the attempt number, for fresh ids) and again as
    /// long as its guest process, whose status `status` reads from the
    /// outcome, died of the host fault on `console`, at most [`RETRIES`]
    /// times; any other outcome, or the last, is returned.
    pub fn run<T>(
        &self,
        console: &Path,
        what: &str,
        mut step: impl FnMut(usize) -> T,
        status: impl Fn(&T) -> Option<i32>,
    ) -> T {
        let mut attempt = 0;
        loop {
            let watch = ConsoleWatch::start(console);
            let outcome = step(attempt);
            match watch.fault(status(&outcome)) {
                Some(fault) if attempt < RETRIES => self.again(what, &fault),
                _ => return outcome,
            }
            attempt += 1;
        }
    }

    /// `host faults: N retries (steps: ...)`, naming each step retried
    /// with its count.
    pub fn summary(&self) -> String {
        let steps = self
            .steps
            .lock()
            .map(|steps| steps.clone())
            .unwrap_or_default();
        let mut counted: Vec<(String, usize)> = Vec::new();
        for step in &steps {
            match counted.iter_mut().find(|(name, _)| name == step) {
                Some((_, count)) => *count += 1,
                None => counted.push((step.clone(), 1)),
            }
        }
        let named: Vec<String> = counted
            .iter()
            .map(|(name, count)| match count {
                1 => name.clone(),
                _ => format!("{name} x{count}"),
            })
            .collect();
        format!(
            "host faults: {} retries (steps: {}) in {}",
            steps.len(),
            if named.is_empty() {
                "none".to_owned()
            } else {
                named.join(", ")
            },
            self.test
        )
    }
}

impl Drop for Retries {
    fn drop(&mut self) {
        eprintln!("{}", self.summary());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAULT: &str = "[   41.5] traps: sh[77] general protection fault ip:4a4d02 \
                         sp:7ffc error:0 in busybox[401000+b6000]";

    fn console(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmpod-host-faults-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn test_a_fault_needs_both_the_status_and_a_new_console_line() {
        let path = console("both");
        std::fs::write(&path, format!("boot\n{FAULT}\n")).unwrap();
        let watch = ConsoleWatch::start(&path);
        assert_eq!(watch.fault(Some(FAULT_STATUS)), None, "an old line");
        std::fs::write(&path, format!("boot\n{FAULT}\n{FAULT}\n")).unwrap();
        assert_eq!(watch.fault(Some(1)), None, "another status");
        assert_eq!(watch.fault(None), None, "no status");
        let fault = watch.fault(Some(FAULT_STATUS)).expect("the signature");
        assert_eq!(fault.to_string(), format!("status 139, console: {FAULT}"));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn test_a_console_stays_readable_after_its_removal() {
        let path = console("removed");
        let _ = std::fs::remove_file(&path);
        let watch = ConsoleWatch::start(&path);
        std::fs::write(&path, "boot\n").unwrap();
        std::thread::sleep(OPEN_POLL * 10);
        std::fs::write(&path, format!("boot\n{FAULT}\n")).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(watch.fault_lines(), [FAULT]);
    }

    #[test]
    fn test_retries_repeat_a_faulted_step_and_sum_up() {
        let path = console("retries");
        std::fs::write(&path, "boot\n").unwrap();
        let retries = Retries::new("unit");
        assert_eq!(
            retries.summary(),
            "host faults: 0 retries (steps: none) in unit"
        );
        let mut text = String::from("boot\n");
        let status = retries.run(
            &path,
            "exec e",
            |attempt| {
                if attempt < 2 {
                    text.push_str(FAULT);
                    text.push('\n');
                    std::fs::write(&path, &text).unwrap();
                    FAULT_STATUS
                } else {
                    0
                }
            },
            |status| Some(*status),
        );
        assert_eq!(status, 0);
        assert_eq!(
            retries.summary(),
            "host faults: 2 retries (steps: exec e x2) in unit"
        );
        // Status 139 without a new fault line is the step's own outcome.
        assert_eq!(
            retries.run(&path, "exec f", |_| FAULT_STATUS, |s| Some(*s)),
            FAULT_STATUS
        );
        let _ = std::fs::remove_file(&path);
    }
}
