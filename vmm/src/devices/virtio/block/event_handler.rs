// SPDX-License-Identifier: Apache-2.0
//! Wakes the disk when the guest notifies its queue.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Block;
use crate::devices::virtio::device::VirtioDevice;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        if let Some(event) = self.queue_events().first() {
            if let Err(err) = ops.add(Events::new(event, EventSet::IN)) {
                tracing::error!("virtio-blk: cannot watch the queue event: {err}");
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
