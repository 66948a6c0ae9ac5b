// SPDX-License-Identifier: Apache-2.0
//! One process of a task as the shim tracks it: created, running, exited.
//! Its exit is a watch channel, so Wait, State, Delete and the TaskExit event
//! all see the same status, set once, after the output is drained.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::{watch, Notify};
use vmpod_agent_api::ProcessId;

use crate::io::{Copies, StdioPaths};
use crate::task::TaskStatus;

/// The status a process gets when its VM or agent went away under it.
pub const LOST_STATUS: u32 = 255;

/// How a process ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Exit {
    /// The exit code, or 128 + the signal.
    pub status: u32,
    /// When.
    pub at: Timestamp,
}

impl Exit {
    /// An exit now.
    pub fn now(status: u32) -> Self {
        Exit {
            status,
            at: timestamp(SystemTime::now()),
        }
    }

    /// An exit at `nanos` since the epoch (as the agent reports it).
    pub fn at_nanos(status: u32, nanos: u64) -> Self {
        let mut at = Timestamp::new();
        at.seconds = i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX);
        // Below 10^9, so it fits.
        at.nanos = (nanos % 1_000_000_000) as i32;
        Exit { status, at }
    }
}

/// A protobuf timestamp of `time`.
pub fn timestamp(time: SystemTime) -> Timestamp {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut at = Timestamp::new();
    at.seconds = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    // Below 10^9, so it fits.
    at.nanos = since.subsec_nanos() as i32;
    at
}

/// A container's init or exec'd process.
#[derive(Debug)]
pub struct Process {
    /// The process in the agent.
    pub id: ProcessId,
    /// containerd's FIFOs.
    pub stdio: StdioPaths,
    /// For an exec before it starts: its OCI process (JSON).
    pub exec_spec: Option<Vec<u8>>,
    started: bool,
    /// Set once the copies run: tells the stdin copy to finish (CloseIO).
    close_stdin: Mutex<Option<Arc<Notify>>>,
    exit: Arc<watch::Sender<Option<Exit>>>,
}

impl Process {
    /// A process not started yet.
    pub fn new(id: ProcessId, stdio: StdioPaths, exec_spec: Option<Vec<u8>>) -> Self {
        Process {
            id,
            stdio,
            exec_spec,
            started: false,
            close_stdin: Mutex::new(None),
            exit: Arc::new(watch::channel(None).0),
        }
    }

    /// Marks it started.
    pub fn set_started(&mut self) {
        self.started = true;
    }

    /// Keeps what CloseIO needs of the process's copies.
    pub fn set_copies(&self, copies: &Copies) {
        if let Ok(mut slot) = self.close_stdin.lock() {
            *slot = Some(copies.stdin_closer());
        }
    }

    /// Passes CloseIO on to the stdin copy.
    pub fn close_stdin(&self) {
        if let Ok(slot) = self.close_stdin.lock() {
            if let Some(close) = slot.as_ref() {
                close.notify_one();
            }
        }
    }

    /// The exit, once there is one.
    pub fn exit(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Records the exit (the first one counts).
    pub fn set_exit(&self, exit: Exit) {
        self.exit.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(exit);
                true
            } else {
                false
            }
        });
    }

    /// What the process's monitor records the exit with.
    pub fn exit_sender(&self) -> Arc<watch::Sender<Option<Exit>>> {
        self.exit.clone()
    }

    /// A receiver that sees the exit.
    pub fn exit_watch(&self) -> watch::Receiver<Option<Exit>> {
        self.exit.subscribe()
    }

    /// Its status; `paused` is its container's.
    pub fn status(&self, paused: bool) -> TaskStatus {
        match (self.exit.borrow().is_some(), self.started, paused) {
            (true, _, _) => TaskStatus::Stopped,
            (false, false, _) => TaskStatus::Created,
            (false, true, true) => TaskStatus::Paused,
            (false, true, false) => TaskStatus::Running,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_the_first_exit_counts_and_sets_the_status() {
        let mut process = Process::new(ProcessId::init("c"), StdioPaths::default(), None);
        assert_eq!(process.status(false), TaskStatus::Created);
        process.set_started();
        assert_eq!(process.status(false), TaskStatus::Running);
        assert_eq!(process.status(true), TaskStatus::Paused);
        process.set_exit(Exit::at_nanos(3, 1_500_000_000));
        process.set_exit(Exit::now(LOST_STATUS));
        let exit = process.exit().unwrap();
        assert_eq!(exit.status, 3);
        assert_eq!((exit.at.seconds, exit.at.nanos), (1, 500_000_000));
        assert_eq!(process.status(false), TaskStatus::Stopped);
    }
}
