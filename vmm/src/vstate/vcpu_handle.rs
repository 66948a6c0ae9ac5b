// SPDX-License-Identifier: Apache-2.0
//! The host side of a running vCPU: its thread, released into the guest,
//! paused and resumed, asked for its state, and stopped.

use std::cell::Cell;
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::signal::SIGRTMIN;

use super::vcpu::VcpuError;
use super::vcpu_state::VcpuState;
use crate::seccomp::SeccompError;

/// How long the handle waits for the vCPU thread to pause or to send its
/// state: it answers within one guest exit, so this means it is stuck.
pub(super) const REPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a pause repeats its kick while waiting for the answer.
const KICK_INTERVAL: Duration = Duration::from_millis(10);

/// What the handle asks of its vCPU thread.
#[derive(Debug)]
pub(super) enum Request {
    /// Leave the guest and wait.
    Pause,
    /// Send the vCPU's state (only while paused).
    SaveState,
    /// Enter the guest again.
    Resume,
}

/// What the vCPU thread answers.
#[derive(Debug)]
pub(super) enum Reply {
    /// It is outside the guest with no access pending.
    Paused,
    /// Its state, or why it could not be read.
    State(Box<Result<VcpuState, VcpuError>>),
}

/// The vCPU thread's end of the handle's requests.
pub(super) struct Control {
    pub(super) requests: mpsc::Receiver<Request>,
    pub(super) replies: mpsc::Sender<Reply>,
}

/// A started vCPU thread. Its pause, state and resume requests go to the
/// thread one at a time and it is not `Sync`: one owner asks.
#[derive(Debug)]
pub struct VcpuHandle {
    index: u8,
    thread: JoinHandle<()>,
    /// Whether the thread installed its filter.
    ready: mpsc::Receiver<Result<(), SeccompError>>,
    /// Lets the thread enter the guest; dropped to end it instead.
    go: Option<mpsc::Sender<()>>,
    /// Pause, state and resume requests; dropped to end a paused thread.
    requests: mpsc::Sender<Request>,
    /// The thread's answers.
    replies: mpsc::Receiver<Reply>,
    /// Whether the thread answered a pause not yet followed by a resume.
    paused: Cell<bool>,
}

impl VcpuHandle {
    /// The handle of `thread`, which runs vCPU `index`: it reports its
    /// filter on `ready`, enters the guest once `go` is sent or dropped
    /// (ends), and serves `requests`, answering on `replies`.
    pub(super) fn new(
        index: u8,
        thread: JoinHandle<()>,
        ready: mpsc::Receiver<Result<(), SeccompError>>,
        go: mpsc::Sender<()>,
        requests: mpsc::Sender<Request>,
        replies: mpsc::Receiver<Reply>,
    ) -> Self {
        VcpuHandle {
            index,
            thread,
            ready,
            go: Some(go),
            requests,
            replies,
            paused: Cell::new(false),
        }
    }

    /// Waits until the thread has installed its seccomp filter.
    ///
    /// # Errors
    /// [`VcpuError::Seccomp`] if the kernel refused it, or
    /// [`VcpuError::Thread`] if the thread ended first.
    pub fn wait_ready(&self) -> Result<(), VcpuError> {
        match self.ready.recv() {
            Ok(installed) => installed.map_err(VcpuError::from),
            Err(_) => Err(VcpuError::Thread(
                self.index,
                std::io::Error::other("it ended before it was ready"),
            )),
        }
    }

    /// Lets the vCPU enter the guest.
    pub fn release(&mut self) {
        if let Some(go) = self.go.take() {
            let _ = go.send(());
        }
    }

