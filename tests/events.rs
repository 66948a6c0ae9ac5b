// SPDX-License-Identifier: Apache-2.0
//! containerd's events as `ctr events` prints them, collected in the
//! background: the containerd tests wait for the events a step must
//! publish, and read the exit status of a process that no `ctr` command
//! waited for (a detached task or exec).

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::containerd::{Containerd, NAMESPACE};

/// How often the collected lines are looked at while waiting.
const POLL: Duration = Duration::from_millis(100);

/// `ctr events` of one containerd, from its start on; stopped on drop (and
/// printed there when the thread panics).
#[derive(Debug)]
pub struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    deadline: Duration,
}

impl Events {
    /// Starts collecting; [`Events::expect`] waits up to `deadline` (how
    /// long a state change in the guest may take).
    ///
    /// # Panics
    /// If `ctr events` cannot be started.
    pub fn watch(containerd: &Containerd, deadline: Duration) -> Events {
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(containerd.address())
            .args(["--namespace", NAMESPACE, "events"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ctr events");
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout)
                    .lines()
                    .map_while(Result::ok)
                {
                    if let Ok(mut lines) = sink.lock() {
                        lines.push(line);
                    }
                }
            });
        }
        Events {
            child,
            lines,
            deadline,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|lines| lines.clone())
            .unwrap_or_default()
    }

    /// Waits for an event line containing every one of `parts`.
    ///
    /// # Panics
    /// When none came within the deadline, with every line seen.
    pub fn expect(&self, parts: &[&str]) {
        let deadline = Instant::now() + self.deadline;
        loop {
            let lines = self.lines();
            if lines
                .iter()
                .any(|line| parts.iter().all(|part| line.contains(part)))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no event with {parts:?} in:\n{}",
                lines.join("\n")
            );
            std::thread::sleep(POLL);
        }
    }

    /// The exit status in the `/tasks/exit` event of process `id` (a task's
    /// container id, or an exec id), waiting up to `within` for it; `None`
    /// when none came.
    pub fn exit_status(&self, id: &str, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            let status = self.lines().iter().find_map(|line| exit_of(line, id));
            if status.is_some() || Instant::now() >= deadline {
                return status;
            }
            std::thread::sleep(POLL);
        }
    }
}

/// The exit status of process `id` if `line` is its `/tasks/exit` event
/// (`... /tasks/exit {"container_id":..,"id":..,"exit_status":..}`; a zero
/// status is left out of the JSON).
fn exit_of(line: &str, id: &str) -> Option<i32> {
    let (_, event) = line.split_once("/tasks/exit ")?;
    let event: serde_json::Value = serde_json::from_str(event.trim()).ok()?;
    if event.get("id")?.as_str()? != id {
        return None;
    }
    let status = event
        .get("exit_status")
        .map_or(Some(0), serde_json::Value::as_i64)?;
    i32::try_from(status).ok()
}

impl Drop for Events {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("events:\n{}", self.lines().join("\n"));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::exit_of;

    const EXIT: &str = "2026-12-06 07:00:00.1 +0000 UTC vmpod-test /tasks/exit \
        {\"container_id\":\"vp-pod\",\"id\":\"e-1\",\"pid\":42,\"exit_status\":139,\"exited_at\":\"x\"}";

    #[test]
    fn test_exit_status_is_read_from_the_exit_event_of_that_id() {
        assert_eq!(exit_of(EXIT, "e-1"), Some(139));
        assert_eq!(exit_of(EXIT, "vp-pod"), None);
        assert_eq!(
            exit_of(&EXIT.replace("/tasks/exit", "/tasks/start"), "e-1"),
            None
        );
    }

    #[test]
    fn test_a_zero_exit_status_is_the_absent_field() {
        let zero = EXIT.replace(",\"exit_status\":139", "");
        assert_eq!(exit_of(&zero, "e-1"), Some(0));
    }
}
