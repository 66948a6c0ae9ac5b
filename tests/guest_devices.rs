// SPDX-License-Identifier: Apache-2.0
//! The guest uses the virtio devices for real, through its own drivers:
//! its root file system on virtio-blk (an ext4 image made with
//! `mkfs.ext4 -d`) or on virtio-fs, a shared directory, eth0 on a tap in
//! a network namespace the test makes, vsock both ways through the hybrid
//! Unix socket, and /dev/hwrng. Two boots. The test init prints what it did; the
//! test checks the console and, after the VM is gone, what the guest wrote
//! into the image.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use vmpod_integration_tests::guest_checks::{
    init_line, vsock_host_side, TempDir, GUEST_VSOCK_PORT, HOST_VSOCK_PORT,
};
use vmpod_integration_tests::{
    guest_or_skip, make_ext4_image, read_ext4_file, run_with_timeout, vmpod_vm_binary,
    write_root_tree, GuestArtifacts, Outcome,
};

/// A boot with devices, on a host that emulates guest CPL0.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// What the test init writes (rootfs/test-init/src/devices.rs).
const GUEST_TEXT: &str = "written by the vmpod guest\n";
/// The guest's vsock CID.
const GUEST_CID: &str = "3";
/// Host end of the tap, the guest's address, the UDP echo port.
const HOST_IP: &str = "10.0.2.1";
const GUEST_NET: &str = "10.0.2.15/24";
const UDP_PORT: u16 = 5000;

/// A network namespace holding a configured tap, deleted on drop.
struct NetNs {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// A namespace with tap `tap` at [`HOST_IP`]/24, up.
    fn with_tap(tag: &str, tap: &str) -> Self {
        let name = format!("vmpod-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ip(&[
            "-n", &ns.name, "tuntap", "add", "dev", tap, "mode", "tap", "vnet_hdr",
        ]);
        ip(&[
            "-n",
            &ns.name,
            "addr",
            "add",
            &format!("{HOST_IP}/24"),
            "dev",
            tap,
        ]);
        ip(&["-n", &ns.name, "link", "set", tap, "up"]);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// A UDP echo server in the namespace that answers once, then exits; it
    /// waits as long as the VM may run (a loaded host's boot took over
    /// four minutes), so that a slow guest does not find it gone.
    fn udp_echo(&self) -> std::process::Child {
        let wait = BOOT_TIMEOUT.as_secs() + 30;
        let script = format!(
            "import socket\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('{HOST_IP}', {UDP_PORT}))\n\
             s.settimeout({wait})\n\
             data, peer = s.recvfrom(512)\n\
             s.sendto(b'pong from the host: ' + data, peer)\n"
        );
        Command::new("ip")
            .args(["netns", "exec", &self.name, "python3", "-c", &script])
            .spawn()
            .expect("start the UDP echo server")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn vmpod_vm(guest: &GuestArtifacts, netns: Option<&NetNs>, args: &[String]) -> Outcome {
    let bin = vmpod_vm_binary().unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns.name]).arg(bin);
            cmd
        }
        None => Command::new(bin),
    };
    cmd.arg("--kernel")
        .arg(&guest.vmlinux)
        .args(["--memory", "256"])
        .args(args);
    let out = run_with_timeout(&mut cmd, BOOT_TIMEOUT);
    eprintln!(
        "--- vmpod-vm ({:?}, {:.1} s, timed out: {}) console:\n{}\n--- log:\n{}",
        out.status,
        out.elapsed.as_secs_f64(),
        out.timed_out,
        out.stdout,
        out.stderr
    );
    out
}

