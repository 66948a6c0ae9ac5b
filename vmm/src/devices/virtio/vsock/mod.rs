// SPDX-License-Identifier: Apache-2.0
//! virtio-vsock (virtio 1.2, 5.10) in the VMM, as Firecracker's hybrid
//! vsock: the host side of every guest connection is a Unix socket.
//!
//! - Host to guest: a host process connects to the device's Unix socket
//!   and writes `CONNECT <port>\n`; the device asks the guest to accept on
//!   that port and, when it does, answers `OK <host_port>\n`; if the guest
//!   refuses, or does not answer within [`CONNECT_TIMEOUT`], the socket is
//!   closed.
//! - Guest to host: a guest connection to CID 2, port P, is connected to
//!   the Unix socket `<path>_P`; if nobody listens there, the guest gets a
//!   reset.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections (more are refused), at
//! most [`CONN_BUF_ALLOC`] bytes buffered per connection towards the host
//! (the credit the guest is given), at most one packet's payload buffered
//! towards the guest, and the guest gets no more than its credit.
//!
//! As in Firecracker: `device` works the queues, `muxer` owns the Unix
//! sockets and routes packets, `connection` is one connection's state
//! machine, `packet` the wire format.

mod connection;
mod device;
mod event_handler;
mod muxer;
mod packet;

pub use device::{Vsock, VsockCounters, VsockError};
pub use packet::{parse_connect_line, Header};

/// The host's CID, the destination of guest-initiated connections.
const HOST_CID: u64 = 2;
/// rx, tx and event queues.
const NUM_QUEUES: usize = 3;
/// Size of each queue.
const QUEUE_SIZE: u16 = 256;
/// Most connections at a time.
const MAX_CONNECTIONS: usize = 1024;
/// Buffer space advertised to the guest per connection.
const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload of one packet, either way.
const MAX_PKT_PAYLOAD: u32 = 64 * 1024;
/// Longest `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;
/// Control packets waiting for guest buffers; beyond, new ones are dropped.
const MAX_PENDING_CONTROL: usize = 2 * MAX_CONNECTIONS;
/// First host-side port given to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// How long the guest has to accept a host-initiated connection.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
