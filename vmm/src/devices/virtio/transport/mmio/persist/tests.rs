// SPDX-License-Identifier: Apache-2.0
//! Devices driven to DRIVER_OK through their transport's registers, served
//! on driver queues, saved (through JSON, as a snapshot file holds them),
//! restored onto fresh devices and transports that keep serving; and
//! states that must be refused.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::super::reg;
use super::*;
use crate::devices::bus::BusDevice;
use crate::devices::virtio::block::Block;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::persist::DeviceState;
use crate::devices::virtio::rng::Entropy;
use crate::devices::virtio::test_utils::{
    guest_memory, readable, writable, DriverQueue, PairBackend, DATA, MEM_SIZE, QUEUE_SIZE,
};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX;
use crate::vstate::memory::Bytes;

const ACK: u32 = status::ACKNOWLEDGE;
const DRIVER: u32 = ACK | status::DRIVER;
const FEATURES_OK: u32 = DRIVER | status::FEATURES_OK;
const DRIVER_OK: u32 = FEATURES_OK | status::DRIVER_OK;

fn read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// An interrupt and a handle on its irqfd, to see it raised.
fn interrupt() -> (Arc<VirtioInterrupt>, EventFd) {
    let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
    let seen = irqfd.try_clone().unwrap();
    (Arc::new(VirtioInterrupt::new(irqfd)), seen)
}

/// A transport for `device` on `mem`.
fn transport(device: Arc<Mutex<dyn VirtioDevice>>, mem: &GuestMemoryMmap) -> MmioTransport {
    MmioTransport::new(device, mem.clone(), interrupt().0)
}

/// Drives `t` to DRIVER_OK as a driver does: `features` (and VERSION_1)
/// acknowledged, one ready queue per entry of `queues`.
fn activate(t: &mut MmioTransport, queues: &[DriverQueue], features: u64) {
    write(t, reg::STATUS, ACK);
    write(t, reg::STATUS, DRIVER);
    let features = features | feature(VIRTIO_F_VERSION_1);
    for select in 0..2u32 {
        write(t, reg::DRIVER_FEATURES_SEL, select);
        write(t, reg::DRIVER_FEATURES, (features >> (32 * select)) as u32);
    }
    write(t, reg::STATUS, FEATURES_OK);
    for (index, queue) in queues.iter().enumerate() {
        write(t, reg::QUEUE_SEL, index as u32);
        write(t, reg::QUEUE_NUM, u32::from(QUEUE_SIZE));
        for (low, addr) in [
            (reg::QUEUE_DESC_LOW, queue.desc_table()),
            (reg::QUEUE_AVAIL_LOW, queue.avail_ring()),
            (reg::QUEUE_USED_LOW, queue.used_ring()),
        ] {
            write(t, low, addr.0 as u32);
            write(t, low + 4, (addr.0 >> 32) as u32);
        }
        write(t, reg::QUEUE_READY, 1);
    }
    write(t, reg::STATUS, DRIVER_OK);
    assert_eq!(read(t, reg::STATUS), DRIVER_OK, "device activated");
}

/// `t`'s state as a snapshot file carries it: through JSON.
fn saved(t: &MmioTransport) -> VirtioDeviceState {
    let json = serde_json::to_string(&t.save_state().unwrap()).unwrap();
    serde_json::from_str(&json).unwrap()
}

/// Restores `state` onto `device`; the transport and its irqfd.
fn restore(
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: &GuestMemoryMmap,
    state: &VirtioDeviceState,
) -> Result<(MmioTransport, EventFd), DeviceStateError> {
    let (interrupt, irq) = interrupt();
    MmioTransport::restore(device, mem.clone(), interrupt, state).map(|t| (t, irq))
}

/// A path for a test's file or socket, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("vmpod-persist-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An rng device served one request on an active transport.
struct ServedRng {
    mem: GuestMemoryMmap,
    transport: MmioTransport,
    driver: DriverQueue,
}

