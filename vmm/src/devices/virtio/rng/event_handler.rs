// SPDX-License-Identifier: Apache-2.0
//! Wakes the entropy device when the guest notifies its queue.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::super::device::VirtioDevice;
use super::device::Entropy;

impl MutEventSubscriber for Entropy {
    fn init(&mut self, ops: &mut EventOps) {
        if let Some(event) = self.queue_events().first() {
            if let Err(err) = ops.add(Events::new(event, EventSet::IN)) {
                tracing::error!("virtio-rng: cannot watch the queue event: {err}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            return;
        }
        if let Some(event) = self.queue_events().first() {
            // Non-blocking: a spurious wake-up reads EAGAIN, which is fine.
            let _ = event.read();
        }
        self.process_queue();
    }
}
