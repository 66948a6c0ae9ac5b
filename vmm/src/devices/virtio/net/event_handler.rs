// SPDX-License-Identifier: Apache-2.0
//! Wakes the network device on queue notifications and tap readiness.
//! The tap is watched only while a received frame can be delivered: with
//! one waiting for guest buffers, a level-triggered tap would wake the
//! loop for nothing until the guest posts some.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Net;
use super::{RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::device::VirtioDevice;

/// Event data: which source woke the device.
const RX_EVENT: u32 = 0;
const TX_EVENT: u32 = 1;
const TAP_EVENT: u32 = 2;

impl Net {
    fn tap_events(&self) -> Events {
        Events::with_data_raw(self.backend_fd(), TAP_EVENT, EventSet::IN)
    }

    /// Watches the tap if a frame can be delivered, stops if not. What is
    /// watched is recorded, not inferred: a frame can start waiting outside
    /// an event (at activation).
    fn update_tap_watch(&mut self, ops: &mut EventOps) {
        match (self.tap_watched, self.rx_blocked()) {
            (true, true) => {
                let _ = ops.remove(self.tap_events());
                self.tap_watched = false;
            }
            (false, false) => match ops.add(self.tap_events()) {
                Ok(()) => self.tap_watched = true,
                Err(err) => tracing::error!("virtio-net: cannot watch the tap: {err}"),
            },
            _ => {}
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, data) in [(RX_QUEUE, RX_EVENT), (TX_QUEUE, TX_EVENT)] {
            if let Some(event) = self.queue_events().get(index) {
                if let Err(err) = ops.add(Events::with_data(event, data, EventSet::IN)) {
                    tracing::error!("virtio-net: cannot watch queue {index}: {err}");
                }
            }
        }
        self.update_tap_watch(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            RX_EVENT => {
                if let Some(event) = self.queue_events().get(RX_QUEUE) {
                    let _ = event.read();
                }
                self.process_rx();
            }
            TX_EVENT => {
                if let Some(event) = self.queue_events().get(TX_QUEUE) {
                    let _ = event.read();
                }
                self.process_tx();
            }
            TAP_EVENT => self.process_rx(),
            other => tracing::warn!("virtio-net: unexpected event {other}"),
        }
        self.update_tap_watch(ops);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use super::super::device::tests::host_send;
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, queue_set, DriverQueue, PairBackend};

    type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    /// Events the loop dispatches in `rounds` turns that do not wait.
    fn wake_ups(manager: &mut Manager, rounds: usize) -> usize {
        (0..rounds)
            .map(|_| manager.run_with_timeout(0).unwrap())
            .sum()
    }

    #[test]
    fn test_frames_before_activation_or_buffers_do_not_spin_the_loop() {
        let (ours, host) = PairBackend::pair();
        let net = Net::with_backend(Box::new(ours), None).unwrap();
        let net = Arc::new(Mutex::new(net));
        let mut manager: Manager = EventManager::new().unwrap();
        manager.add_subscriber(net.clone());
        // The guest has not set the device up yet; frames arrive anyway.
        host_send(&host, &[0u8; 64]);
        assert_eq!(
            wake_ups(&mut manager, 100),
            0,
            "woken for a frame it cannot take"
        );

        // Activated, but with no receive buffers: one frame is taken and
        // waits, and the tap is no longer watched.
        let mem = guest_memory();
        let (rx, tx) = (DriverQueue::new(0), DriverQueue::new(DriverQueue::SPAN));
        net.lock()
            .unwrap()
            .activate(queue_set(mem, vec![rx.queue(), tx.queue()]))
            .unwrap();
        net.lock().unwrap().queue_events()[RX_QUEUE]
            .write(1)
            .unwrap();
        host_send(&host, &[0u8; 64]);
        assert!(wake_ups(&mut manager, 100) <= 2);
        assert!(net.lock().unwrap().rx_blocked());
        assert!(net.lock().unwrap().counters().rx_deferred >= 1);
    }
}