fn served_rng() -> ServedRng {
    let mem = guest_memory();
    let rng = Arc::new(Mutex::new(Entropy::new().unwrap()));
    let (interrupt, _) = interrupt();
    let mut transport = MmioTransport::new(rng.clone(), mem.clone(), interrupt);
    let mut driver = DriverQueue::new(0);
    activate(&mut transport, &[driver.clone()], 0);
    let head = driver.post(&mem, &[writable(DATA, 64)]);
    rng.lock().unwrap().process_queue();
    assert_eq!(driver.used(&mem), vec![(u32::from(head), 64)]);
    ServedRng {
        mem,
        transport,
        driver,
    }
}

#[test]
fn test_rng_resumes_at_its_ring_positions_and_replays_the_interrupt() {
    let ServedRng {
        mem,
        transport,
        mut driver,
    } = served_rng();
    let state = saved(&transport);
    assert_eq!(state.transport.queues[0].next_avail, 1);
    assert_eq!(state.transport.queues[0].next_used, 1);
    assert_eq!(state.transport.interrupt_status, VIRTIO_MMIO_INT_VRING);

    let fresh = Arc::new(Mutex::new(Entropy::new().unwrap()));
    let (mut restored, irq) = restore(fresh.clone(), &mem, &state).unwrap();
    assert_eq!(read(&mut restored, reg::STATUS), DRIVER_OK);
    // The driver never acknowledged the first request's interrupt.
    assert_eq!(
        read(&mut restored, reg::INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    assert_eq!(irq.read().unwrap(), 1, "interrupt raised again");
    assert_eq!(
        fresh.lock().unwrap().queue_events()[0].read().unwrap(),
        1,
        "queue notified once"
    );
    restored.raise_pending_interrupt().unwrap();
    assert_eq!(
        irq.read().unwrap(),
        1,
        "raised again once the vCPUs are restored"
    );
    write(&mut restored, reg::INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    restored.raise_pending_interrupt().unwrap();
    assert!(
        irq.read().is_err(),
        "nothing left to acknowledge, no interrupt"
    );
    let buffer = DATA + 0x1000;
    let head = driver.post(&mem, &[writable(buffer, 64)]);
    fresh.lock().unwrap().process_queue();
    // Only the new request, completed in the next used slot.
    assert_eq!(driver.used(&mem), vec![(u32::from(head), 64)]);
    let mut bytes = [0u8; 64];
    mem.read_slice(&mut bytes, GuestAddress(buffer)).unwrap();
    assert!(bytes.iter().any(|&b| b != 0), "random bytes written");
}

#[test]
fn test_a_device_the_driver_never_set_up_restores_inactive() {
    let mem = guest_memory();
    let rng = Arc::new(Mutex::new(Entropy::new().unwrap()));
    let state = saved(&transport(rng, &mem));
    assert_eq!(state.transport.device_status, 0);
    let fresh = Arc::new(Mutex::new(Entropy::new().unwrap()));
    let (mut restored, irq) = restore(fresh.clone(), &mem, &state).unwrap();
    assert!(fresh.lock().unwrap().queues_in_use().is_none());
    assert!(irq.read().is_err(), "no interrupt");
    // The driver can still set it up.
    activate(&mut restored, &[DriverQueue::new(0)], 0);
    assert!(fresh.lock().unwrap().queues_in_use().is_some());
}

#[test]
fn test_a_device_that_needed_a_reset_is_not_activated() {
    let ServedRng { mem, transport, .. } = served_rng();
    let mut state = saved(&transport);
    state.transport.device_status |= status::NEEDS_RESET;
    let fresh = Arc::new(Mutex::new(Entropy::new().unwrap()));
    let (mut restored, _) = restore(fresh.clone(), &mem, &state).unwrap();
    assert!(fresh.lock().unwrap().queues_in_use().is_none());
    assert_eq!(
        read(&mut restored, reg::STATUS),
        DRIVER_OK | status::NEEDS_RESET
    );
}

/// The chain of a one-sector read of `sector` into `DATA + 0x1000`.
fn sector_read(mem: &GuestMemoryMmap, sector: u64) -> [crate::devices::virtio::test_utils::Buf; 3] {
    let mut header = [0u8; 16];
    header[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&header, GuestAddress(DATA)).unwrap();
    [
        readable(DATA, 16),
        writable(DATA + 0x1000, 512),
        writable(DATA + 0x2000, 1),
    ]
}

#[test]
fn test_block_resumes_on_the_same_disk_and_refuses_another() {
    let image = Scratch::new("disk.img");
    let contents: Vec<u8> = (0..4u8).flat_map(|s| [s + 1; 512]).collect();
    std::fs::write(&image.0, &contents).unwrap();
    let mem = guest_memory();
    let disk = Arc::new(Mutex::new(Block::new(&image.0, false).unwrap()));
    let mut t = transport(disk.clone(), &mem);
    let mut driver = DriverQueue::new(0);
    activate(&mut t, &[driver.clone()], feature(VIRTIO_RING_F_EVENT_IDX));
    driver.post(&mem, &sector_read(&mem, 0));
    disk.lock().unwrap().process_queue();
    assert_eq!(driver.used(&mem).len(), 1);
    let state = saved(&t);
    assert_eq!(
        state.device,
        DeviceState::Block {
            capacity_sectors: 4,
            readonly: false
        }
    );

    let fresh = Arc::new(Mutex::new(Block::new(&image.0, false).unwrap()));
    restore(fresh.clone(), &mem, &state).unwrap();
    let head = driver.post(&mem, &sector_read(&mem, 2));
    fresh.lock().unwrap().process_queue();
    assert_eq!(driver.used(&mem), vec![(u32::from(head), 513)]);
    let mut data = [0u8; 512];
    mem.read_slice(&mut data, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(data, [3u8; 512], "sector 2 read after the restore");
    assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA + 0x2000)).unwrap(), 0);

    let bigger = Scratch::new("bigger.img");
    std::fs::write(&bigger.0, vec![0u8; 8 * 512]).unwrap();
    let other = Arc::new(Mutex::new(Block::new(&bigger.0, false).unwrap()));
    let err = restore(other, &mem, &state).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The snapshot's disk size in sectors is 4, the new device's is 8"
    );
    let readonly = Arc::new(Mutex::new(Block::new(&image.0, true).unwrap()));
    let err = restore(readonly, &mem, &state).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The snapshot's disk read-only flag is false, the new device's is true"
    );
}

