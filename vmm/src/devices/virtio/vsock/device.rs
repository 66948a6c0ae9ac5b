// SPDX-License-Identifier: Apache-2.0
//! The vsock device: its queues, packets from the guest (tx queue) and
//! packets to the guest (rx queue); the connections behind them are the
//! [`super::muxer`]'s.
//!
//! Guest packets are checked before use: a header shorter than 44 bytes,
//! in a device-writable buffer or outside guest memory, a source CID that
//! is not the guest's, a destination that is not the host, a type other
//! than stream, or a payload over [`MAX_PKT_PAYLOAD`] or beyond its buffers
//! is dropped and counted. Packets for connections that do not exist are
//! answered with a reset (except resets). A guest that sends more than the
//! credit it was given gets its connection reset.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::muxer::Muxer;
use super::packet::Header;
use super::{HOST_CID, MAX_CONNECTIONS, MAX_PKT_PAYLOAD, NUM_QUEUES, QUEUE_SIZE};
use crate::devices::virtio::device::{read_config_space, ActivateError, QueueSet, VirtioDevice};
use crate::devices::virtio::ids::VIRTIO_ID_VSOCK;
use crate::devices::virtio::iovec::{ReadableBuffers, WritableBuffers};
use crate::devices::virtio::persist::{expect_same, DeviceState, DeviceStateError};
use crate::devices::virtio::{feature, VIRTIO_F_VERSION_1};
use crate::vstate::memory::{GuestMemory, GuestMemoryMmap};

/// Index of the receive queue.
pub(super) const RX: usize = 0;
/// Index of the transmit queue.
pub(super) const TX: usize = 1;
/// Index of the event queue.
pub(super) const EVENT_QUEUE: usize = 2;
/// The event queue's only event: every connection was reset
/// (`virtio_vsock_event_id`, include/uapi/linux/virtio_vsock.h).
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// Errors creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved.
    #[error("Invalid guest CID {0}: it must be 3 or more")]
    Cid(u64),
    /// Something that is not a socket is in the way.
    #[error("The vsock socket path {0} exists and is not a socket")]
    PathInUse(PathBuf),
    /// The socket cannot be created.
    #[error("Cannot listen on the vsock socket {path}")]
    Listen {
        /// The socket path host processes connect to.
        path: PathBuf,
        /// The bind or set-up error (e.g. the directory is missing or not
        /// writable).
        #[source]
        source: std::io::Error,
    },
    /// A queue event cannot be created.
    #[error("Cannot create a virtio-vsock queue event")]
    QueueEvent(#[source] std::io::Error),
    /// The handshake timer cannot be created.
    #[error("Cannot create the virtio-vsock handshake timer")]
    Timer(#[source] vmm_sys_util::errno::Error),
}

/// What happened to packets and connections.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct VsockCounters {
    /// Malformed packets from the guest, dropped.
    pub dropped: u64,
    /// Resets sent to the guest.
    pub resets: u64,
    /// Connections established.
    pub connected: u64,
}

/// The vsock device.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    pub(super) muxer: Muxer,
    queue_events: [EventFd; NUM_QUEUES],
    active: Option<QueueSet>,
    /// Restored from a snapshot: the guest's connections are gone and it
    /// has not been told yet (see [`Vsock::send_transport_reset`]).
    transport_reset_pending: bool,
    /// The reset event is in the guest's hands but not yet handled: the
    /// guest would reset the connections the host makes meanwhile too, so
    /// nothing goes to the guest until it posts a new event buffer, which
    /// Linux does once it has handled the event. Holds the event queue's
    /// available index when the event was sent.
    transport_reset_unhandled: Option<u16>,
}

impl Vsock {
    /// A device for guest `cid`, listening on the Unix socket `path`.
    ///
    /// # Errors
    /// [`VsockError`] naming the CID or socket.
    pub fn new(cid: u64, path: &Path) -> Result<Self, VsockError> {
        Self::with_connection_limit(cid, path, MAX_CONNECTIONS)
    }

