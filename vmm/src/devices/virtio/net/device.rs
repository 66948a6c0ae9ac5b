// SPDX-License-Identifier: Apache-2.0
//! The virtio-net device: frames move between the guest's queues and a
//! back end (the tap) through two reusable buffers of [`MAX_FRAME_LEN`].
//!
//! The guest is untrusted:
//! - a transmit chain with a device-writable descriptor, a buffer outside
//!   guest memory, more than [`MAX_FRAME_LEN`] bytes or less than a header
//!   is completed unsent (length 0) and counted;
//! - a receive chain with a device-readable descriptor or a buffer outside
//!   guest memory, or too small for the frame, is completed empty (length
//!   0) and the frame dropped and counted;
//! - with no receive buffer posted, the frame waits in the device (the tap
//!   is not read further) until the guest posts one: nothing is dropped
//!   silently.

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::{Tap, TapError};
use super::{MAX_FRAME_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::config::{MacAddr, NetConfig};
use crate::devices::virtio::device::{
    read_config_space, ActivateError, QueueSet, VirtioDevice, VirtioInterrupt,
};
use crate::devices::virtio::ids::VIRTIO_ID_NET;
use crate::devices::virtio::iovec::{ReadableBuffers, WritableBuffers};
use crate::devices::virtio::persist::{expect_same, DeviceState, DeviceStateError};
use crate::devices::virtio::{feature, VIRTIO_F_VERSION_1};
use crate::vstate::memory::{GuestMemory, GuestMemoryMmap};

/// Errors creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The tap cannot be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// A queue event cannot be created.
    #[error("Cannot create a virtio-net queue event")]
    QueueEvent(#[source] std::io::Error),
}

/// Where frames go and come from: the tap, or a socket pair in tests.
pub trait NetBackend: AsRawFd + Send + std::fmt::Debug {
    /// Reads one frame with its virtio-net header.
    ///
    /// # Errors
    /// `WouldBlock` when no frame waits, or the read's error.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame with its virtio-net header.
    ///
    /// # Errors
    /// The write's error.
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize>;
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        Tap::read_frame(self, buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        Tap::write_frame(self, frame)
    }
}

/// What happened to frames, for the log and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames sent to the back end.
    pub tx_frames: u64,
    /// Transmit chains completed unsent (malformed, or the back end failed).
    pub tx_dropped: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Frames dropped: the guest's receive chain was malformed or too small.
    pub rx_dropped: u64,
    /// Times a frame had to wait for the guest to post receive buffers.
    pub rx_deferred: u64,
}

/// A virtio-net device.
#[derive(Debug)]
pub struct Net {
    backend: Box<dyn NetBackend>,
    mac: MacAddr,
    /// Offered with `VIRTIO_NET_F_MTU` when set.
    mtu: Option<u16>,
    queue_events: [EventFd; 2],
    active: Option<QueueSet>,
    /// A frame read from the back end and not yet delivered (its length).
    rx_pending: Option<usize>,
    /// Whether the event loop watches the back end (see the event handler).
    pub(super) tap_watched: bool,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    counters: NetCounters,
}

impl Net {
    /// A device on the tap `config` names (in its network namespace, and
    /// created if missing and asked to), with its MAC or a random locally
    /// administered one, and its MTU.
    ///
    /// # Errors
    /// [`NetError`] naming the tap.
    pub fn with_tap(config: &NetConfig) -> Result<Self, NetError> {
        let tap = match &config.netns {
            Some(netns) => Tap::open_in(netns, &config.tap, config.create)?,
            None => Tap::open(&config.tap, config.create)?,
        };
        let mut net = Self::with_backend(Box::new(tap), config.mac)?;
        net.mtu = config.mtu;
        Ok(net)
    }

