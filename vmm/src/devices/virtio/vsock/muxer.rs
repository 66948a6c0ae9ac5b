// SPDX-License-Identifier: Apache-2.0
//! The Unix-socket side of hybrid vsock: the listener where host
//! processes ask for a guest port (`CONNECT <port>\n`, answered
//! `OK <host_port>\n`), the `<path>_<port>` sockets guest connections go
//! to, the connection table, and the control packets waiting for the
//! guest. The muxer routes guest packets to their connection and says
//! which packet the guest gets next; the device moves them through the
//! queues.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vmm_sys_util::timerfd::TimerFd;
use vmpod_sys::unix_socket::{split_with_suffix, SocketDir};

use super::connection::{Conn, Handshake, HostRead, Reply, State};
use super::device::{VsockCounters, VsockError};
use super::packet::{op, Header, TYPE_STREAM};
use super::{
    CONNECT_TIMEOUT, CONN_BUF_ALLOC, FIRST_LOCAL_PORT, HOST_CID, MAX_CONNECTIONS,
    MAX_PENDING_CONTROL,
};

/// Where the next packet for the guest comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxSource {
    /// The oldest pending control packet.
    Control,
    /// Data held for the connection of this stream.
    Data(RawFd),
}

/// The host side of every vsock connection of one device.
#[derive(Debug)]
pub(super) struct Muxer {
    cid: u64,
    path: PathBuf,
    /// The socket's directory, through which the `<name>_<port>` sockets
    /// are reached whatever the directory's length.
    dir: SocketDir,
    /// The socket's file name.
    name: OsString,
    listener: UnixListener,
    /// Fires when the oldest unanswered host connection times out.
    timer: TimerFd,
    /// Connections by stream descriptor.
    pub(super) conns: HashMap<RawFd, Conn>,
    /// Established and pending connections by (host port, guest port).
    ports: HashMap<(u32, u32), RawFd>,
    /// Streams to stop watching and close.
    closing: Vec<(UnixStream, bool)>,
    control: VecDeque<Header>,
    next_local_port: u32,
    max_connections: usize,
    pub(super) counters: VsockCounters,
}