    /// [`Vsock::new`] with at most `max_connections` connections.
    ///
    /// # Errors
    /// [`VsockError`] naming the CID or socket.
    pub fn with_connection_limit(
        cid: u64,
        path: &Path,
        max_connections: usize,
    ) -> Result<Self, VsockError> {
        if cid <= HOST_CID {
            return Err(VsockError::Cid(cid));
        }
        let muxer = Muxer::new(cid, path, max_connections)?;
        let event = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::QueueEvent);
        Ok(Vsock {
            cid,
            muxer,
            queue_events: [event()?, event()?, event()?],
            active: None,
            transport_reset_pending: false,
            transport_reset_unhandled: None,
        })
    }

    /// What happened so far.
    pub fn counters(&self) -> VsockCounters {
        self.muxer.counters
    }

    /// Handles the packets the guest queued, at most a queue's worth per
    /// call: a guest that keeps refilling the queue cannot hold the event
    /// loop (and the other devices on it). When packets remain, the tx
    /// queue's event is raised again, so the loop comes back after serving
    /// what else is ready.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let Some(queue) = active.queues.get_mut(TX) else {
            return;
        };
        let mut handled: u16 = 0;
        let batch = queue.size();
        // Each packet is handled as it is popped, so the host never holds
        // more than one guest packet (at most 64 KiB) at a time.
        while handled < batch {
            let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            self.muxer.handle_guest_packet(read_packet(&mem, chain));
            if queue.add_used(&mem, head, 0).is_err() {
                break;
            }
            handled += 1;
        }
        if handled > 0 && queue.needs_notification(&mem).unwrap_or(true) {
            let _ = active.interrupt.signal_used_queue();
        }
        if handled == batch {
            if let Some(event) = self.queue_events.get(TX) {
                let _ = event.write(1);
            }
        }
    }

    /// Fills the guest's receive buffers: control packets first, then data
    /// the host sent, within each connection's credit.
    pub fn process_rx(&mut self) {
        if self.transport_reset_unhandled.is_some() {
            return;
        }
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.mem.clone();
        let mut completed = false;
        if let Some(queue) = active.queues.get_mut(RX) {
            while let Some((source, header, payload)) = self.muxer.next_for_guest() {
                let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                    break;
                };
                let head = chain.head_index();
                // As much of the held data as the credit and this chain
                // allow; the rest goes in the next packets.
                let written = write_packet(&mem, chain, header, payload);
                self.muxer.sent_to_guest(source, &header, written);
                let used = written
                    .and_then(|sent| u32::try_from(Header::LEN + sent).ok())
                    .unwrap_or(0);
                if queue.add_used(&mem, head, used).is_err() {
                    break;
                }
                completed = true;
            }
            if completed && queue.needs_notification(&mem).unwrap_or(true) {
                let _ = active.interrupt.signal_used_queue();
            }
        }
        self.active = Some(active);
    }
}

impl Vsock {
    /// The guest notified the event queue: it posted event buffers, which
    /// after a reset event means it has handled that event (Linux refills
    /// the queue once it has reset its sockets). Sends a reset still
    /// pending, or lets the host's traffic through again.
    pub(super) fn event_queue_notified(&mut self) {
        if let (Some(sent_at), Some(active)) = (self.transport_reset_unhandled, &self.active) {
            let refilled = active
                .queues
                .get(EVENT_QUEUE)
                .and_then(|queue| queue.avail_idx(&active.mem, Ordering::Acquire).ok())
                .is_some_and(|now| now.0 != sent_at);
            if refilled {
                self.transport_reset_unhandled = None;
                tracing::debug!("virtio-vsock: the guest handled the transport reset");
            }
        }
        self.send_transport_reset();
    }

    /// After a restore, tells the guest its connections are gone with a
    /// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET` event (virtio 1.2, 5.10.6.6),
    /// in the first well-formed buffer of the event queue; without one,
    /// it waits for the guest to post one (which it signals).
    pub(super) fn send_transport_reset(&mut self) {
        if !self.transport_reset_pending {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let Some(queue) = active.queues.get_mut(EVENT_QUEUE) else {
            return;
        };
        let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
        let avail_when_sent = queue
            .avail_idx(&mem, Ordering::Acquire)
            .map_or(0, |idx| idx.0);
        let mut completed = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let written = WritableBuffers::up_to(&mem, chain, event.len())
                .ok()
                .filter(|buffers| buffers.capacity() == event.len())
                .and_then(|buffers| buffers.write_at(&mem, 0, &event).ok())
                .filter(|&n| n == event.len());
            let used = written.map_or(0, |_| event.len() as u32);
            if queue.add_used(&mem, head, used).is_err() {
                break;
            }
            completed = true;
            if written.is_some() {
                self.transport_reset_pending = false;
                self.transport_reset_unhandled = Some(avail_when_sent);
                tracing::info!("virtio-vsock: told the guest its connections were reset");
                break;
            }
            self.muxer.counters.dropped += 1;
        }
        if completed && queue.needs_notification(&mem).unwrap_or(true) {
            let _ = active.interrupt.signal_used_queue();
        }
    }
}

