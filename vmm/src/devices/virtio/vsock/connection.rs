// SPDX-License-Identifier: Apache-2.0
//! One vsock connection and its state machine: the host-side Unix stream,
//! where the handshake is, the credit both sides have, and the data held
//! each way. A connection does no queue work: it says what the muxer must
//! tell the guest.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use super::packet::{op, parse_connect_line, Header};
use super::{CONN_BUF_ALLOC, MAX_CONNECT_LINE, MAX_PKT_PAYLOAD};

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// A host process connected; its `CONNECT` line is not complete yet.
    Handshake,
    /// The guest was asked to accept; no answer yet.
    AwaitingResponse,
    /// Data flows.
    Established,
}

/// What the muxer does after a guest packet reached a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reply {
    /// Nothing more.
    Nothing,
    /// The guest accepted a host connection: count it, and if the `OK`
    /// line could not be written to the host, reset it and close.
    Connected {
        /// Writing `OK <port>` to the host stream failed.
        reply_failed: bool,
    },
    /// Tell the guest how much it may send.
    CreditUpdate,
    /// The guest shut down: answer with a reset and close.
    AcknowledgeShutdown,
    /// Close the stream; the guest already knows.
    Close,
    /// The connection broke or the guest broke the protocol: reset it and
    /// close the stream.
    Reset,
}

/// How reading the host's `CONNECT <port>\n` line went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handshake {
    /// The line is not complete yet.
    Incomplete,
    /// The host asked for this guest port.
    Port(u32),
    /// The line is malformed, or the host closed: close the stream.
    Failed,
}

/// How reading host data for the guest went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HostRead {
    /// Data is held for the guest, or nothing could be read yet.
    Ready,
    /// The host closed its end: tell the guest and close.
    Closed,
    /// The stream failed: reset and close.
    Failed,
}

/// One host-side Unix stream and its vsock connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) stream: UnixStream,
    pub(super) state: State,
    /// The handshake line so far.
    line: Vec<u8>,
    /// Host-side port, once known.
    pub(super) local_port: u32,
    /// Guest-side port, once known.
    pub(super) peer_port: u32,
    /// The guest's receive buffer.
    peer_buf_alloc: u32,
    /// How much of what we sent the guest consumed.
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest.
    tx_cnt: u32,
    /// Bytes from the guest written to the host stream.
    pub(super) fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub(super) fwd_cnt_sent: u32,
    /// Guest data the host stream has not taken yet.
    to_host: Vec<u8>,
    /// Host data read but not yet given to the guest.
    pub(super) to_guest: Vec<u8>,
    /// Whether the event loop watches the stream, and for what.
    pub(super) watched: Option<bool>,
    /// When the guest was asked to accept (host-initiated connections).
    pub(super) requested_at: Option<Instant>,
}

impl Conn {
    /// A connection on `stream`, starting in `state`.
    pub(super) fn new(stream: UnixStream, state: State) -> Self {
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

    /// Takes the guest's view of its buffer from a packet it sent.
    pub(super) fn update_peer_credit(&mut self, header: &Header) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = header.fwd_cnt;
    }

    /// Bytes the guest can still take.
    pub(super) fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether host data waits that the guest has credit for.
    pub(super) fn has_data_for_guest(&self) -> bool {
        self.state == State::Established && !self.to_guest.is_empty() && self.peer_credit() > 0
    }

    /// The held host data the guest's credit allows now.
    pub(super) fn data_for_guest(&self) -> &[u8] {
        let credit = self.peer_credit() as usize;
        &self.to_guest[..self.to_guest.len().min(credit)]
    }

    /// Records that `sent` bytes of the held data reached the guest, in a
    /// packet that told it `fwd_cnt`.
    pub(super) fn sent_to_guest(&mut self, sent: usize, fwd_cnt: u32) {
        self.to_guest.drain(..sent.min(self.to_guest.len()));
        self.tx_cnt = self.tx_cnt.wrapping_add(sent as u32);
        self.fwd_cnt_sent = fwd_cnt;
    }