    /// A device on any back end.
    ///
    /// # Errors
    /// [`NetError::QueueEvent`] when out of file descriptors.
    pub fn with_backend(
        backend: Box<dyn NetBackend>,
        mac: Option<MacAddr>,
    ) -> Result<Self, NetError> {
        let event = || EventFd::new(EFD_NONBLOCK).map_err(NetError::QueueEvent);
        Ok(Net {
            backend,
            mac: mac.unwrap_or_else(random_mac),
            mtu: None,
            queue_events: [event()?, event()?],
            active: None,
            rx_pending: None,
            tap_watched: false,
            rx_buf: vec![0; MAX_FRAME_LEN],
            tx_buf: Vec::with_capacity(MAX_FRAME_LEN),
            counters: NetCounters::default(),
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// How frames fared so far.
    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// The back end's descriptor, to wait on.
    pub fn backend_fd(&self) -> RawFd {
        self.backend.as_raw_fd()
    }

    /// Whether no frame can be delivered now: one waits for guest buffers,
    /// or the driver has not activated the device. The back end is then not
    /// worth watching: its level-triggered readiness would wake the loop for
    /// nothing until the guest posts buffers (which it signals).
    pub fn rx_blocked(&self) -> bool {
        self.rx_pending.is_some() || self.active.is_none()
    }

    /// Sends every frame the guest queued for transmission.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let Some(queue) = active.queues.get_mut(TX_QUEUE) else {
            return;
        };
        let mut completed = false;
        while let Some(chain) = queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let sent = gather(&mem, chain, &mut self.tx_buf).and_then(|()| {
                match self.backend.write_frame(&self.tx_buf) {
                    Ok(_) => Some(()),
                    Err(err) => {
                        tracing::debug!("virtio-net: back end write failed: {err}");
                        None
                    }
                }
            });
            match sent {
                Some(()) => self.counters.tx_frames += 1,
                None => self.counters.tx_dropped += 1,
            }
            if queue.add_used(&mem, head, 0).is_err() {
                break;
            }
            completed = true;
        }
        if completed {
            notify(queue, &active.interrupt, &mem, "tx");
        }
    }

    /// Moves frames from the back end into the guest's receive buffers
    /// until either runs out.
    pub fn process_rx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mem = active.mem.clone();
        let Some(queue) = active.queues.get_mut(RX_QUEUE) else {
            return;
        };
        let mut completed = false;
        loop {
            let len = match self.rx_pending.take() {
                Some(len) => len,
                None => match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(len) if len >= VNET_HDR_LEN => len,
                    Ok(_) => continue,
                    Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                    Err(err) => {
                        if err.kind() != ErrorKind::WouldBlock {
                            tracing::warn!("virtio-net: back end read failed: {err}");
                        }
                        break;
                    }
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(&mem) else {
                self.rx_pending = Some(len);
                self.counters.rx_deferred += 1;
                break;
            };
            let head = chain.head_index();
            let frame = self.rx_buf.get_mut(..len).unwrap_or_default();
            // No MRG_RXBUF: num_buffers (header bytes 10-11) is always 1.
            if let Some(num_buffers) = frame.get_mut(10..12) {
                num_buffers.copy_from_slice(&1u16.to_le_bytes());
            }
            let used = match scatter(&mem, chain, frame) {
                Some(()) => {
                    self.counters.rx_frames += 1;
                    u32::try_from(len).unwrap_or(0)
                }
                None => {
                    self.counters.rx_dropped += 1;
                    0
                }
            };
            if queue.add_used(&mem, head, used).is_err() {
                break;
            }
            completed = true;
        }
        if completed {
            notify(queue, &active.interrupt, &mem, "rx");
        }
    }
}

fn notify(queue: &mut Queue, interrupt: &VirtioInterrupt, mem: &GuestMemoryMmap, which: &str) {
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(err) = interrupt.signal_used_queue() {
            tracing::warn!("virtio-net {which}: cannot interrupt the guest: {err}");
        }
    }
}

/// Copies a transmit chain (header and frame) into `buf`; `None` if the
/// chain is malformed (see the module documentation).
fn gather<M>(mem: &GuestMemoryMmap, chain: DescriptorChain<M>, buf: &mut Vec<u8>) -> Option<()>
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory,
{
    let buffers = ReadableBuffers::new(mem, chain, MAX_FRAME_LEN)
        .inspect_err(|err| tracing::debug!("virtio-net: transmit chain dropped: {err}"))
        .ok()?;
    buffers.read_to_vec(mem, buf).ok()?;
    (buf.len() >= VNET_HDR_LEN).then_some(())
}

/// Copies `frame` into a receive chain's buffers; `None` if the chain is
/// malformed or too small.
fn scatter<M>(mem: &GuestMemoryMmap, chain: DescriptorChain<M>, frame: &[u8]) -> Option<()>
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory,
{
    let buffers = WritableBuffers::up_to(mem, chain, frame.len())
        .inspect_err(|err| tracing::debug!("virtio-net: receive chain dropped: {err}"))
        .ok()?;
    if buffers.capacity() < frame.len() {
        return None;
    }
    (buffers.write_at(mem, 0, frame).ok()? == frame.len()).then_some(())
}