#[test]
fn test_net_resumes_on_its_new_tap() {
    let mem = guest_memory();
    let (backend, old_host) = PairBackend::pair();
    let mac = crate::config::MacAddr([2, 0, 0, 0, 0, 1]);
    let net = Arc::new(Mutex::new(
        Net::with_backend(Box::new(backend), Some(mac)).unwrap(),
    ));
    let mut t = transport(net.clone(), &mem);
    let mut rx = DriverQueue::new(0);
    let mut tx = DriverQueue::new(DriverQueue::SPAN);
    activate(&mut t, &[rx.clone(), tx.clone()], 0);
    // The guest's receive buffer, posted before the snapshot.
    let rx_head = rx.post(&mem, &[writable(DATA, 2048)]);
    net.lock().unwrap().process_rx();
    let state = saved(&t);

    let (backend, host) = PairBackend::pair();
    let pod_mac = crate::config::MacAddr([2, 0, 0, 0, 0, 2]);
    let fresh = Arc::new(Mutex::new(
        Net::with_backend(Box::new(backend), Some(pod_mac)).unwrap(),
    ));
    let (mut restored, _) = restore(fresh.clone(), &mem, &state).unwrap();
    let mut mac_bytes = [0u8; 4];
    restored.read(reg::CONFIG, &mut mac_bytes);
    assert_eq!(mac_bytes, [2, 0, 0, 0], "the new device's MAC is served");

    let frame = [0x5au8; 60];
    // SAFETY: the pointer and length describe the live `frame`.
    let n = unsafe { libc::send(host.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
    assert_eq!(n, 60);
    fresh.lock().unwrap().process_rx();
    assert_eq!(
        rx.used(&mem),
        vec![(u32::from(rx_head), 60)],
        "pre-snapshot buffer filled"
    );

    mem.write_slice(&[0x33u8; 72], GuestAddress(DATA + 0x1000))
        .unwrap();
    tx.post(&mem, &[readable(DATA + 0x1000, 72)]);
    fresh.lock().unwrap().process_tx();
    let mut got = [0u8; 128];
    // SAFETY: the pointer and length describe the live `got`.
    let n = unsafe {
        libc::recv(
            host.as_raw_fd(),
            got.as_mut_ptr().cast(),
            got.len(),
            libc::MSG_DONTWAIT,
        )
    };
    assert_eq!(n, 72, "the frame left through the new tap");
    // SAFETY: as above.
    let n = unsafe {
        libc::recv(
            old_host.as_raw_fd(),
            got.as_mut_ptr().cast(),
            got.len(),
            libc::MSG_DONTWAIT,
        )
    };
    assert_eq!(n, -1, "nothing through the old one");
}

#[test]
fn test_net_refuses_another_mtu() {
    let mem = guest_memory();
    let (backend, _host) = PairBackend::pair();
    let net = Arc::new(Mutex::new(
        Net::with_backend(Box::new(backend), None).unwrap(),
    ));
    let mut state = saved(&transport(net, &mem));
    state.device = DeviceState::Net {
        mac: [2, 0, 0, 0, 0, 1],
        mtu: Some(1400),
    };
    let (backend, _host) = PairBackend::pair();
    let fresh = Arc::new(Mutex::new(
        Net::with_backend(Box::new(backend), None).unwrap(),
    ));
    let err = restore(fresh, &mem, &state).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The snapshot's virtio-net MTU is Some(1400), the new device's is None"
    );
}

#[test]
fn test_vsock_sends_a_transport_reset_first_after_a_restore() {
    let mem = guest_memory();
    let old_socket = Scratch::new("old.vsock");
    let vsock = Arc::new(Mutex::new(Vsock::new(3, &old_socket.0).unwrap()));
    let mut t = transport(vsock.clone(), &mem);
    let span = DriverQueue::SPAN;
    let queues = [
        DriverQueue::new(0),
        DriverQueue::new(span),
        DriverQueue::new(2 * span),
    ];
    // As Linux does at probe: event buffers posted before DRIVER_OK.
    let mut events = queues[2].clone();
    let event_buffer = DATA + 0x8000;
    mem.write_slice(&[0xffu8; 8], GuestAddress(event_buffer))
        .unwrap();
    let first = events.post(&mem, &[writable(event_buffer, 4)]);
    events.post(&mem, &[writable(event_buffer + 4, 4)]);
    activate(&mut t, &queues, 0);
    assert!(
        events.used(&mem).is_empty(),
        "no event on a first activation"
    );
    let state = saved(&t);
    assert_eq!(state.device, DeviceState::Vsock { cid: 3 });

    let new_socket = Scratch::new("new.vsock");
    let fresh = Arc::new(Mutex::new(Vsock::new(3, &new_socket.0).unwrap()));
    let (_restored, irq) = restore(fresh.clone(), &mem, &state).unwrap();
    assert_eq!(events.used(&mem), vec![(u32::from(first), 4)], "one event");
    let id: u32 = mem.read_obj(GuestAddress(event_buffer)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert_eq!(irq.read().unwrap(), 1);
    assert!(
        std::os::unix::net::UnixStream::connect(&new_socket.0).is_ok(),
        "the new host socket is served"
    );

    let other = Scratch::new("other.vsock");
    let other_cid = Arc::new(Mutex::new(Vsock::new(4, &other.0).unwrap()));
    let err = restore(other_cid, &mem, &state).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The snapshot's guest CID is 3, the new device's is 4"
    );
}

#[test]
fn test_vsock_waits_for_an_event_buffer_to_send_the_reset() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    let mem = guest_memory();
    let old_socket = Scratch::new("old-nobuf.vsock");
    let vsock = Arc::new(Mutex::new(Vsock::new(3, &old_socket.0).unwrap()));
    let mut t = transport(vsock, &mem);
    let span = DriverQueue::SPAN;
    let mut events = DriverQueue::new(2 * span);
    let queues = [DriverQueue::new(0), DriverQueue::new(span), events.clone()];
    activate(&mut t, &queues, 0);
    let state = saved(&t);
    let new_socket = Scratch::new("new-nobuf.vsock");
    let fresh = Arc::new(Mutex::new(Vsock::new(3, &new_socket.0).unwrap()));
    restore(fresh.clone(), &mem, &state).unwrap();
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(fresh.clone());
    // The restore's notification of each queue: no event buffer yet.
    manager.run_with_timeout(100).unwrap();
    assert!(events.used(&mem).is_empty());
    // The guest posts one and notifies the event queue.
    let head = events.post(&mem, &[writable(DATA, 4)]);
    fresh.lock().unwrap().queue_events()[2].write(1).unwrap();
    manager.run_with_timeout(100).unwrap();
    assert_eq!(events.used(&mem), vec![(u32::from(head), 4)]);
    // Sent once only.
    events.post(&mem, &[writable(DATA + 4, 4)]);
    fresh.lock().unwrap().queue_events()[2].write(1).unwrap();
    manager.run_with_timeout(100).unwrap();
    assert!(events.used(&mem).is_empty());
}

