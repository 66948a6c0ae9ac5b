// SPDX-License-Identifier: Apache-2.0
//! Wakes the file system device when the guest notifies a queue.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Fs;
use crate::devices::virtio::device::VirtioDevice;

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.queue_events().iter().enumerate() {
            if let Err(err) = ops.add(Events::with_data(event, index as u32, EventSet::IN)) {
                tracing::error!("virtio-fs: cannot watch queue {index}: {err}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let index = events.data() as usize;
        if let Some(event) = self.queue_events().get(index) {
            // Non-blocking: a spurious wake-up reads EAGAIN, which is fine.
            let _ = event.read();
        }
        self.process_queue(index);
    }
}