    /// Whether the stream is worth watching for input, and whether for
    /// output: `(in, out)`.
    pub(super) fn wants(&self) -> (bool, bool) {
        let input = match self.state {
            State::Handshake => true,
            State::AwaitingResponse => false,
            State::Established => self.to_guest.is_empty() && self.peer_credit() > 0,
        };
        (input, !self.to_host.is_empty())
    }

    /// Reads the handshake line as far as the host sent it.
    pub(super) fn read_connect_line(&mut self) -> Handshake {
        let mut byte = [0u8; 1];
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) => return Handshake::Failed,
                Ok(_) if byte[0] == b'\n' => {
                    return parse_connect_line(&self.line)
                        .map_or(Handshake::Failed, Handshake::Port)
                }
                Ok(_) if self.line.len() < MAX_CONNECT_LINE => self.line.push(byte[0]),
                Ok(_) => return Handshake::Failed,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Handshake::Incomplete,
                Err(_) => return Handshake::Failed,
            }
        }
    }

    /// Reads host data for the guest, as much as its credit allows, once
    /// what was read before went out.
    pub(super) fn read_host_data(&mut self) -> HostRead {
        if !self.to_guest.is_empty() {
            return HostRead::Ready;
        }
        let want = self.peer_credit().min(MAX_PKT_PAYLOAD) as usize;
        if want == 0 {
            return HostRead::Ready;
        }
        self.to_guest.resize(want, 0);
        match self.stream.read(&mut self.to_guest) {
            Ok(0) => {
                self.to_guest.clear();
                HostRead::Closed
            }
            Ok(n) => {
                self.to_guest.truncate(n);
                HostRead::Ready
            }
            Err(err) => {
                self.to_guest.clear();
                if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                    HostRead::Ready
                } else {
                    HostRead::Failed
                }
            }
        }
    }

    /// Moves the connection on for a guest packet of `op` carrying
    /// `payload`; says what else the muxer must do.
    pub(super) fn on_guest_packet(&mut self, op: u16, dst_port: u32, payload: &[u8]) -> Reply {
        match (op, self.state) {
            (op::RESPONSE, State::AwaitingResponse) => {
                self.state = State::Established;
                let reply = format!("OK {dst_port}\n");
                // A few bytes to a fresh socket: they fit its buffer.
                let reply_failed = self.stream.write_all(reply.as_bytes()).is_err();
                Reply::Connected { reply_failed }
            }
            (op::RW, State::Established) => {
                let buffered = self.to_host.len() + payload.len();
                if buffered > CONN_BUF_ALLOC as usize {
                    // More than the credit it was given.
                    return Reply::Reset;
                }
                self.to_host.extend_from_slice(payload);
                self.flush_to_host();
                if self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= CONN_BUF_ALLOC / 4 {
                    Reply::CreditUpdate
                } else {
                    Reply::Nothing
                }
            }
            (op::CREDIT_REQUEST, _) => Reply::CreditUpdate,
            (op::CREDIT_UPDATE, _) => Reply::Nothing,
            (op::SHUTDOWN, _) => {
                self.flush_to_host();
                Reply::AcknowledgeShutdown
            }
            (op::RST, _) => Reply::Close,
            _ => Reply::Reset,
        }
    }

    /// Writes held guest data to the host stream as far as it goes.
    pub(super) fn flush_to_host(&mut self) {
        while !self.to_host.is_empty() {
            match self.stream.write(&self.to_host) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An established connection whose guest gave `buf_alloc` of credit,
    /// and the host's end of its stream.
    fn established(buf_alloc: u32) -> (Conn, UnixStream) {
        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut conn = Conn::new(ours, State::Established);
        conn.update_peer_credit(&Header {
            buf_alloc,
            ..Header::default()
        });
        (conn, host)
    }

    #[test]
    fn test_guest_data_reaches_the_host_within_credit() {
        let (mut conn, mut host) = established(4096);
        assert_eq!(conn.on_guest_packet(op::RW, 1, b"hello"), Reply::Nothing);
        let mut got = [0u8; 5];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");
        assert_eq!(conn.fwd_cnt, 5);
    }

    #[test]
    fn test_guest_data_over_its_credit_resets() {
        let (mut conn, _host) = established(4096);
        // The host does not read: the stream's buffer fills, the rest is
        // held, and what is held cannot pass the credit given.
        let chunk = vec![0u8; MAX_PKT_PAYLOAD as usize];
        let mut reply = Reply::Nothing;
        for _ in 0..=(2 * CONN_BUF_ALLOC / MAX_PKT_PAYLOAD + 64) {
            reply = conn.on_guest_packet(op::RW, 1, &chunk);
            if reply == Reply::Reset {
                break;
            }
        }
        assert_eq!(reply, Reply::Reset);
    }

    #[test]
    fn test_packets_out_of_state_reset() {
        let (mut conn, _host) = established(4096);
        assert_eq!(conn.on_guest_packet(op::RESPONSE, 1, &[]), Reply::Reset);
        let (ours, _host) = UnixStream::pair().unwrap();
        let mut waiting = Conn::new(ours, State::AwaitingResponse);
        assert_eq!(waiting.on_guest_packet(op::RW, 1, b"early"), Reply::Reset);
    }

    #[test]
    fn test_accepted_host_connection_is_told_ok() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        let mut conn = Conn::new(ours, State::AwaitingResponse);
        let reply = conn.on_guest_packet(op::RESPONSE, 1_073_741_824, &[]);
        assert_eq!(
            reply,
            Reply::Connected {
                reply_failed: false
            }
        );
        assert_eq!(conn.state, State::Established);
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
    }

    #[test]
    fn test_shutdown_and_reset_close() {
        let (mut conn, _host) = established(4096);
        assert_eq!(
            conn.on_guest_packet(op::SHUTDOWN, 1, &[]),
            Reply::AcknowledgeShutdown
        );
        assert_eq!(conn.on_guest_packet(op::RST, 1, &[]), Reply::Close);
        assert_eq!(
            conn.on_guest_packet(op::CREDIT_REQUEST, 1, &[]),
            Reply::CreditUpdate
        );
    }

    #[test]
    fn test_host_data_waits_for_guest_credit() {
        let (mut conn, mut host) = established(0);
        host.write_all(b"for the guest").unwrap();
        assert_eq!(conn.read_host_data(), HostRead::Ready);
        assert!(!conn.has_data_for_guest(), "read without credit");
        conn.update_peer_credit(&Header {
            buf_alloc: 4,
            ..Header::default()
        });
        assert_eq!(conn.read_host_data(), HostRead::Ready);
        assert_eq!(conn.data_for_guest(), b"for ");
        conn.sent_to_guest(4, 0);
        assert_eq!(conn.peer_credit(), 0);
        // The guest consumed those 4 bytes and has room for 64.
        conn.update_peer_credit(&Header {
            buf_alloc: 64,
            fwd_cnt: 4,
            ..Header::default()
        });
        assert_eq!(conn.read_host_data(), HostRead::Ready);
        assert_eq!(conn.data_for_guest(), b"the guest");
        conn.sent_to_guest(9, 0);
        drop(host);
        assert_eq!(conn.read_host_data(), HostRead::Closed);
    }

    #[test]
    fn test_connect_line_is_read_across_writes() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut conn = Conn::new(ours, State::Handshake);
        host.write_all(b"CONNECT 5").unwrap();
        assert_eq!(conn.read_connect_line(), Handshake::Incomplete);
        host.write_all(b"2\n").unwrap();
        assert_eq!(conn.read_connect_line(), Handshake::Port(52));
    }
}