#[test]
fn test_vsock_holds_host_traffic_until_the_guest_handled_the_reset() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::io::Write;
    let mem = guest_memory();
    let old_socket = Scratch::new("old-hold.vsock");
    let vsock = Arc::new(Mutex::new(Vsock::new(3, &old_socket.0).unwrap()));
    let mut t = transport(vsock, &mem);
    let span = DriverQueue::SPAN;
    let queues = [
        DriverQueue::new(0),
        DriverQueue::new(span),
        DriverQueue::new(2 * span),
    ];
    let (mut rx, mut events) = (queues[0].clone(), queues[2].clone());
    events.post(&mem, &[writable(DATA + 0x8000, 4)]);
    rx.post(&mem, &[writable(DATA, 0x1000)]);
    activate(&mut t, &queues, 0);
    let state = saved(&t);
    let new_socket = Scratch::new("new-hold.vsock");
    let fresh = Arc::new(Mutex::new(Vsock::new(3, &new_socket.0).unwrap()));
    restore(fresh.clone(), &mem, &state).unwrap();
    assert_eq!(events.used(&mem).len(), 1, "the reset event");
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(fresh.clone());
    let mut host = std::os::unix::net::UnixStream::connect(&new_socket.0).unwrap();
    host.write_all(b"CONNECT 1234\n").unwrap();
    for _ in 0..5 {
        manager.run_with_timeout(50).unwrap();
    }
    assert!(
        rx.used(&mem).is_empty(),
        "a connection request reached the guest before it handled the reset"
    );
    // Linux refills the event queue once it has reset its sockets.
    events.post(&mem, &[writable(DATA + 0x8000, 4)]);
    fresh.lock().unwrap().queue_events()[2].write(1).unwrap();
    manager.run_with_timeout(100).unwrap();
    assert_eq!(rx.used(&mem).len(), 1, "the connection request");
    assert!(events.used(&mem).is_empty(), "no second reset");
}

