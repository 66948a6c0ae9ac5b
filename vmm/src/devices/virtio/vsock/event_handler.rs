// SPDX-License-Identifier: Apache-2.0
//! Wakes the vsock device on queue notifications, host connections and
//! host stream readiness, and keeps the watched set in step with what each
//! connection can use (a stream whose data the guest cannot take yet is
//! not watched, so a level-triggered wake-up does not spin).

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::{Vsock, EVENT_QUEUE, RX, TX};
use crate::devices::virtio::device::VirtioDevice;

const RX_EVENT: u32 = 0;
const TX_EVENT: u32 = 1;
const EVENT_QUEUE_EVENT: u32 = 2;
const LISTENER_EVENT: u32 = 3;
const TIMER_EVENT: u32 = 4;
/// Stream events carry the descriptor plus this.
const STREAM_BASE: u32 = 16;

fn stream_events(fd: i32, out: bool) -> Events {
    let mut set = EventSet::IN | EventSet::READ_HANG_UP;
    if out {
        set |= EventSet::OUT;
    }
    Events::with_data_raw(fd, STREAM_BASE + fd as u32, set)
}

impl Vsock {
    /// Applies watch changes and closes finished streams.
    fn sync_watches(&mut self, ops: &mut EventOps) {
        for (fd, current, wanted) in self.muxer.watch_changes() {
            let result = match (current, wanted) {
                (None, Some(out)) => ops.add(stream_events(fd, out)),
                (Some(_), Some(out)) => ops.modify(stream_events(fd, out)),
                (Some(out), None) => ops.remove(stream_events(fd, out)),
                (None, None) => Ok(()),
            };
            if let Err(err) = result {
                tracing::warn!("virtio-vsock: cannot change the watch of a host stream: {err}");
            }
        }
        for (stream, watched) in self.muxer.take_closing() {
            if watched {
                use std::os::fd::AsRawFd;
                let _ = ops.remove(stream_events(stream.as_raw_fd(), false));
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, data) in [
            (RX, RX_EVENT),
            (TX, TX_EVENT),
            (EVENT_QUEUE, EVENT_QUEUE_EVENT),
        ] {
            if let Some(event) = self.queue_events().get(index) {
                if let Err(err) = ops.add(Events::with_data(event, data, EventSet::IN)) {
                    tracing::error!("virtio-vsock: cannot watch queue {index}: {err}");
                }
            }
        }
        let listener =
            Events::with_data_raw(self.muxer.listener_fd(), LISTENER_EVENT, EventSet::IN);
        if let Err(err) = ops.add(listener) {
            tracing::error!("virtio-vsock: cannot watch the Unix socket: {err}");
        }
        let timer = Events::with_data_raw(self.muxer.timer_fd(), TIMER_EVENT, EventSet::IN);
        if let Err(err) = ops.add(timer) {
            tracing::error!("virtio-vsock: cannot watch the handshake timer: {err}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let set = events.event_set();
        match events.data() {
            RX_EVENT | TX_EVENT | EVENT_QUEUE_EVENT => {
                let index = events.data() as usize;
                if let Some(event) = self.queue_events().get(index) {
                    let _ = event.read();
                }
                match events.data() {
                    TX_EVENT => self.process_tx(),
                    EVENT_QUEUE_EVENT => self.event_queue_notified(),
                    _ => {}
                }
            }
            LISTENER_EVENT => self.muxer.accept_all(),
            TIMER_EVENT => self.muxer.expire_handshakes(),
            data => {
                let fd = data.wrapping_sub(STREAM_BASE) as i32;
                self.muxer.stream_ready(
                    fd,
                    set.contains(EventSet::IN),
                    set.contains(EventSet::OUT),
                    set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR),
                );
            }
        }
        self.process_rx();
        self.sync_watches(ops);
    }
}
