// SPDX-License-Identifier: Apache-2.0
//! One thread that waits on every device's events (queue notifications,
//! back-end readiness) with `event-manager` and runs the device's handler.
//! vCPU threads never do device I/O beyond register accesses.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
}

/// The stop request, itself an event the loop waits on.
struct StopSignal {
    event: EventFd,
    stopped: bool,
}

impl MutEventSubscriber for StopSignal {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.event, EventSet::IN)) {
            tracing::error!("event loop: cannot watch the stop event: {err}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        self.stopped = true;
    }
}

/// Runs the loop until the stop signal fired.
fn serve_until_stopped(manager: &mut EventManager<Subscriber>, signal: &Mutex<StopSignal>) {
    loop {
        if let Err(err) = manager.run() {
            tracing::error!("event loop: {err}");
        }
        let stopped = signal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .stopped;
        if stopped {
            return;
        }
    }
}

/// The running event loop thread.
#[derive(Debug)]
pub struct EventLoop {
    stop: EventFd,
    thread: JoinHandle<()>,
}

impl EventLoop {
    /// Starts a thread serving `subscribers` until [`EventLoop::stop`];
    /// the thread installs `filter` (if any) before it serves anything.
    ///
    /// # Errors
    /// [`EventLoopError`] when epoll, the stop event, the thread or its
    /// filter cannot be set up.
    pub fn start(
        subscribers: Vec<Subscriber>,
        filter: Option<BpfProgram>,
    ) -> Result<Self, EventLoopError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(EventLoopError::Create)?;
        let signal = Arc::new(Mutex::new(StopSignal {
            event: stop.try_clone().map_err(EventLoopError::Create)?,
            stopped: false,
        }));
        let mut manager = EventManager::<Subscriber>::new()
            .map_err(|e| EventLoopError::Create(std::io::Error::other(e.to_string())))?;
        manager.add_subscriber(signal.clone());
        for subscriber in subscribers {
            manager.add_subscriber(subscriber);
        }
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
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
                    serve_until_stopped(&mut manager, &signal);
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
        Ok(EventLoop { stop, thread })
    }

    /// Ends the loop and waits for its thread.
    pub fn stop(self) {
        if let Err(err) = self.stop.write(1) {
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
}