/// A FUSE request of `opcode` with `body`, posted on `queue`.
fn post_fuse(mem: &GuestMemoryMmap, queue: &mut DriverQueue, opcode: u32, body: &[u8]) {
    let len = 40 + body.len() as u32;
    let mut msg = Vec::new();
    msg.extend_from_slice(&len.to_le_bytes());
    msg.extend_from_slice(&opcode.to_le_bytes());
    msg.extend_from_slice(&1u64.to_le_bytes());
    msg.extend_from_slice(&1u64.to_le_bytes());
    msg.extend_from_slice(&[0u8; 16]);
    msg.extend_from_slice(body);
    mem.write_slice(&msg, GuestAddress(DATA)).unwrap();
    queue.post(mem, &[readable(DATA, len), writable(DATA + 0x1000, 0x1000)]);
}

#[test]
fn test_fs_is_saved_before_the_mount_and_refused_after() {
    let share = Scratch::new("share");
    std::fs::create_dir_all(&share.0).unwrap();
    let mem = guest_memory();
    let fs = Arc::new(Mutex::new(Fs::new("pod", &share.0, false).unwrap()));
    let mut t = transport(fs.clone(), &mem);
    let mut hiprio = DriverQueue::new(0);
    activate(
        &mut t,
        &[hiprio.clone(), DriverQueue::new(DriverQueue::SPAN)],
        0,
    );
    let state = saved(&t);
    assert_eq!(state.device, DeviceState::Fs { tag: "pod".into() });
    let fresh = Arc::new(Mutex::new(Fs::new("pod", &share.0, true).unwrap()));
    restore(fresh, &mem, &state).unwrap();
    let other_tag = Arc::new(Mutex::new(Fs::new("other", &share.0, false).unwrap()));
    let err = restore(other_tag, &mem, &state).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The snapshot's virtio-fs tag is \"pod\", the new device's is \"other\""
    );

    let init: Vec<u8> = [7u32, 38, 0, 0]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    post_fuse(&mem, &mut hiprio, 26, &init);
    fs.lock().unwrap().process_queue(0);
    assert_eq!(hiprio.used(&mem).len(), 1, "FUSE_INIT answered");
    let err = t.save_state().unwrap_err();
    assert_eq!(
        err.to_string(),
        "The virtio-fs share 'pod' is mounted in the guest: a snapshot must be taken before the guest mounts it"
    );
}

