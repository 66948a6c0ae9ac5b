// SPDX-License-Identifier: Apache-2.0
//! One thread that waits on every device's events (queue notifications,
//! back-end readiness) with `event-manager` and runs the device's handler.
//! vCPU threads never do device I/O beyond register accesses.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use seccompiler::BpfProgram;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::seccomp::{install_filter, SeccompError, ThreadLabel};

/// A device as the event loop holds it.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors starting the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll or an eventfd could not be created.
    #[error("Cannot create the device event loop")]
    Create(#[source] std::io::Error),
    /// The thread could not be started.
    #[error("Cannot start the device event loop thread")]
    Thread(#[source] std::io::Error),
    /// The thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// The loop could not be paused.
    #[error("Cannot pause the device event loop: {0}")]
    Pause(String),
}

/// What the loop is asked to do between two rounds of events.
#[derive(Debug, Default)]
struct LoopState {
    stop: bool,
    pause: bool,
    /// Set by the loop while it waits out a pause.
    parked: bool,
}

/// The requests to the loop: a state under a lock, and an event that
/// wakes the loop from its wait to read it.
#[derive(Debug)]
struct LoopControl {
    state: Mutex<LoopState>,
    changed: Condvar,
    wake: EventFd,
}

impl LoopControl {
    fn state(&self) -> MutexGuard<'_, LoopState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The wake event as the event manager sees it.
struct WakeEvent(Arc<LoopControl>);

impl MutEventSubscriber for WakeEvent {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.0.wake, EventSet::IN)) {
            tracing::error!("event loop: cannot watch its wake event: {err}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Reading clears the counter; the request itself is in the state.
        let _ = self.0.wake.read();
    }
}

/// Runs the loop until asked to stop; waits out pauses between rounds.
fn serve_until_stopped(manager: &mut EventManager<Subscriber>, control: &LoopControl) {
    loop {
        if let Err(err) = manager.run() {
            tracing::error!("event loop: {err}");
        }
        let mut state = control.state();
        if state.pause && !state.stop {
            state.parked = true;
            control.changed.notify_all();
            while state.pause && !state.stop {
                state = control
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.parked = false;
        }
        if state.stop {
            return;
        }
    }
}

/// How long [`EventLoop::pause`] waits for the loop to finish the events
/// at hand: a device handler runs for microseconds.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The running event loop thread.
#[derive(Debug)]
pub struct EventLoop {
    control: Arc<LoopControl>,
    thread: JoinHandle<()>,
}

impl EventLoop {
    /// Starts a thread serving `subscribers` until [`EventLoop::stop`];
    /// the thread installs `filter` (if any) before it serves anything.
    ///
    /// # Errors
    /// [`EventLoopError`] when epoll, the wake event, the thread or its
    /// filter cannot be set up.
    pub fn start(
        subscribers: Vec<Subscriber>,
        filter: Option<BpfProgram>,
    ) -> Result<Self, EventLoopError> {
        let control = Arc::new(LoopControl {
            state: Mutex::new(LoopState::default()),
            changed: Condvar::new(),
            wake: EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::Create)?,
        });
        let mut manager = EventManager::<Subscriber>::new()
            .map_err(|e| EventLoopError::Create(std::io::Error::other(e.to_string())))?;
        manager.add_subscriber(Arc::new(Mutex::new(WakeEvent(control.clone()))));
        for subscriber in subscribers {
            manager.add_subscriber(subscriber);
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let thread_control = control.clone();
        let thread = std::thread::Builder::new()
            .name("vmpod-devices".into())
            .spawn(move || {
                let installed = match &filter {
                    Some(filter) => install_filter(filter, ThreadLabel::DEVICES),
                    None => Ok(()),
                };
                let serve = installed.is_ok();
                let _ = ready_tx.send(installed);
                if serve {
                    serve_until_stopped(&mut manager, &thread_control);
                }
            })
            .map_err(EventLoopError::Thread)?;
        let installed = ready_rx.recv().map_err(|_| {
            EventLoopError::Thread(std::io::Error::other("it ended before it was ready"))
        })?;
        if let Err(e) = installed {
            let _ = thread.join();
            return Err(e.into());
        }
        Ok(EventLoop { control, thread })
    }

    /// Stops serving device events once the events at hand are handled,
    /// and returns then: no device touches guest memory or raises an
    /// interrupt until [`EventLoop::resume`]. Events that arrive meanwhile
    /// wait in the kernel.
    ///
    /// # Errors
    /// [`EventLoopError::Pause`] if the loop did not pause in time.
    pub fn pause(&self) -> Result<(), EventLoopError> {
        let mut state = self.control.state();
        state.pause = true;
        self.control
            .wake
            .write(1)
            .map_err(|e| EventLoopError::Pause(e.to_string()))?;
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while !state.parked {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                state.pause = false;
                return Err(EventLoopError::Pause(format!(
                    "the device thread did not pause within {PAUSE_TIMEOUT:?}"
                )));
            }
            state = self
                .control
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }

    /// Serves device events again after [`EventLoop::pause`].
    pub fn resume(&self) {
        self.control.state().pause = false;
        self.control.changed.notify_all();
    }

    /// Ends the loop (paused or not) and waits for its thread.
    pub fn stop(self) {
        self.control.state().stop = true;
        self.control.changed.notify_all();
        if let Err(err) = self.control.wake.write(1) {
            tracing::error!("event loop: cannot signal the stop: {err}");
            return;
        }
        if self.thread.join().is_err() {
            tracing::error!("event loop: the thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts how often its event fired.
    struct Counter {
        event: EventFd,
        seen: Arc<std::sync::atomic::AtomicU32>,
    }

    impl MutEventSubscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.event, EventSet::IN)).unwrap();
        }

        fn process(&mut self, _events: Events, _ops: &mut EventOps) {
            let _ = self.event.read();
            self.seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn test_loop_serves_events_and_stops() {
        let event = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = Counter {
            event: event.try_clone().unwrap(),
            seen: seen.clone(),
        };
        let event_loop = EventLoop::start(vec![Arc::new(Mutex::new(counter))], None).unwrap();
        event.write(1).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while seen.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "event not served");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        event_loop.stop();
    }

    #[test]
    fn test_paused_loop_holds_events_until_resumed() {
        let event = EventFd::new(EFD_NONBLOCK).unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = Counter {
            event: event.try_clone().unwrap(),
            seen: seen.clone(),
        };
        let event_loop = EventLoop::start(vec![Arc::new(Mutex::new(counter))], None).unwrap();
        event_loop.pause().unwrap();
        event.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 0);
        event_loop.resume();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "event not served after resume");
            std::thread::sleep(Duration::from_millis(1));
        }
        event_loop.pause().unwrap();
        // A paused loop still stops.
        event_loop.stop();
    }
}
