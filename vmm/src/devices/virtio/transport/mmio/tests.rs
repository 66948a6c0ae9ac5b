// SPDX-License-Identifier: Apache-2.0
//! The transport driven as a guest driver would, with a virtio-rng behind
//! it: identification, status steps, feature negotiation and queue set-up.

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::rng::Entropy;
use crate::devices::virtio::test_utils::guest_memory;
use crate::devices::virtio::VIRTIO_RING_F_EVENT_IDX;

const ACK: u32 = status::ACKNOWLEDGE;
const DRIVER: u32 = ACK | status::DRIVER;
const FEATURES_OK: u32 = DRIVER | status::FEATURES_OK;
const DRIVER_OK: u32 = FEATURES_OK | status::DRIVER_OK;

struct Setup {
    transport: MmioTransport,
    device: Arc<Mutex<Entropy>>,
    interrupt: Arc<VirtioInterrupt>,
}

fn setup() -> Setup {
    let device = Arc::new(Mutex::new(Entropy::new().unwrap()));
    let interrupt = Arc::new(VirtioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let transport = MmioTransport::new(device.clone(), guest_memory(), interrupt.clone());
    Setup {
        transport,
        device,
        interrupt,
    }
}

fn read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// Negotiates VERSION_1 and stops at FEATURES_OK.
fn negotiate(t: &mut MmioTransport) {
    write(t, reg::STATUS, ACK);
    write(t, reg::STATUS, DRIVER);
    write(t, reg::DRIVER_FEATURES_SEL, 1);
    write(t, reg::DRIVER_FEATURES, 1); // bit 32: VERSION_1
    write(t, reg::STATUS, FEATURES_OK);
    assert_eq!(read(t, reg::STATUS), FEATURES_OK);
}

/// Sets up queue 0 with `size` and ring addresses, ready.
fn setup_queue(t: &mut MmioTransport, size: u32, desc: u64, avail: u64, used: u64) {
    write(t, reg::QUEUE_SEL, 0);
    write(t, reg::QUEUE_NUM, size);
    write(t, reg::QUEUE_DESC_LOW, desc as u32);
    write(t, reg::QUEUE_DESC_HIGH, (desc >> 32) as u32);
    write(t, reg::QUEUE_AVAIL_LOW, avail as u32);
    write(t, reg::QUEUE_AVAIL_HIGH, (avail >> 32) as u32);
    write(t, reg::QUEUE_USED_LOW, used as u32);
    write(t, reg::QUEUE_USED_HIGH, (used >> 32) as u32);
    write(t, reg::QUEUE_READY, 1);
}

fn needs_reset(t: &mut MmioTransport) -> bool {
    read(t, reg::STATUS) & status::NEEDS_RESET != 0
}

#[test]
fn test_identification_registers() {
    let Setup { mut transport, .. } = setup();
    assert_eq!(read(&mut transport, reg::MAGIC), 0x7472_6976);
    assert_eq!(read(&mut transport, reg::VERSION), 2);
    assert_eq!(read(&mut transport, reg::DEVICE_ID), 4);
    assert_eq!(read(&mut transport, reg::VENDOR_ID), VENDOR_ID);
    assert_eq!(read(&mut transport, reg::SHM_LEN_LOW), u32::MAX);
    write(&mut transport, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(read(&mut transport, reg::DEVICE_FEATURES), 1, "VERSION_1");
    write(&mut transport, reg::DEVICE_FEATURES_SEL, 2);
    assert_eq!(read(&mut transport, reg::DEVICE_FEATURES), 0);
    write(&mut transport, reg::QUEUE_SEL, 0);
    assert_eq!(read(&mut transport, reg::QUEUE_NUM_MAX), 256);
    write(&mut transport, reg::QUEUE_SEL, 1);
    assert_eq!(read(&mut transport, reg::QUEUE_NUM_MAX), 0, "no queue 1");
}

#[test]
fn test_odd_sized_and_misaligned_accesses() {
    let Setup { mut transport, .. } = setup();
    let mut byte = [0u8; 1];
    transport.read(reg::MAGIC, &mut byte);
    assert_eq!(byte, [0xff]);
    transport.write(reg::STATUS, &[1]);
    assert_eq!(read(&mut transport, reg::STATUS), 0, "1-byte write ignored");
    transport.write(reg::STATUS + 1, &1u32.to_le_bytes());
    assert_eq!(
        read(&mut transport, reg::STATUS),
        0,
        "misaligned write ignored"
    );
    // Beyond the config space: zeros.
    let mut config = [0xffu8; 8];
    transport.read(reg::CONFIG + 0x200, &mut config);
    assert_eq!(config, [0; 8]);
}

#[test]
fn test_driver_sequence_activates_the_device() {
    let Setup {
        mut transport,
        device,
        interrupt,
    } = setup();
    negotiate(&mut transport);
    setup_queue(&mut transport, 256, 0x0, 0x1000, 0x2000);
    assert_eq!(read(&mut transport, reg::QUEUE_READY), 1);
    write(&mut transport, reg::STATUS, DRIVER_OK);
    assert_eq!(read(&mut transport, reg::STATUS), DRIVER_OK);
    // Activated: a notification reaches the device's queue event.
    write(&mut transport, reg::QUEUE_NOTIFY, 0);
    let event = device.lock().unwrap().queue_events()[0].read().unwrap();
    assert_eq!(event, 1);
    // Out-of-range notifications go nowhere and do not panic.
    write(&mut transport, reg::QUEUE_NOTIFY, 7);
    write(&mut transport, reg::QUEUE_NOTIFY, u32::MAX);
    // Interrupt status and acknowledgement.
    interrupt.signal_used_queue().unwrap();
    assert_eq!(read(&mut transport, reg::INTERRUPT_STATUS), 1);
    write(&mut transport, reg::INTERRUPT_ACK, 1);
    assert_eq!(read(&mut transport, reg::INTERRUPT_STATUS), 0);
}

#[test]
fn test_status_steps_out_of_order_are_ignored() {
    let Setup { mut transport, .. } = setup();
    write(&mut transport, reg::STATUS, ACK | status::DRIVER_OK);
    assert_eq!(read(&mut transport, reg::STATUS), 0);
    write(&mut transport, reg::STATUS, ACK);
    write(&mut transport, reg::STATUS, ACK | status::FEATURES_OK);
    assert_eq!(read(&mut transport, reg::STATUS), ACK, "skipped DRIVER");
    write(&mut transport, reg::STATUS, DRIVER);
    write(&mut transport, reg::STATUS, status::DRIVER);
    assert_eq!(read(&mut transport, reg::STATUS), DRIVER, "cleared ACK");
    write(&mut transport, reg::STATUS, DRIVER | status::FAILED);
    assert_eq!(read(&mut transport, reg::STATUS), DRIVER | status::FAILED);
}

#[test]
fn test_feature_negotiation_is_checked() {
    let Setup { mut transport, .. } = setup();
    // Features before DRIVER are ignored.
    write(&mut transport, reg::DRIVER_FEATURES_SEL, 1);
    write(&mut transport, reg::DRIVER_FEATURES, 1);
    write(&mut transport, reg::STATUS, ACK);
    write(&mut transport, reg::STATUS, DRIVER);
    write(&mut transport, reg::STATUS, FEATURES_OK);
    assert_eq!(read(&mut transport, reg::STATUS), DRIVER, "no VERSION_1");
    // A feature the device does not offer.
    write(&mut transport, reg::DRIVER_FEATURES_SEL, 0);
    write(
        &mut transport,
        reg::DRIVER_FEATURES,
        1 << VIRTIO_RING_F_EVENT_IDX,
    );
    write(&mut transport, reg::DRIVER_FEATURES_SEL, 1);
    write(&mut transport, reg::DRIVER_FEATURES, 1);
    write(&mut transport, reg::STATUS, FEATURES_OK);
    assert_eq!(
        read(&mut transport, reg::STATUS),
        DRIVER,
        "EVENT_IDX not offered"
    );
    write(&mut transport, reg::DRIVER_FEATURES_SEL, 0);
    write(&mut transport, reg::DRIVER_FEATURES, 0);
    write(&mut transport, reg::STATUS, FEATURES_OK);
    assert_eq!(read(&mut transport, reg::STATUS), FEATURES_OK);
    // After FEATURES_OK the features are fixed.
    write(&mut transport, reg::DRIVER_FEATURES_SEL, 1);
    write(&mut transport, reg::DRIVER_FEATURES, 0);
    write(&mut transport, reg::DRIVER_FEATURES_SEL, 5);
    write(&mut transport, reg::DRIVER_FEATURES, 1);
    assert_eq!(transport.acked_features, feature(VIRTIO_F_VERSION_1));
}

#[test]
fn test_queue_writes_outside_set_up_are_ignored() {
    let Setup { mut transport, .. } = setup();
    // Before FEATURES_OK.
    write(&mut transport, reg::QUEUE_SEL, 0);
    write(&mut transport, reg::QUEUE_READY, 1);
    assert_eq!(read(&mut transport, reg::QUEUE_READY), 0);
    negotiate(&mut transport);
    setup_queue(&mut transport, 128, 0x0, 0x1000, 0x2000);
    // A ready queue keeps its set-up.
    write(&mut transport, reg::QUEUE_NUM, 3);
    assert_eq!(transport.queues[0].queue.size(), 128);
    assert!(!transport.queues[0].invalid);
    // A missing queue.
    write(&mut transport, reg::QUEUE_SEL, 9);
    write(&mut transport, reg::QUEUE_READY, 1);
    write(&mut transport, reg::STATUS, DRIVER_OK);
    assert!(!needs_reset(&mut transport));
    // After DRIVER_OK.
    write(&mut transport, reg::QUEUE_SEL, 0);
    write(&mut transport, reg::QUEUE_READY, 0);
    assert_eq!(read(&mut transport, reg::QUEUE_READY), 1);
}

#[test]
fn test_bad_queues_fail_activation_with_needs_reset() {
    let cases: [(&str, u32, u64, u64, u64, bool); 6] = [
        ("size 0", 0, 0x0, 0x1000, 0x2000, true),
        ("size not a power of two", 3, 0x0, 0x1000, 0x2000, true),
        ("size above the maximum", 512, 0x0, 0x1000, 0x2000, true),
        ("rings outside memory", 256, 1 << 40, 0x1000, 0x2000, true),
        (
            "misaligned descriptor table",
            256,
            0x8,
            0x1000,
            0x2000,
            true,
        ),
        ("not ready", 256, 0x0, 0x1000, 0x2000, false),
    ];
    for (what, size, desc, avail, used, ready) in cases {
        let Setup {
            mut transport,
            interrupt,
            ..
        } = setup();
        negotiate(&mut transport);
        setup_queue(&mut transport, size, desc, avail, used);
        if !ready {
            write(&mut transport, reg::QUEUE_READY, 0);
        }
        write(&mut transport, reg::STATUS, DRIVER_OK);
        assert!(needs_reset(&mut transport), "{what}");
        assert_eq!(interrupt.status() & 2, 2, "{what}: no config interrupt");
    }
}

#[test]
fn test_status_zero_resets_everything() {
    let Setup {
        mut transport,
        interrupt,
        ..
    } = setup();
    negotiate(&mut transport);
    setup_queue(&mut transport, 256, 0x0, 0x1000, 0x2000);
    write(&mut transport, reg::STATUS, DRIVER_OK);
    interrupt.signal_used_queue().unwrap();
    write(&mut transport, reg::STATUS, 0);
    assert_eq!(read(&mut transport, reg::STATUS), 0);
    assert_eq!(read(&mut transport, reg::QUEUE_READY), 0);
    assert_eq!(read(&mut transport, reg::INTERRUPT_STATUS), 0);
    assert_eq!(transport.acked_features, 0);
    // The device can be set up again from scratch.
    negotiate(&mut transport);
    setup_queue(&mut transport, 256, 0x0, 0x1000, 0x2000);
    write(&mut transport, reg::STATUS, DRIVER_OK);
    assert_eq!(read(&mut transport, reg::STATUS), DRIVER_OK);
}