/// A change a corrupt snapshot file could make to a state.
type Corruption = Box<dyn FnOnce(&mut VirtioDeviceState)>;

/// Restores `state` mutated by `corrupt` onto a fresh rng; the error.
fn refused(state: &VirtioDeviceState, corrupt: impl FnOnce(&mut VirtioDeviceState)) -> String {
    let mut state = state.clone();
    corrupt(&mut state);
    let fresh = Arc::new(Mutex::new(Entropy::new().unwrap()));
    let err = restore(fresh.clone(), &guest_memory(), &state).unwrap_err();
    assert!(
        fresh.lock().unwrap().queues_in_use().is_none(),
        "not activated"
    );
    vmpod_sys::error::chain(&err).to_string()
}

#[test]
fn test_corrupt_states_are_refused_naming_the_problem() {
    let ServedRng { transport, .. } = served_rng();
    let state = saved(&transport);
    let cases: Vec<(Corruption, &str)> = vec![
        (
            Box::new(|s| s.transport.queues[0].desc_table = MEM_SIZE as u64),
            "Cannot activate the restored virtio-rng device: Queue 0 is set up outside guest memory or with an invalid size",
        ),
        (
            Box::new(|s| s.transport.queues[0].used_ring = u64::MAX - 3),
            "Cannot activate the restored virtio-rng device: Queue 0 is set up outside guest memory or with an invalid size",
        ),
        (
            Box::new(|s| s.transport.queues[0].avail_ring = 0x1001),
            "Queue 0 of the snapshot has an invalid size or misaligned ring",
        ),
        (
            Box::new(|s| s.transport.queues[0].size = 3),
            "Queue 0 of the snapshot has an invalid size or misaligned ring",
        ),
        (
            Box::new(|s| s.transport.queues[0].size = 512),
            "Queue 0 of the snapshot has an invalid size or misaligned ring",
        ),
        (
            Box::new(|s| s.transport.queues[0].ready = false),
            "Cannot activate the restored virtio-rng device: Queue 0 is not ready",
        ),
        (
            Box::new(|s| s.transport.queues.push(s.transport.queues[0])),
            "The snapshot has 2 queues for a virtio-rng device, which has 1",
        ),
        (
            Box::new(|s| s.transport.device_status = 0x7),
            "The snapshot's device status 0x7 is not a valid virtio status",
        ),
        (
            Box::new(|s| s.transport.device_status = DRIVER_OK | 0x10),
            "The snapshot's device status 0x1f is not a valid virtio status",
        ),
        (
            Box::new(|s| s.transport.acked_features |= 1 << 40),
            "The snapshot's acknowledged features 0x10100000000 are not all offered by the device (0x100000000)",
        ),
        (
            Box::new(|s| s.transport.interrupt_status = 0x4),
            "The snapshot's interrupt status 0x4 has unknown bits",
        ),
        (
            Box::new(|s| s.device_type = 2),
            "The snapshot holds the state of a virtio-blk device, not of a virtio-rng device",
        ),
        (
            Box::new(|s| s.device = DeviceState::Vsock { cid: 3 }),
            "The snapshot holds the state of a virtio-vsock device, not of a virtio-rng device",
        ),
    ];
    for (corrupt, message) in cases {
        let got = refused(&state, corrupt);
        assert!(got.starts_with(message), "{got}\n  expected: {message}");
    }
}