/// Root on a virtio-blk ext4 image, written by the guest; a virtio-fs
/// share; eth0 on a tap in a network namespace, with a UDP round trip to
/// the host; vsock connections both ways; virtio-rng.
#[test]
fn test_guest_uses_devices_with_root_on_virtio_blk() {
    let Some(guest) = guest_or_skip("test_guest_uses_devices_with_root_on_virtio_blk") else {
        return;
    };
    let work = TempDir::new("devices-blk");
    let tree = work.0.join("tree");
    write_root_tree(&tree, &guest.test_init).unwrap();
    let image = work.0.join("root.ext4");
    make_ext4_image(&tree, &image, 64).unwrap();
    let share = work.0.join("share");
    write_root_tree(&share, &guest.test_init).unwrap();
    let socket = work.0.join("v.sock");
    let netns = NetNs::with_tap("blk", "vmpodtap0");
    let mut udp = netns.udp_echo();
    let (tx, rx) = mpsc::channel();
    vsock_host_side(&socket, tx, BOOT_TIMEOUT);

    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/init \
         vmpod_disk=1 vmpod_fs=shared vmpod_net={GUEST_NET},{HOST_IP},{UDP_PORT} \
         vmpod_vsock={GUEST_VSOCK_PORT},{HOST_VSOCK_PORT}"
    );
    let out = vmpod_vm(
        &guest,
        Some(&netns),
        &[
            "--cmdline".into(),
            cmdline,
            "--disk".into(),
            format!("path={}", image.display()),
            "--net".into(),
            "tap=vmpodtap0,mac=02:00:00:00:00:01".into(),
            "--fs".into(),
            format!("tag=shared,dir={}", share.display()),
            "--vsock".into(),
            format!("cid={GUEST_CID},socket={}", socket.display()),
            "--rng".into(),
        ],
    );
    let _ = udp.kill();
    let _ = udp.wait();
    assert!(!out.timed_out, "the guest did not finish in time");
    assert_eq!(out.status, Some(0));
    let console = &out.stdout;
    assert!(console.contains("virtio_blk virtio0: [vda] 131072 512-byte logical blocks"));
    assert!(console.contains("VFS: Mounted root (ext4 filesystem)"));
    // virtio-blk: the guest wrote and synced a file on its root, and it is
    // in the image afterwards.
    assert_eq!(init_line(console, "disk"), "ok root=/dev/root ext4");
    assert_eq!(
        read_ext4_file(&image, "/vmpod-guest.txt").unwrap(),
        GUEST_TEXT
    );
    // virtio-fs: the guest mounted the share, read the host's file and
    // wrote one.
    assert_eq!(
        init_line(console, "fs"),
        "read \"written by the host\" wrote from-guest.txt"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).unwrap(),
        GUEST_TEXT
    );
    // virtio-net: a UDP round trip through the tap.
    assert_eq!(
        init_line(console, "net"),
        "reply \"pong from the host: ping from the vmpod guest\""
    );
    // virtio-vsock, both ways.
    let vsock = init_line(console, "vsock");
    assert!(
        vsock.contains("host said \"hello guest from the host\""),
        "{vsock}"
    );
    assert!(vsock.contains("echoed \"ping from the host\""), "{vsock}");
    let mut host_saw: Vec<String> = rx.try_iter().collect();
    host_saw.sort();
    assert_eq!(host_saw.len(), 2, "{host_saw:?}");
    assert!(host_saw[0].starts_with("connected (OK "), "{host_saw:?}");
    assert!(
        host_saw[0].ends_with("echo \"echo ping from the host\""),
        "{host_saw:?}"
    );
    assert_eq!(
        host_saw[1],
        "guest said \"hello host from the vmpod guest\""
    );
    // The device removed its socket when the VM ended.
    assert!(!socket.exists(), "vsock socket left behind");
    // virtio-rng.
    assert!(init_line(console, "hwrng").starts_with("virtio_rng.0 "));
}

/// Root on virtio-fs: the guest boots from a shared host directory and
/// writes into it.
#[test]
fn test_guest_boots_with_root_on_virtio_fs() {
    let Some(guest) = guest_or_skip("test_guest_boots_with_root_on_virtio_fs") else {
        return;
    };
    let work = TempDir::new("devices-fs");
    let root = work.0.join("root");
    write_root_tree(&root, &guest.test_init).unwrap();
    let out = vmpod_vm(
        &guest,
        None,
        &[
            "--cmdline".into(),
            "console=ttyS0 reboot=k panic=1 root=rootfs rootfstype=virtiofs rw init=/init \
             vmpod_fs=rootfs"
                .into(),
            "--fs".into(),
            format!("tag=rootfs,dir={}", root.display()),
        ],
    );
    assert!(!out.timed_out, "the guest did not finish in time");
    assert_eq!(out.status, Some(0));
    assert!(out
        .stdout
        .contains("VFS: Mounted root (virtiofs filesystem)"));
    assert_eq!(
        init_line(&out.stdout, "fs"),
        "read \"written by the host\" wrote from-guest.txt"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("from-guest.txt")).unwrap(),
        GUEST_TEXT
    );
}
