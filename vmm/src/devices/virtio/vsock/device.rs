// SPDX-License-Identifier: Apache-2.0
//! The vsock device: connection table, packets from the guest (tx queue),
//! packets to the guest (rx queue), and the host's Unix sockets.
//!
//! Guest packets are checked before use: a header shorter than 44 bytes,
//! in a device-writable buffer or outside guest memory, a source CID that
//! is not the guest's, a destination that is not the host, a type other
//! than stream, or a payload over [`MAX_PKT_PAYLOAD`] or beyond its buffers
//! is dropped and counted. Packets for connections that do not exist are
//! answered with a reset (except resets). A guest that sends more than the
//! credit it was given gets its connection reset.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use std::time::Instant;
use virtio_queue::{DescriptorChain, QueueT};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::packet::{op, parse_connect_line, Header, TYPE_STREAM};
use super::{
    CONNECT_TIMEOUT, CONN_BUF_ALLOC, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS, MAX_CONNECT_LINE,
    MAX_PENDING_CONTROL, MAX_PKT_PAYLOAD, NUM_QUEUES, QUEUE_SIZE,
};
use crate::devices::virtio::device::{read_config_space, ActivateError, QueueSet, VirtioDevice};
use crate::devices::virtio::ids::VIRTIO_ID_VSOCK;
use crate::devices::virtio::{feature, VIRTIO_F_VERSION_1};
use crate::vstate::memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Index of the receive queue.
pub(super) const RX: usize = 0;
/// Index of the transmit queue.
pub(super) const TX: usize = 1;
/// Index of the event queue.
pub(super) const EVENT_QUEUE: usize = 2;

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
        /// The socket.
        path: PathBuf,
        /// Why.
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

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A host process connected; its `CONNECT` line is not complete yet.
    Handshake,
    /// The guest was asked to accept; no answer yet.
    AwaitingResponse,
    /// Data flows.
    Established,
}

