// SPDX-License-Identifier: Apache-2.0
//! Reaps every child of the agent: the processes it started (whose exit
//! statuses it hands to their waiters) and the orphans that land on it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal that ended it.
    pub status: i32,
    /// When it was reaped, in nanoseconds since the Unix epoch.
    pub at_ns: u64,
}

/// A process's exit, once it has one.
pub type ExitWatch = watch::Receiver<Option<Exit>>;

/// The processes whose exits someone waits for, by PID.
pub type Registry = HashMap<libc::pid_t, watch::Sender<Option<Exit>>>;

/// Reaps children on SIGCHLD.
#[derive(Debug, Default)]
pub struct Reaper {
    registry: Mutex<Registry>,
}

impl Reaper {
    /// A reaper with nothing registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks the registry. A child started while the lock is held cannot
    /// be reaped before [`Reaper::register`] names it.
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Registers `pid` (under the lock of [`Reaper::lock`]) and returns
    /// the watch that gets its exit.
    pub fn register(registry: &mut Registry, pid: libc::pid_t) -> ExitWatch {
        let (sender, receiver) = watch::channel(None);
        registry.insert(pid, sender);
        receiver
    }

    /// Starts reaping on SIGCHLD, in a task of the current runtime.
    ///
    /// # Errors
    ///
    /// When the SIGCHLD handler cannot be installed.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = self.clone();
        tokio::spawn(async move {
            loop {
                reaper.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// Reaps every child that has ended.
    fn reap_all(&self) {
        loop {
            let mut status = 0;
            // SAFETY: status is a valid out-pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            // 128 + a signal's number is also an exit code a shell gives
            // when its child was killed: the log line tells them apart.
            let (code, signal) = if libc::WIFEXITED(status) {
                (libc::WEXITSTATUS(status), None)
            } else if libc::WIFSIGNALED(status) {
                (128 + libc::WTERMSIG(status), Some(libc::WTERMSIG(status)))
            } else {
                continue;
            };
            let at_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as u64);
            if let Some(sender) = self.lock().remove(&pid) {
                match signal {
                    Some(signal) => tracing::info!("process {pid} was killed by signal {signal}"),
                    None => tracing::info!("process {pid} exited with {code}"),
                }
                let _ = sender.send(Some(Exit {
                    status: code,
                    at_ns,
                }));
            }
        }
    }
}