    /// Kicks the vCPU out of the guest and returns once its thread is
    /// outside it, with the last exit's access completed, so that its state
    /// and its writes to guest memory hold still. Devices may still write
    /// guest memory and raise interrupts (queued in the in-kernel irqchip):
    /// a consistent snapshot pauses them too. Pausing a paused vCPU is a
    /// no-op.
    ///
    /// # Errors
    /// [`VcpuError::NotStarted`] before [`VcpuHandle::release`],
    /// [`VcpuError::ThreadEnded`] once the VM ended, and
    /// [`VcpuError::NoReply`] if the thread does not answer within 2 s
    /// (a later [`VcpuHandle::resume`] cancels the request).
    pub fn pause(&self) -> Result<(), VcpuError> {
        self.check_started()?;
        if self.paused.get() {
            return Ok(());
        }
        self.drain_replies();
        self.send(Request::Pause)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            // Repeated: a thread busy in a device when the first kick came
            // may have entered the guest again before it saw the request.
            self.kick();
            match self.replies.recv_timeout(KICK_INTERVAL) {
                Ok(Reply::Paused) => {
                    self.paused.set(true);
                    return Ok(());
                }
                Ok(Reply::State(_)) => {}
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(RecvTimeoutError::Timeout) => return Err(self.no_reply("pause")),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VcpuError::ThreadEnded(self.index))
                }
            }
        }
    }

    /// The state of the paused vCPU, read by its own thread (vCPU ioctls
    /// belong to the thread that runs the vCPU).
    ///
    /// # Errors
    /// [`VcpuError::NotPaused`] unless [`VcpuHandle::pause`] succeeded
    /// since the last resume; otherwise as [`Vcpu::save_state`], or
    /// [`VcpuError::NoReply`]/[`VcpuError::ThreadEnded`].
    pub fn save_state(&self) -> Result<VcpuState, VcpuError> {
        self.check_started()?;
        if !self.paused.get() {
            return Err(VcpuError::NotPaused(self.index));
        }
        self.drain_replies();
        self.send(Request::SaveState)?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.replies.recv_timeout(left) {
                Ok(Reply::State(state)) => return *state,
                Ok(Reply::Paused) => {}
                Err(RecvTimeoutError::Timeout) => return Err(self.no_reply("send its state")),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(VcpuError::ThreadEnded(self.index))
                }
            }
        }
    }

    /// Lets a paused vCPU enter the guest again; a no-op on a running one.
    ///
    /// # Errors
    /// [`VcpuError::NotStarted`] or [`VcpuError::ThreadEnded`].
    pub fn resume(&self) -> Result<(), VcpuError> {
        self.check_started()?;
        self.send(Request::Resume)?;
        self.paused.set(false);
        Ok(())
    }

    fn check_started(&self) -> Result<(), VcpuError> {
        match self.go {
            Some(_) => Err(VcpuError::NotStarted(self.index)),
            None => Ok(()),
        }
    }

    fn send(&self, request: Request) -> Result<(), VcpuError> {
        self.requests
            .send(request)
            .map_err(|_| VcpuError::ThreadEnded(self.index))
    }

    /// Drops answers to requests that timed out.
    fn drain_replies(&self) {
        while let Ok(stale) = self.replies.try_recv() {
            tracing::debug!("vCPU {}: dropping a late answer {stale:?}", self.index);
        }
    }

    fn no_reply(&self, what: &'static str) -> VcpuError {
        VcpuError::NoReply {
            index: self.index,
            what,
        }
    }

    /// Makes the thread leave `KVM_RUN`, or not enter it next time.
    fn kick(&self) {
        if !self.thread.is_finished() {
            // SAFETY: the thread is not joined (we own its JoinHandle), so
            // its pthread_t is valid; the handler only touches a
            // thread-local.
            unsafe { libc::pthread_kill(self.thread.as_pthread_t(), SIGRTMIN()) };
        }
    }

    /// Kicks the vCPU out of the guest and waits for its thread. Call after
    /// the VM's end was notified, or the vCPU re-enters the guest. A paused
    /// vCPU's thread ends at once.
    pub fn stop(self) {
        // A vCPU never released ends without entering the guest; a paused
        // one when its requests end.
        let VcpuHandle {
            thread,
            go,
            requests,
            ..
        } = self;
        drop(go);
        drop(requests);
        // Repeat the kick until the thread is gone: a kick that lands while
        // the thread is between checks is absorbed by `immediate_exit`.
        while !thread.is_finished() {
            // SAFETY: the thread is alive (not finished), so its pthread_t
            // is valid; the signal's handler only touches a thread-local.
            unsafe { libc::pthread_kill(thread.as_pthread_t(), SIGRTMIN()) };
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if thread.join().is_err() {
            tracing::error!("a vCPU thread panicked");
        }
    }
}