/// One host-side Unix stream and its vsock connection.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    state: State,
    /// The handshake line so far.
    line: Vec<u8>,
    /// Host-side and guest-side ports, once known.
    local_port: u32,
    peer_port: u32,
    /// The guest's receive buffer and how much of what we sent it consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// Bytes from the guest written to the host stream.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_sent: u32,
    /// Guest data the host stream has not taken yet.
    to_host: Vec<u8>,
    /// Host data read but not yet given to the guest.
    to_guest: Vec<u8>,
    /// Whether the event loop watches the stream, and for what.
    watched: Option<bool>,
    /// When the guest was asked to accept (host-initiated connections).
    requested_at: Option<Instant>,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Self {
        Conn {
            stream,
            state,
            line: Vec::new(),
            local_port: 0,
            peer_port: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            to_host: Vec::new(),
            to_guest: Vec::new(),
            watched: None,
            requested_at: None,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether the stream is worth watching for input, and whether for
    /// output: `(in, out)`.
    fn wants(&self) -> (bool, bool) {
        let input = match self.state {
            State::Handshake => true,
            State::AwaitingResponse => false,
            State::Established => self.to_guest.is_empty() && self.peer_credit() > 0,
        };
        (input, !self.to_host.is_empty())
    }
}

/// The vsock device.
#[derive(Debug)]
pub struct Vsock {
    cid: u64,
    path: PathBuf,
    listener: UnixListener,
    /// Fires when the oldest unanswered host connection times out.
    timer: TimerFd,
    queue_events: [EventFd; NUM_QUEUES],
    active: Option<QueueSet>,
    /// Connections by stream descriptor.
    conns: HashMap<RawFd, Conn>,
    /// Established and pending connections by (host port, guest port).
    ports: HashMap<(u32, u32), RawFd>,
    /// Streams to stop watching and close.
    closing: Vec<(UnixStream, bool)>,
    control: VecDeque<Header>,
    next_local_port: u32,
    max_connections: usize,
    counters: VsockCounters,
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
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::PathInUse(path.to_path_buf()));
            }
            // A socket left by an earlier VM: nobody can be listening on
            // it any more once we take the path.
            let _ = std::fs::remove_file(path);
        }
        let listen_error = |source| VsockError::Listen {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        let event = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::QueueEvent);
        Ok(Vsock {
            cid,
            path: path.to_path_buf(),
            listener,
            timer: TimerFd::new().map_err(VsockError::Timer)?,
            queue_events: [event()?, event()?, event()?],
            active: None,
            conns: HashMap::new(),
            ports: HashMap::new(),
            closing: Vec::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            max_connections: max_connections.min(MAX_CONNECTIONS),
            counters: VsockCounters::default(),
        })
    }

    /// What happened so far.
    pub fn counters(&self) -> VsockCounters {
        self.counters
    }

    pub(super) fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub(super) fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Closes host connections the guest did not answer in time (the host
    /// sees its socket close) and re-arms the timer for the next one.
    pub(super) fn expire_handshakes(&mut self) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let mut expired = Vec::new();
        let mut next: Option<std::time::Duration> = None;
        for (&fd, conn) in &self.conns {
            let Some(at) = conn
                .requested_at
                .filter(|_| conn.state == State::AwaitingResponse)
            else {
                continue;
            };
            let age = now.duration_since(at);
            if age >= CONNECT_TIMEOUT {
                expired.push((fd, conn.local_port, conn.peer_port));
            } else {
                let left = CONNECT_TIMEOUT - age;
                next = Some(next.map_or(left, |n| n.min(left)));
            }
        }
        for (fd, local, peer) in expired {
            self.send_reset(local, peer);
            self.close(fd);
        }
        if let Some(left) = next {
            if let Err(err) = self.timer.reset(left, None) {
                tracing::warn!("virtio-vsock: cannot arm the handshake timer: {err}");
            }
        }
    }

    /// Accepts every waiting host connection.
    pub(super) fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= self.max_connections
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // Dropped: the host sees the socket close.
                    }
                    let fd = stream.as_raw_fd();
                    self.conns.insert(fd, Conn::new(stream, State::Handshake));
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// Handles readiness of the stream `fd`.
    pub(super) fn stream_ready(
        &mut self,
        fd: RawFd,
        readable: bool,
        writable: bool,
        hung_up: bool,
    ) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        if writable {
            flush_to_host(conn);
        }
        if readable || hung_up {
            match conn.state {
                State::Handshake => self.read_handshake(fd),
                State::Established => self.read_host_data(fd),
                State::AwaitingResponse => {}
            }
        }
    }

    fn read_handshake(&mut self, fd: RawFd) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match conn.stream.read(&mut byte) {
                Ok(0) => return self.close(fd),
                Ok(_) if byte[0] == b'\n' => break parse_connect_line(&conn.line),
                Ok(_) if conn.line.len() < MAX_CONNECT_LINE => conn.line.push(byte[0]),
                Ok(_) => break None,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.close(fd),
            }
        };
        let Some(peer_port) = port else {
            return self.close(fd);
        };
        let local_port = self.next_local_port;
        self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
        conn.state = State::AwaitingResponse;
        conn.local_port = local_port;
        conn.peer_port = peer_port;
        conn.requested_at = Some(Instant::now());
        if !self.timer.is_armed().unwrap_or(true) {
            if let Err(err) = self.timer.reset(CONNECT_TIMEOUT, None) {
                tracing::warn!("virtio-vsock: cannot arm the handshake timer: {err}");
            }
        }
        self.ports.insert((local_port, peer_port), fd);
        self.queue_control(local_port, peer_port, op::REQUEST, 0);
    }

    fn read_host_data(&mut self, fd: RawFd) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        if !conn.to_guest.is_empty() {
            return;
        }
        let want = conn.peer_credit().min(MAX_PKT_PAYLOAD) as usize;
        if want == 0 {
            return;
        }
        conn.to_guest.resize(want, 0);
        match conn.stream.read(&mut conn.to_guest) {
            Ok(0) => {
                conn.to_guest.clear();
                let (local, peer) = (conn.local_port, conn.peer_port);
                // The host closed: tell the guest nothing more comes.
                self.queue_control(local, peer, op::SHUTDOWN, 3);
                self.close(fd);
            }
            Ok(n) => conn.to_guest.truncate(n),
            Err(err) => {
                conn.to_guest.clear();
                if !matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                    let (local, peer) = (conn.local_port, conn.peer_port);
                    self.send_reset(local, peer);
                    self.close(fd);
                }
            }
        }
    }

    fn queue_control(&mut self, local: u32, peer: u32, op: u16, flags: u32) {
        if self.control.len() >= MAX_PENDING_CONTROL {
            return;
        }
        let fwd_cnt = self
            .ports
            .get(&(local, peer))
            .and_then(|fd| self.conns.get_mut(fd))
            .map_or(0, |conn| {
                conn.fwd_cnt_sent = conn.fwd_cnt;
                conn.fwd_cnt
            });
        self.control.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: local,
            dst_port: peer,
            len: 0,
            kind: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt,
        });
    }

    fn send_reset(&mut self, local: u32, peer: u32) {
        self.counters.resets += 1;
        self.queue_control(local, peer, op::RST, 0);
    }

    /// Forgets the connection of `fd`; its stream closes once the event
    /// loop stopped watching it.
    fn close(&mut self, fd: RawFd) {
        if let Some(conn) = self.conns.remove(&fd) {
            self.ports.remove(&(conn.local_port, conn.peer_port));
            let watched = conn.watched.is_some();
            self.closing.push((conn.stream, watched));
        }
    }

    /// Handles every packet the guest queued.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let Some(queue) = active.queues.get_mut(TX) else {
            return;
        };
        let mut packets = Vec::new();
        let mut completed = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            packets.push(read_packet(&mem, chain));
            if queue.add_used(&mem, head, 0).is_err() {
                break;
            }
            completed = true;
        }
        if completed && queue.needs_notification(&mem).unwrap_or(true) {
            let _ = active.interrupt.signal_used_queue();
        }
        for packet in packets {
            match packet {
                Some((header, payload)) if self.valid(&header) => {
                    self.handle_packet(header, payload)
                }
                _ => self.counters.dropped += 1,
            }
        }
    }

    fn valid(&self, header: &Header) -> bool {
        header.src_cid == self.cid && header.dst_cid == HOST_CID && header.kind == TYPE_STREAM
    }

    fn handle_packet(&mut self, header: Header, payload: Vec<u8>) {
        let key = (header.dst_port, header.src_port);
        let Some(&fd) = self.ports.get(&key) else {
            match header.op {
                op::REQUEST => self.connect_to_host(header),
                op::RST => {}
                _ => self.send_reset(header.dst_port, header.src_port),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        conn.peer_buf_alloc = header.buf_alloc;
        conn.peer_fwd_cnt = header.fwd_cnt;
        match (header.op, conn.state) {
            (op::RESPONSE, State::AwaitingResponse) => {
                conn.state = State::Established;
                self.counters.connected += 1;
                let reply = format!("OK {}\n", header.dst_port);
                // A few bytes to a fresh socket: they fit its buffer.
                if conn.stream.write_all(reply.as_bytes()).is_err() {
                    self.send_reset(key.0, key.1);
                    self.close(fd);
                }
            }
            (op::RW, State::Established) => {
                let buffered = conn.to_host.len() + payload.len();
                if buffered > CONN_BUF_ALLOC as usize {
                    // More than the credit it was given.
                    self.send_reset(key.0, key.1);
                    return self.close(fd);
                }
                conn.to_host.extend_from_slice(&payload);
                flush_to_host(conn);
                if conn.fwd_cnt.wrapping_sub(conn.fwd_cnt_sent) >= CONN_BUF_ALLOC / 4 {
                    self.queue_control(key.0, key.1, op::CREDIT_UPDATE, 0);
                }
            }
            (op::CREDIT_REQUEST, _) => self.queue_control(key.0, key.1, op::CREDIT_UPDATE, 0),
            (op::CREDIT_UPDATE, _) => {}
            (op::SHUTDOWN, _) | (op::RST, _) => {
                if header.op == op::SHUTDOWN {
                    flush_to_host(conn);
                    self.queue_control(key.0, key.1, op::RST, 0);
                }
                self.close(fd);
            }
            _ => {
                self.send_reset(key.0, key.1);
                self.close(fd);
            }
        }
    }

    /// A guest connection to host port P: connect to `<path>_P`.
    fn connect_to_host(&mut self, header: Header) {
        let (local, peer) = (header.dst_port, header.src_port);
        if self.conns.len() >= self.max_connections {
            return self.send_reset(local, peer);
        }
        let mut target = self.path.clone().into_os_string();
        target.push(format!("_{local}"));
        let stream = match UnixStream::connect(&target) {
            Ok(stream) if stream.set_nonblocking(true).is_ok() => stream,
            _ => return self.send_reset(local, peer),
        };
        let fd = stream.as_raw_fd();
        let mut conn = Conn::new(stream, State::Established);
        conn.local_port = local;
        conn.peer_port = peer;
        conn.peer_buf_alloc = header.buf_alloc;
        conn.peer_fwd_cnt = header.fwd_cnt;
        self.conns.insert(fd, conn);
        self.ports.insert((local, peer), fd);
        self.counters.connected += 1;
        self.queue_control(local, peer, op::RESPONSE, 0);
    }

    /// Fills the guest's receive buffers: control packets first, then data
    /// the host sent, within each connection's credit.
    pub fn process_rx(&mut self) {
        let Some(mut active) = self.active.take() else {
            return;
        };
        let mem = active.mem.clone();
        let mut completed = false;
        if let Some(queue) = active.queues.get_mut(RX) {
            loop {
                let next = match self.control.front() {
                    Some(header) => Some((*header, None)),
                    None => self
                        .next_data_header()
                        .map(|(fd, header)| (header, Some(fd))),
                };
                let Some((header, fd)) = next else {
                    break;
                };
                let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                    break;
                };
                let head = chain.head_index();
                // As much of the held data as the credit and this chain
                // allow; the rest goes in the next packets.
                let payload = fd
                    .and_then(|fd| self.conns.get(&fd))
                    .map_or(&[][..], |conn| {
                        let credit = conn.peer_credit() as usize;
                        &conn.to_guest[..conn.to_guest.len().min(credit)]
                    });
                let written = write_packet(&mem, chain, header, payload);
                match fd {
                    None => {
                        self.control.pop_front();
                    }
                    Some(fd) => {
                        if let (Some(conn), Some(sent)) = (self.conns.get_mut(&fd), written) {
                            conn.to_guest.drain(..sent);
                            conn.tx_cnt = conn.tx_cnt.wrapping_add(sent as u32);
                            conn.fwd_cnt_sent = header.fwd_cnt;
                        }
                    }
                }
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

    /// The header of the next data packet (its length still 0): for a
    /// connection holding host data that the guest has credit for.
    fn next_data_header(&self) -> Option<(RawFd, Header)> {
        let (&fd, conn) = self.conns.iter().find(|(_, c)| {
            c.state == State::Established && !c.to_guest.is_empty() && c.peer_credit() > 0
        })?;
        let header = Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: conn.local_port,
            dst_port: conn.peer_port,
            len: 0,
            kind: TYPE_STREAM,
            op: op::RW,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: conn.fwd_cnt,
        };
        Some((fd, header))
    }

    /// Streams whose watch must change: `(fd, currently, wanted)`, where a
    /// watch is `Some(out)` (in, plus out if `out`) or `None`.
    pub(super) fn watch_changes(&mut self) -> Vec<(RawFd, Option<bool>, Option<bool>)> {
        let mut changes = Vec::new();
        for (&fd, conn) in &mut self.conns {
            let (input, output) = conn.wants();
            let wanted = (input || output).then_some(output);
            if wanted != conn.watched {
                changes.push((fd, conn.watched, wanted));
                conn.watched = wanted;
            }
        }
        changes
    }

    /// Closed streams: `(fd, was watched)`; they close when dropped.
    pub(super) fn take_closing(&mut self) -> Vec<(UnixStream, bool)> {
        std::mem::take(&mut self.closing)
    }
}

/// Writes held guest data to the host stream as far as it goes.
fn flush_to_host(conn: &mut Conn) {
    while !conn.to_host.is_empty() {
        match conn.stream.write(&conn.to_host) {
            Ok(0) => break,
            Ok(n) => {
                conn.to_host.drain(..n);
                conn.fwd_cnt = conn.fwd_cnt.wrapping_add(n as u32);
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// A tx chain as header and payload; `None` if malformed.
fn read_packet<M>(mem: &GuestMemoryMmap, chain: DescriptorChain<M>) -> Option<(Header, Vec<u8>)>
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory,
{
    let mut bytes = Vec::new();
    let limit = Header::LEN + MAX_PKT_PAYLOAD as usize;
    for desc in chain {
        let len = desc.len() as usize;
        if desc.is_write_only() || bytes.len() + len > limit {
            return None;
        }
        let start = bytes.len();
        bytes.resize(start + len, 0);
        mem.read_slice(bytes.get_mut(start..)?, desc.addr()).ok()?;
    }
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
    let wanted = Header::LEN + payload.len();
    let mut buffers: Vec<(GuestAddress, usize)> = Vec::new();
    let mut room = 0usize;
    for desc in chain {
        if !desc.is_write_only() || !mem.check_range(desc.addr(), desc.len() as usize) {
            return None;
        }
        buffers.push((desc.addr(), desc.len() as usize));
        room = room.saturating_add(desc.len() as usize);
        if room >= wanted {
            break;
        }
    }
    let sent = room.checked_sub(Header::LEN)?.min(payload.len());
    if sent == 0 && !payload.is_empty() {
        return None;
    }
    header.len = u32::try_from(sent).ok()?;
    let head = header.to_bytes();
    let mut data = head.iter().chain(&payload[..sent]).copied();
    for (addr, len) in buffers {
        let chunk: Vec<u8> = data.by_ref().take(len).collect();
        if chunk.is_empty() {
            break;
        }
        mem.write_slice(&chunk, addr).ok()?;
    }
    Some(sent)
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
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
        if queues.queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueNotReady(queues.queues.len()));
        }
        self.active = Some(queues);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.control.clear();
        let fds: Vec<RawFd> = self.conns.keys().copied().collect();
        for fd in fds {
            self.close(fd);
        }
        // The streams close when the event loop stops watching them: wake
        // it (a reset comes from a vCPU thread, not from the loop).
        if let Some(event) = self.queue_events.get(EVENT_QUEUE) {
            let _ = event.write(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::Queue;

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, queue_set};

    const GUEST_CID: u64 = 3;
    /// Rings of queue i at `i * RING_STRIDE`: descriptors, then available
    /// ring at +0x1000, used ring at +0x2000.
    const RING_STRIDE: u64 = 0x4000;
    /// Buffers: rx at 0x10_0000 (4 KiB each), tx at 0x20_0000.
    const RX_BUFS: u64 = 0x10_0000;
    const TX_BUFS: u64 = 0x20_0000;

    /// The driver side of one split queue.
    struct Ring {
        base: u64,
        next_avail: u16,
        last_used: u16,
    }

    impl Ring {
        fn new(index: u64) -> Self {
            Ring {
                base: index * RING_STRIDE,
                next_avail: 0,
                last_used: 0,
            }
        }

        fn queue(&self) -> Queue {
            let mut queue = Queue::new(QUEUE_SIZE).unwrap();
            queue.set_desc_table_address(Some(self.base as u32), Some(0));
            queue.set_avail_ring_address(Some((self.base + 0x1000) as u32), Some(0));
            queue.set_used_ring_address(Some((self.base + 0x2000) as u32), Some(0));
            queue.set_ready(true);
            queue
        }

        /// Posts one single-descriptor chain.
        fn post(&mut self, mem: &GuestMemoryMmap, addr: u64, len: u32, write: bool) {
            let slot = u64::from(self.next_avail % QUEUE_SIZE);
            let flags: u16 = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
            let desc = self.base + 16 * slot;
            mem.write_obj(addr, GuestAddress(desc)).unwrap();
            mem.write_obj(len, GuestAddress(desc + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(desc + 12)).unwrap();
            mem.write_obj(slot as u16, GuestAddress(self.base + 0x1000 + 4 + 2 * slot))
                .unwrap();
            self.next_avail = self.next_avail.wrapping_add(1);
            mem.write_obj(self.next_avail, GuestAddress(self.base + 0x1002))
                .unwrap();
        }

        /// Used entries since the last call: (descriptor id, length).
        fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
            let idx: u16 = mem.read_obj(GuestAddress(self.base + 0x2002)).unwrap();
            let mut out = Vec::new();
            while self.last_used != idx {
                let entry = self.base + 0x2004 + 8 * u64::from(self.last_used % QUEUE_SIZE);
                out.push((
                    mem.read_obj(GuestAddress(entry)).unwrap(),
                    mem.read_obj(GuestAddress(entry + 4)).unwrap(),
                ));
                self.last_used = self.last_used.wrapping_add(1);
            }
            out
        }
    }

    /// A vsock device on a real event loop, and a scripted guest driver.
    struct Harness {
        dir: PathBuf,
        mem: GuestMemoryMmap,
        device: Arc<Mutex<Vsock>>,
        manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
        rx: Ring,
        tx: Ring,
        tx_slot: u64,
    }

    impl Harness {
        fn new(name: &str, limit: usize) -> Self {
            let dir =
                std::env::temp_dir().join(format!("vmpod-vsock-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let device =
                Vsock::with_connection_limit(GUEST_CID, &dir.join("v.sock"), limit).unwrap();
            let device = Arc::new(Mutex::new(device));
            let mem = guest_memory();
            let (mut rx, tx, evt) = (Ring::new(0), Ring::new(1), Ring::new(2));
            for i in 0..64 {
                rx.post(&mem, RX_BUFS + i * 0x1000, 0x1000, true);
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

        fn path(&self) -> PathBuf {
            self.dir.join("v.sock")
        }

        fn run(&mut self) {
            for _ in 0..5 {
                self.manager.run_with_timeout(20).unwrap();
            }
        }

        /// The guest sends a packet.
        fn send(&mut self, header: Header, payload: &[u8]) {
            let addr = TX_BUFS + (self.tx_slot % 64) * 0x1_0000;
            self.tx_slot += 1;
            let mut bytes = header.to_bytes().to_vec();
            bytes.extend_from_slice(payload);
            self.mem.write_slice(&bytes, GuestAddress(addr)).unwrap();
            self.tx.post(&self.mem, addr, bytes.len() as u32, false);
            self.device.lock().unwrap().queue_events()[TX]
                .write(1)
                .unwrap();
            self.run();
        }

        /// Packets the device gave the guest since the last call; their
        /// buffers are posted again.
        fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
            self.run();
            let mut packets = Vec::new();
            for (id, len) in self.rx.used(&self.mem) {
                let addr = RX_BUFS + u64::from(id) * 0x1000;
                let mut bytes = vec![0u8; len as usize];
                self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
                let raw: [u8; Header::LEN] = bytes[..Header::LEN].try_into().unwrap();
                packets.push((Header::from_bytes(&raw), bytes[Header::LEN..].to_vec()));
                self.rx.post(&self.mem, addr, 0x1000, true);
            }
            packets
        }

        fn guest_header(&self, op: u16, guest_port: u32, host_port: u32, len: u32) -> Header {
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
        fn host_connect(&mut self, line: &[u8]) -> UnixStream {
            let mut stream = UnixStream::connect(self.path()).unwrap();
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
    fn read_some(stream: &mut UnixStream, n: usize) -> Vec<u8> {
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
    fn is_closed(stream: &mut UnixStream) -> bool {
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
    fn test_refused_port_closes_the_host_stream() {
        let mut h = Harness::new("refused", MAX_CONNECTIONS);
        let mut stream = h.host_connect(b"CONNECT 99\n");
        let request = h.received()[0].0;
        h.send(h.guest_header(op::RST, 99, request.src_port, 0), &[]);
        assert!(is_closed(&mut stream));
    }

    #[test]
    fn test_malformed_lines_close_the_host_stream() {
        let mut h = Harness::new("malformed", MAX_CONNECTIONS);
        for line in [&b"HELLO 1\n"[..], b"CONNECT x\n", &[b'A'; 40]] {
            let mut stream = h.host_connect(line);
            assert!(is_closed(&mut stream), "{line:?}");
        }
        assert!(h.received().is_empty(), "the guest was asked anyway");
    }

    #[test]
    fn test_connection_limit() {
        let mut h = Harness::new("limit", 2);
        let _a = h.host_connect(b"CONNECT 1\n");
        let _b = h.host_connect(b"CONNECT 2\n");
        let mut c = h.host_connect(b"CONNECT 3\n");
        assert!(is_closed(&mut c), "a third connection was kept");
        assert_eq!(h.received().len(), 2);
    }

    #[test]
    fn test_guest_connections_to_the_host() {
        let mut h = Harness::new("guestconn", MAX_CONNECTIONS);
        let listener = UnixListener::bind(format!("{}_5678", h.path().display())).unwrap();
        h.send(h.guest_header(op::REQUEST, 40000, 5678, 0), &[]);
        let reply = h.received();
        assert_eq!(reply[0].0.op, op::RESPONSE);
        let (mut accepted, _) = listener.accept().unwrap();
        h.send(h.guest_header(op::RW, 40000, 5678, 5), b"hello");
        assert_eq!(read_some(&mut accepted, 5), b"hello");
        // Nobody listens on port 9.
        h.send(h.guest_header(op::REQUEST, 40001, 9, 0), &[]);
        assert_eq!(h.received()[0].0.op, op::RST);
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
    fn test_unanswered_connections_time_out() {
        let mut h = Harness::new("timeout", MAX_CONNECTIONS);
        let mut stream = h.host_connect(b"CONNECT 1234\n");
        assert_eq!(h.received()[0].0.op, op::REQUEST);
        let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(2);
        while Instant::now() < deadline && h.device.lock().unwrap().conns.len() == 1 {
            h.run();
        }
        assert!(is_closed(&mut stream), "still open after the timeout");
        // The guest is told to drop its half too.
        assert_eq!(h.received()[0].0.op, op::RST);
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