/// A tx chain as header and payload; `None` if malformed.
fn read_packet<M>(mem: &GuestMemoryMmap, chain: DescriptorChain<M>) -> Option<(Header, Vec<u8>)>
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory,
{
    let limit = Header::LEN + MAX_PKT_PAYLOAD as usize;
    let buffers = ReadableBuffers::new(mem, chain, limit).ok()?;
    let mut bytes = Vec::new();
    buffers.read_to_vec(mem, &mut bytes).ok()?;
    let raw: &[u8; Header::LEN] = bytes.get(..Header::LEN)?.try_into().ok()?;
    let header = Header::from_bytes(raw);
    let payload = bytes
        .get(Header::LEN..Header::LEN + header.len as usize)?
        .to_vec();
    Some((header, payload))
}

/// Writes a packet of `header` and as much of `payload` as the rx chain
/// holds (a Linux guest posts 4 KiB buffers; a packet may carry up to
/// 64 KiB). Returns the payload bytes written after the header, or `None`
/// if the chain is malformed or holds no payload byte (nor, for a control
/// packet, the header).
fn write_packet<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    mut header: Header,
    payload: &[u8],
) -> Option<usize>
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory,
{
    let buffers = WritableBuffers::up_to(mem, chain, Header::LEN + payload.len()).ok()?;
    let sent = buffers
        .capacity()
        .checked_sub(Header::LEN)?
        .min(payload.len());
    if sent == 0 && !payload.is_empty() {
        return None;
    }
    header.len = u32::try_from(sent).ok()?;
    buffers.write_at(mem, 0, &header.to_bytes()).ok()?;
    buffers.write_at(mem, Header::LEN, &payload[..sent]).ok()?;
    Some(sent)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; NUM_QUEUES]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
    }

    /// `struct virtio_vsock_config`: guest_cid.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, queues: QueueSet) -> Result<(), ActivateError> {
        queues.expect_queues(NUM_QUEUES)?;
        self.active = Some(queues);
        self.send_transport_reset();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.close_all();
        // The streams close when the event loop stops watching them: wake
        // it (a reset comes from a vCPU thread, not from the loop).
        if let Some(event) = self.queue_events.get(EVENT_QUEUE) {
            let _ = event.write(1);
        }
    }

    fn queues_in_use(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|active| active.queues.as_slice())
    }

    /// Only the CID: the connections are Unix sockets of this process and
    /// are dropped on restore.
    fn save_state(&self) -> Result<DeviceState, DeviceStateError> {
        Ok(DeviceState::Vsock { cid: self.cid })
    }

    /// The guest read its CID at probe: it must be the saved one. The
    /// guest is told its connections are gone once the device is active.
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        state.expect_kind(VIRTIO_ID_VSOCK)?;
        if let DeviceState::Vsock { cid } = *state {
            expect_same("guest CID", cid, self.cid)?;
        }
        self.transport_reset_pending = true;
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};

    use super::super::packet::{op, TYPE_STREAM};
    use super::*;
    use crate::devices::virtio::test_utils::{
        guest_memory, queue_set, readable, writable, DriverQueue,
    };
    use crate::vstate::memory::{Bytes, GuestAddress};

    pub(in super::super) const GUEST_CID: u64 = 3;
    /// Buffers: rx at 0x10_0000 (4 KiB each), tx at 0x20_0000.
    const RX_BUFS: u64 = 0x10_0000;
    const TX_BUFS: u64 = 0x20_0000;

    /// A vsock device on a real event loop, and a scripted guest driver.
    pub(in super::super) struct Harness {
        dir: PathBuf,
        mem: GuestMemoryMmap,
        pub(in super::super) device: Arc<Mutex<Vsock>>,
        manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
        rx: DriverQueue,
        tx: DriverQueue,
        tx_slot: u64,
    }

    impl Harness {
        pub(in super::super) fn new(name: &str, limit: usize) -> Self {
            let dir =
                std::env::temp_dir().join(format!("vmpod-vsock-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self::in_dir(dir, limit)
        }

        /// A device whose socket `v.sock` is in `dir`, which exists.
        pub(in super::super) fn in_dir(dir: PathBuf, limit: usize) -> Self {
            let device =
                Vsock::with_connection_limit(GUEST_CID, &dir.join("v.sock"), limit).unwrap();
            let device = Arc::new(Mutex::new(device));
            let mem = guest_memory();
            let span = DriverQueue::SPAN;
            let (mut rx, tx, evt) = (
                DriverQueue::new(0),
                DriverQueue::new(span),
                DriverQueue::new(2 * span),
            );
            for i in 0..64 {
                rx.post(&mem, &[writable(RX_BUFS + i * 0x1000, 0x1000)]);
            }
            let queues = vec![rx.queue(), tx.queue(), evt.queue()];
            device
                .lock()
                .unwrap()
                .activate(queue_set(mem.clone(), queues))
                .unwrap();
            let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
                EventManager::new().unwrap();
            manager.add_subscriber(device.clone());
            Harness {
                dir,
                mem,
                device,
                manager,
                rx,
                tx,
                tx_slot: 0,
            }
        }

        pub(in super::super) fn path(&self) -> PathBuf {
            self.dir.join("v.sock")
        }

        pub(in super::super) fn run(&mut self) {
            for _ in 0..5 {
                self.manager.run_with_timeout(20).unwrap();
            }
        }

        /// The guest sends a packet.
        pub(in super::super) fn send(&mut self, header: Header, payload: &[u8]) {
            let addr = TX_BUFS + (self.tx_slot % 64) * 0x1_0000;
            self.tx_slot += 1;
            let mut bytes = header.to_bytes().to_vec();
            bytes.extend_from_slice(payload);
            self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            self.tx
                .post(&self.mem, &[readable(addr, bytes.len() as u32)]);
            self.device.lock().unwrap().queue_events()[TX]
                .write(1)
                .unwrap();
            self.run();
        }

        /// Packets the device gave the guest since the last call; their
        /// buffers are posted again.
        pub(in super::super) fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
            self.run();
            let mut packets = Vec::new();
            for (id, len) in self.rx.used(&self.mem) {
                let addr = self.rx.desc_addr(&self.mem, id);
                let mut bytes = vec![0u8; len as usize];
                self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
                let raw: [u8; Header::LEN] = bytes[..Header::LEN].try_into().unwrap();
                packets.push((Header::from_bytes(&raw), bytes[Header::LEN..].to_vec()));
                self.rx.post(&self.mem, &[writable(addr, 0x1000)]);
            }
            packets
        }

        pub(in super::super) fn guest_header(
            &self,
            op: u16,
            guest_port: u32,
            host_port: u32,
            len: u32,
        ) -> Header {
            Header {
                src_cid: GUEST_CID,
                dst_cid: HOST_CID,
                src_port: guest_port,
                dst_port: host_port,
                len,
                kind: TYPE_STREAM,
                op,
                flags: 0,
                buf_alloc: 64 * 1024,
                fwd_cnt: 0,
            }
        }

        /// A host process connects and sends `line`.
        pub(in super::super) fn host_connect(&mut self, line: &[u8]) -> UnixStream {
            let mut stream = vmpod_sys::unix_socket::connect(&self.path()).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            stream.write_all(line).unwrap();
            self.run();
            stream
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Reads until `n` bytes or EOF/timeout.
    pub(in super::super) fn read_some(stream: &mut UnixStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        let mut got = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while got < n && Instant::now() < deadline {
            match stream.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(_) => break,
            }
        }
        buf.truncate(got);
        buf
    }

    /// Whether the device closed its end: EOF, or a reset when it closed
    /// with our bytes unread.
    pub(in super::super) fn is_closed(stream: &mut UnixStream) -> bool {
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => true,
            Err(err) => err.kind() == ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    #[test]
    fn test_host_connect_and_data_both_ways() {
        let mut h = Harness::new("connect", MAX_CONNECTIONS);
        let mut stream = h.host_connect(b"CONNECT 1234\n");
        let packets = h.received();
        assert_eq!(packets.len(), 1, "{packets:?}");
        let request = packets[0].0;
        assert_eq!(
            (request.op, request.dst_port, request.dst_cid),
            (op::REQUEST, 1234, GUEST_CID)
        );
        let host_port = request.src_port;
        h.send(h.guest_header(op::RESPONSE, 1234, host_port, 0), &[]);
        assert_eq!(
            read_some(&mut stream, 32).len(),
            format!("OK {host_port}\n").len()
        );
        // Host to guest.
        stream.write_all(b"from the host").unwrap();
        let data = h.received();
        assert_eq!(data.len(), 1, "{data:?}");
        assert_eq!(
            (data[0].0.op, data[0].1.as_slice()),
            (op::RW, &b"from the host"[..])
        );
        // Guest to host.
        h.send(
            h.guest_header(op::RW, 1234, host_port, 14),
            b"from the guest",
        );
        assert_eq!(read_some(&mut stream, 14), b"from the guest");
        assert_eq!(h.device.lock().unwrap().counters().connected, 1);
    }

    #[test]
    fn test_host_data_larger_than_a_guest_buffer_is_split() {
        let mut h = Harness::new("split", MAX_CONNECTIONS);
        let mut stream = h.host_connect(b"CONNECT 1234\n");
        let host_port = h.received()[0].0.src_port;
        h.send(h.guest_header(op::RESPONSE, 1234, host_port, 0), &[]);
        read_some(&mut stream, format!("OK {host_port}\n").len());
        // More than one 4 KiB rx buffer holds, as a large request is.
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        stream.write_all(&sent).unwrap();
        let mut got = Vec::new();
        let mut packets = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < sent.len() && Instant::now() < deadline {
            for (header, payload) in h.received() {
                assert_eq!(header.op, op::RW);
                assert_eq!(header.len as usize, payload.len());
                assert!(Header::LEN + payload.len() <= 0x1000, "{}", payload.len());
                got.extend_from_slice(&payload);
                packets += 1;
            }
        }
        assert_eq!(packets, 3);
        assert!(got == sent, "the data arrived changed");
    }

    #[test]
    fn test_tx_handles_a_queue_worth_per_call_and_comes_back_for_the_rest() {
        let mut h = Harness::new("batch", MAX_CONNECTIONS);
        let mut bad = h.guest_header(op::REQUEST, 1, 2, 0);
        bad.src_cid = 7;
        h.mem
            .write_slice(&bad.to_bytes(), GuestAddress(TX_BUFS))
            .unwrap();
        let post = |h: &mut Harness, count: u16| {
            for _ in 0..count {
                h.tx.post(&h.mem, &[readable(TX_BUFS, Header::LEN as u32)]);
            }
        };
        let tx_event = |h: &Harness| h.device.lock().unwrap().queue_events()[TX].read().ok();
        let size = crate::devices::virtio::test_utils::QUEUE_SIZE;
        post(&mut h, size);
        h.device.lock().unwrap().process_tx();
        assert_eq!(h.device.lock().unwrap().counters().dropped, u64::from(size));
        assert_eq!(h.tx.used(&h.mem).len(), usize::from(size));
        assert_eq!(
            tx_event(&h),
            Some(1),
            "a full batch must wake the loop again"
        );
        post(&mut h, 10);
        h.device.lock().unwrap().process_tx();
        assert_eq!(
            h.device.lock().unwrap().counters().dropped,
            u64::from(size) + 10
        );
        assert_eq!(tx_event(&h), None, "a drained queue must not wake the loop");
    }

    #[test]
    fn test_unknown_and_malformed_packets() {
        let mut h = Harness::new("unknown", MAX_CONNECTIONS);
        h.send(h.guest_header(op::RW, 1, 2, 3), b"abc");
        assert_eq!(
            h.received()[0].0.op,
            op::RST,
            "no reset for an unknown connection"
        );
        let mut bad = h.guest_header(op::REQUEST, 1, 2, 0);
        bad.src_cid = 7;
        h.send(bad, &[]);
        let mut bad = h.guest_header(op::REQUEST, 1, 2, 0);
        bad.kind = 2;
        h.send(bad, &[]);
        let too_long = h.guest_header(op::RW, 1, 2, 100);
        h.send(too_long, b"short");
        assert!(h.received().is_empty());
        assert_eq!(h.device.lock().unwrap().counters().dropped, 3);
    }

    #[test]
    fn test_driver_reset_closes_every_connection() {
        let mut h = Harness::new("reset", MAX_CONNECTIONS);
        let mut stream = h.host_connect(b"CONNECT 1234\n");
        let request = h.received()[0].0;
        h.send(h.guest_header(op::RESPONSE, 1234, request.src_port, 0), &[]);
        let ok = format!("OK {}\n", request.src_port);
        assert_eq!(read_some(&mut stream, ok.len()), ok.as_bytes());
        VirtioDevice::reset(&mut *h.device.lock().unwrap());
        h.run();
        assert!(is_closed(&mut stream), "stream kept open after reset");
    }

    #[test]
    fn test_socket_is_removed_with_the_device() {
        let h = Harness::new("cleanup", MAX_CONNECTIONS);
        let path = h.path();
        assert!(path.exists());
        drop(h);
        assert!(!path.exists());
    }
}