/// A random locally administered unicast MAC.
fn random_mac() -> MacAddr {
    let mut bytes = [0u8; 6];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != 6 {
        bytes = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    }
    bytes[0] = (bytes[0] & 0xfe) | 0x02;
    MacAddr(bytes)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn avail_features(&self) -> u64 {
        let mtu = if self.mtu.is_some() {
            feature(VIRTIO_NET_F_MTU)
        } else {
            0
        };
        feature(VIRTIO_F_VERSION_1) | feature(VIRTIO_NET_F_MAC) | feature(VIRTIO_NET_F_STATUS) | mtu
    }

    /// `struct virtio_net_config`: mac, status, max_virtqueue_pairs (one),
    /// mtu.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config[10..12].copy_from_slice(&self.mtu.unwrap_or(1500).to_le_bytes());
        read_config_space(&config, offset, data);
    }

    fn activate(&mut self, queues: QueueSet) -> Result<(), ActivateError> {
        queues.expect_queues(2)?;
        self.active = Some(queues);
        self.process_tx();
        self.process_rx();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.rx_pending = None;
    }

    fn queues_in_use(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|active| active.queues.as_slice())
    }

    /// A frame held for the guest (`rx_pending`) is not saved: it came
    /// from a tap the restored VM does not have.
    fn save_state(&self) -> Result<DeviceState, DeviceStateError> {
        Ok(DeviceState::Net {
            mac: self.mac.0,
            mtu: self.mtu,
        })
    }

    /// The MTU must be the saved one (the guest's interface took it at
    /// probe); the MAC stays this device's, the pod's (see
    /// [`crate::devices::virtio::persist`]).
    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        state.expect_kind(VIRTIO_ID_NET)?;
        if let DeviceState::Net { mac, mtu } = *state {
            expect_same("virtio-net MTU", mtu, self.mtu)?;
            if mac != self.mac.0 {
                tracing::info!(
                    "virtio-net: restored with MAC {}, the snapshot's was {}",
                    self.mac,
                    MacAddr(mac)
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::os::fd::OwnedFd;

    use super::*;
    use crate::devices::virtio::test_utils::{
        guest_memory, queue_set, readable, writable, Buf, DriverQueue, PairBackend, DATA,
    };
    use crate::vstate::memory::{Bytes, GuestAddress};

    /// A device on one end of a socket pair; the other end is the "host".
    fn device() -> (Net, OwnedFd) {
        let (ours, host) = PairBackend::pair();
        let net = Net::with_backend(Box::new(ours), Some(MacAddr([2, 0, 0, 0, 0, 9]))).unwrap();
        (net, host)
    }

    pub(in super::super) fn host_send(host: &OwnedFd, frame: &[u8]) {
        // SAFETY: the pointer and length describe the live `frame`.
        let n = unsafe { libc::send(host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize);
    }

    fn host_recv(host: &OwnedFd) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        // SAFETY: the pointer and length describe the live `buf`.
        let n = unsafe {
            libc::recv(
                host.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        (n >= 0).then(|| {
            buf.truncate(n.unsigned_abs());
            buf
        })
    }

    /// Rx queue at 0x0, tx queue after it; activates the device.
    fn activate(net: &mut Net, mem: &GuestMemoryMmap) -> (DriverQueue, DriverQueue) {
        let rx = DriverQueue::new(0);
        let tx = DriverQueue::new(DriverQueue::SPAN);
        let queues = vec![rx.queue(), tx.queue()];
        net.activate(queue_set(mem.clone(), queues)).unwrap();
        (rx, tx)
    }

    /// The used length of the `i`th chain `queue` completed, if it did.
    fn used_len(mem: &GuestMemoryMmap, queue: &mut DriverQueue, i: usize) -> Option<u32> {
        queue.used(mem).get(i).map(|&(_, len)| len)
    }

    #[test]
    fn test_config_space_has_mac_and_link_up() {
        let (net, _host) = device();
        let mut config = [0u8; 8];
        net.read_config(0, &mut config);
        assert_eq!(config, [2, 0, 0, 0, 0, 9, 1, 0]);
        let mut tail = [0xffu8; 8];
        net.read_config(6, &mut tail);
        // status, one queue pair, the default MTU (not offered), past the end.
        assert_eq!(tail, [1, 0, 1, 0, 0xdc, 0x05, 0, 0]);
        assert_eq!(net.avail_features() & feature(VIRTIO_NET_F_MTU), 0);
    }

    #[test]
    fn test_mtu_is_offered_when_set() {
        let (mut net, _host) = device();
        net.mtu = Some(1400);
        assert_ne!(net.avail_features() & feature(VIRTIO_NET_F_MTU), 0);
        let mut mtu = [0u8; 2];
        net.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1400);
    }

    #[test]
    fn test_transmit_reaches_the_back_end() {
        let (mut net, host) = device();
        let mem = guest_memory();
        let (_rx, mut tx) = activate(&mut net, &mem);
        mem.write_slice(&[0u8; VNET_HDR_LEN], GuestAddress(DATA))
            .unwrap();
        mem.write_slice(b"an ethernet frame", GuestAddress(DATA + 0x100))
            .unwrap();
        tx.post(&mem, &[readable(DATA, 12), readable(DATA + 0x100, 17)]);
        net.process_tx();
        let frame = host_recv(&host).expect("a frame");
        assert_eq!(&frame[12..], b"an ethernet frame");
        assert_eq!(used_len(&mem, &mut tx, 0), Some(0));
        assert_eq!(net.counters().tx_frames, 1);
    }

    #[test]
    fn test_malformed_transmit_chains_are_not_sent() {
        let (mut net, host) = device();
        let mem = guest_memory();
        let (_rx, mut tx) = activate(&mut net, &mem);
        let bad: [&[Buf]; 4] = [
            &[writable(DATA, 64)],
            &[readable(1 << 40, 64)],
            &[readable(DATA, 4)],
            &[readable(DATA, 0x1_0000), readable(DATA, 0x1_0000)],
        ];
        for bufs in bad {
            tx.post(&mem, bufs);
        }
        net.process_tx();
        assert!(host_recv(&host).is_none());
        assert_eq!(net.counters().tx_dropped, 4);
        assert_eq!(used_len(&mem, &mut tx, 3), Some(0));
    }

    #[test]
    fn test_receive_fills_guest_buffers() {
        let (mut net, host) = device();
        let mem = guest_memory();
        let (mut rx, _tx) = activate(&mut net, &mem);
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(b"hello guest");
        rx.post(&mem, &[writable(DATA, 8), writable(DATA + 0x100, 1500)]);
        host_send(&host, &frame);
        net.process_rx();
        assert_eq!(used_len(&mem, &mut rx, 0), Some(frame.len() as u32));
        let mut got = [0u8; 15];
        mem.read_slice(&mut got, GuestAddress(DATA + 0x100))
            .unwrap();
        // Header bytes 8-11 (num_buffers = 1 at 10) then the payload.
        assert_eq!(&got[2..4], &[1, 0]);
        assert_eq!(&got[4..], b"hello guest");
    }

    #[test]
    fn test_frames_wait_for_receive_buffers() {
        let (mut net, host) = device();
        let mem = guest_memory();
        let (mut rx, _tx) = activate(&mut net, &mem);
        let mut frame = vec![0u8; VNET_HDR_LEN];
        frame.extend_from_slice(b"early frame");
        host_send(&host, &frame);
        net.process_rx();
        assert!(net.rx_blocked());
        assert_eq!(net.counters().rx_deferred, 1);
        rx.post(&mem, &[writable(DATA, 2048)]);
        net.process_rx();
        assert!(!net.rx_blocked());
        assert_eq!(used_len(&mem, &mut rx, 0), Some(frame.len() as u32));
        assert_eq!(net.counters().rx_frames, 1);
    }

    #[test]
    fn test_bad_receive_chains_drop_the_frame() {
        let (mut net, host) = device();
        let mem = guest_memory();
        let (mut rx, _tx) = activate(&mut net, &mem);
        for bufs in [
            readable(DATA, 2048),
            writable(1 << 40, 2048),
            writable(DATA, 16),
        ] {
            rx.post(&mem, &[bufs]);
            host_send(&host, &[0u8; 100]);
        }
        net.process_rx();
        assert_eq!(net.counters().rx_dropped, 3);
        assert_eq!(used_len(&mem, &mut rx, 2), Some(0));
    }
}