impl Muxer {
    /// A muxer for guest `cid`, listening on the Unix socket `path`, with
    /// at most `max_connections` connections.
    pub(super) fn new(cid: u64, path: &Path, max_connections: usize) -> Result<Self, VsockError> {
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
        // Opened now, if needed at all: connects to `<name>_<port>` then
        // make no system call but the socket's (the device's seccomp filter).
        let (dir, name) = split_with_suffix(path, "_4294967295".len()).map_err(listen_error)?;
        let name = name.to_owned();
        let listener = dir.bind(&name).map_err(listen_error)?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        Ok(Muxer {
            cid,
            path: path.to_path_buf(),
            dir,
            name,
            listener,
            timer: TimerFd::new().map_err(VsockError::Timer)?,
            conns: HashMap::new(),
            ports: HashMap::new(),
            closing: Vec::new(),
            control: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            max_connections: max_connections.min(MAX_CONNECTIONS),
            counters: VsockCounters::default(),
        })
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
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
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
            conn.flush_to_host();
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
        let peer_port = match conn.read_connect_line() {
            Handshake::Incomplete => return,
            Handshake::Failed => return self.close(fd),
            Handshake::Port(port) => port,
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
        let (local, peer) = (conn.local_port, conn.peer_port);
        match conn.read_host_data() {
            HostRead::Ready => {}
            HostRead::Closed => {
                // The host closed: tell the guest nothing more comes.
                self.queue_control(local, peer, op::SHUTDOWN, 3);
                self.close(fd);
            }
            HostRead::Failed => {
                self.send_reset(local, peer);
                self.close(fd);
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

    /// Closes every connection and forgets pending control packets (driver
    /// reset).
    pub(super) fn close_all(&mut self) {
        self.control.clear();
        let fds: Vec<RawFd> = self.conns.keys().copied().collect();
        for fd in fds {
            self.close(fd);
        }
    }

    /// Handles one packet from the guest, or counts it dropped if it was
    /// malformed (`None`) or not addressed from this guest to the host.
    pub(super) fn handle_guest_packet(&mut self, packet: Option<(Header, Vec<u8>)>) {
        match packet {
            Some((header, payload)) if self.valid(&header) => self.route(header, &payload),
            _ => self.counters.dropped += 1,
        }
    }

    fn valid(&self, header: &Header) -> bool {
        header.src_cid == self.cid && header.dst_cid == HOST_CID && header.kind == TYPE_STREAM
    }

    /// Passes a valid guest packet to its connection (or opens one, or
    /// answers that there is none).
    fn route(&mut self, header: Header, payload: &[u8]) {
        let key = (header.dst_port, header.src_port);
        let Some(&fd) = self.ports.get(&key) else {
            match header.op {
                op::REQUEST => self.connect_to_host(header),
                op::RST => {}
                _ => self.send_reset(key.0, key.1),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        conn.update_peer_credit(&header);
        match conn.on_guest_packet(header.op, header.dst_port, payload) {
            Reply::Nothing => {}
            Reply::Connected { reply_failed } => {
                self.counters.connected += 1;
                if reply_failed {
                    self.send_reset(key.0, key.1);
                    self.close(fd);
                }
            }
            Reply::CreditUpdate => self.queue_control(key.0, key.1, op::CREDIT_UPDATE, 0),
            Reply::AcknowledgeShutdown => {
                self.queue_control(key.0, key.1, op::RST, 0);
                self.close(fd);
            }
            Reply::Close => self.close(fd),
            Reply::Reset => {
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
        let mut target = self.name.clone();
        target.push(format!("_{local}"));
        let stream = match self.dir.connect(&target) {
            Ok(stream) if stream.set_nonblocking(true).is_ok() => stream,
            _ => return self.send_reset(local, peer),
        };
        let fd = stream.as_raw_fd();
        let mut conn = Conn::new(stream, State::Established);
        conn.local_port = local;
        conn.peer_port = peer;
        conn.update_peer_credit(&header);
        self.conns.insert(fd, conn);
        self.ports.insert((local, peer), fd);
        self.counters.connected += 1;
        self.queue_control(local, peer, op::RESPONSE, 0);
    }

    /// The next packet for the guest, control packets first, then data
    /// the host sent: its source, its header (length still 0) and the
    /// payload the guest's credit allows.
    pub(super) fn next_for_guest(&self) -> Option<(RxSource, Header, &[u8])> {
        if let Some(header) = self.control.front() {
            return Some((RxSource::Control, *header, &[]));
        }
        let (&fd, conn) = self.conns.iter().find(|(_, c)| c.has_data_for_guest())?;
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
        Some((RxSource::Data(fd), header, conn.data_for_guest()))
    }

    /// Records what became of the packet [`Muxer::next_for_guest`] gave:
    /// `sent` payload bytes reached the guest, or `None` if its buffers
    /// were unusable (a control packet is then lost, data stays held).
    pub(super) fn sent_to_guest(&mut self, source: RxSource, header: &Header, sent: Option<usize>) {
        match source {
            RxSource::Control => {
                self.control.pop_front();
            }
            RxSource::Data(fd) => {
                if let (Some(conn), Some(sent)) = (self.conns.get_mut(&fd), sent) {
                    conn.sent_to_guest(sent, header.fwd_cnt);
                }
            }
        }
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

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::device::tests::{is_closed, read_some, Harness};
    use super::*;

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
    fn test_sockets_in_a_directory_longer_than_an_address() {
        let top = std::env::temp_dir().join(format!("vmpod-vsock-{}-deep", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let dir = top.join("d".repeat(120)).join("run");
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = Harness::in_dir(dir, MAX_CONNECTIONS);
        assert!(h.path().as_os_str().len() > 108);
        // Host to guest, through the long socket path.
        let _stream = h.host_connect(b"CONNECT 52\n");
        let request = h.received()[0].0;
        assert_eq!((request.op, request.dst_port), (op::REQUEST, 52));
        // Guest to host, to the long `<path>_<port>`.
        let mut target = h.path().into_os_string();
        target.push("_5679");
        let listener = vmpod_sys::unix_socket::bind(Path::new(&target)).unwrap();
        h.send(h.guest_header(op::REQUEST, 40000, 5679, 0), &[]);
        assert_eq!(h.received()[0].0.op, op::RESPONSE);
        let (mut accepted, _) = listener.accept().unwrap();
        h.send(h.guest_header(op::RW, 40000, 5679, 4), b"deep");
        assert_eq!(read_some(&mut accepted, 4), b"deep");
        drop(h);
        assert!(
            !Path::new(&target).with_file_name("v.sock").exists(),
            "the device's socket is removed"
        );
        std::fs::remove_dir_all(top).unwrap();
    }

    #[test]
    fn test_unanswered_connections_time_out() {
        let mut h = Harness::new("timeout", MAX_CONNECTIONS);
        let mut stream = h.host_connect(b"CONNECT 1234\n");
        assert_eq!(h.received()[0].0.op, op::REQUEST);
        let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(2);
        while Instant::now() < deadline && h.device.lock().unwrap().muxer.conns.len() == 1 {
            h.run();
        }
        assert!(is_closed(&mut stream), "still open after the timeout");
        // The guest is told to drop its half too.
        assert_eq!(h.received()[0].0.op, op::RST);
    }
}
