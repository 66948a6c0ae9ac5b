// SPDX-License-Identifier: Apache-2.0
//! The shim's pod-network set-up (`vmpod_shim::network`) against real
//! network namespaces, veths, taps and tc, without a VM: what it finds in a
//! namespace a CNI plugin would leave, that frames from the peer reach the
//! tap, that teardown leaves the veth as it was, and that bad input fails
//! with one line and leaves nothing. Needs root; the full path through a pod
//! VM is `shim_containerd`'s network test.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{IpAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use vmpod_integration_tests::netns::{
    PodNetns, MTU, ONLINK_GATEWAY, ONLINK_NET, PEER_IPV4, PEER_IPV6, POD_INTERFACE, POD_IPV4,
    POD_IPV6, ROUTED_NET,
};
use vmpod_shim::network::{PodNetwork, RouteSpec};

const TAP: &str = "tap0_vmpod";

fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "tc"]
        .iter()
        .all(|tool| std::process::Command::new(tool).arg("-V").output().is_ok());
    if root && tools && Path::new("/dev/net/tun").exists() {
        return true;
    }
    assert!(
        std::env::var_os("VMPOD_REQUIRE_AGENT").is_none(),
        "{test} needs root, /dev/net/tun, ip and tc (./test.sh installs them)"
    );
    eprintln!("skipped {test}: needs root, /dev/net/tun, ip and tc");
    false
}

/// The veth as a teardown must leave it: addresses, MTU, routes, qdiscs.
fn veth_state(ns: &PodNetns) -> String {
    [
        ns.pod_global_addresses(),
        ns.pod.ip(&["-o", "link", "show", "dev", POD_INTERFACE]),
        ns.pod.ip(&["route", "show"]),
        ns.pod.ip(&["-6", "route", "show"]),
        ns.pod.tc(&["qdisc", "show", "dev", POD_INTERFACE]),
    ]
    .join("")
}

/// Opens the tap in the pod namespace as raw frames (no virtio-net header),
/// the way `vmpod-vm` attaches to it.
fn attach(ns: &PodNetns) -> File {
    ns.pod.run(|| {
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .unwrap();
        // SAFETY: ifreq is plain data; all zeroes is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(TAP.as_bytes()) {
            *dst = *src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as i16;
        // SAFETY: TUNSETIFF reads and writes the ifreq we own.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        assert_eq!(
            rc,
            0,
            "TUNSETIFF {TAP}: {}",
            std::io::Error::last_os_error()
        );
        tun
    })
}

#[tokio::test]
async fn test_set_up_joins_the_veth_to_a_tap_and_tear_down_restores_it() {
    if !root_or_skip("test_set_up_joins_the_veth_to_a_tap_and_tear_down_restores_it") {
        return;
    }
    let ns = PodNetns::create(&format!("h{}", std::process::id()));
    let before = veth_state(&ns);

    let network = PodNetwork::set_up(&ns.pod.path()).await.unwrap();
    assert_eq!(network.endpoints.len(), 1, "{network:?}");
    let endpoint = &network.endpoints[0];
    assert_eq!(endpoint.interface, POD_INTERFACE);
    assert_eq!(endpoint.tap, TAP);
    assert_eq!(endpoint.mac, ns.pod_mac());
    assert_eq!(endpoint.mtu, MTU);
    let v4: IpAddr = POD_IPV4.parse().unwrap();
    let v6: IpAddr = POD_IPV6.parse().unwrap();
    assert_eq!(endpoint.addresses, vec![(v4, 24), (v6, 64)]);
    // The CNI's routes; not the ones the kernel made for the addresses.
    let route = |destination: &str, gateway: &str| RouteSpec {
        destination: destination.to_owned(),
        gateway: Some(gateway.parse().unwrap()),
        device: POD_INTERFACE.to_owned(),
        source: None,
        onlink: false,
    };
    let onlink = RouteSpec {
        onlink: true,
        ..route(ONLINK_NET, ONLINK_GATEWAY)
    };
    assert_eq!(
        network.routes,
        vec![
            route("default", PEER_IPV4),
            route(ROUTED_NET, PEER_IPV4),
            onlink,
            route("default", PEER_IPV6),
        ]
    );
    assert!(network.guest_routes()[2].onlink);
    assert_eq!(
        network.vmm_args(),
        vec![format!(
            "tap={TAP},netns={},mac={},mtu={MTU}",
            ns.pod.path().display(),
            ns.pod_mac()
        )]
    );
    let interfaces = network.guest_interfaces();
    assert_eq!(interfaces[0].name, POD_INTERFACE);
    assert_eq!(interfaces[0].hw_addr, ns.pod_mac());
    assert_eq!(interfaces[0].mtu, MTU);
    assert_eq!(interfaces[0].addresses[1].address, POD_IPV6);
    assert_eq!(network.guest_routes()[1].destination, ROUTED_NET);

    let tap = ns.pod.ip(&["-o", "link", "show", "dev", TAP]);
    assert!(
        tap.contains(&format!("mtu {MTU}")) && tap.contains("UP"),
        "{tap}"
    );
    let filter = ns
        .pod
        .tc(&["filter", "show", "dev", POD_INTERFACE, "ingress"]);
    assert!(
        filter.contains("protocol all") && filter.contains("mirred") && filter.contains(TAP),
        "{filter}"
    );
    let filter = ns.pod.tc(&["filter", "show", "dev", TAP, "ingress"]);
    assert!(
        filter.contains("mirred") && filter.contains(POD_INTERFACE),
        "{filter}"
    );

    // A datagram from the peer to the pod's address: its ARP request (or,
    // once resolved, the packet) comes out of the tap, not the pod's stack.
    let mut tap_file = attach(&ns);
    ns.peer.run(|| {
        let socket = UdpSocket::bind((PEER_IPV4, 0)).unwrap();
        let _ = socket.send_to(b"to the pod", (POD_IPV4, 9));
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut frame = [0u8; 2048];
    let len = loop {
        match tap_file.read(&mut frame) {
            Ok(len) if len >= 14 && frame[12..14] == [0x08, 0x06] => break len,
            Ok(_) => {}
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no ARP request on the tap:\n{}{}",
                    ns.pod
                        .tc(&["-s", "filter", "show", "dev", POD_INTERFACE, "ingress"]),
                    ns.pod.ip(&["-s", "link", "show", "dev", TAP])
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(err) => panic!("reading the tap: {err}"),
        }
    };
    // ARP: target protocol address at bytes 38..42 of the frame.
    assert_eq!(frame[38..42], [192, 0, 2, 2], "{:?}", &frame[..len]);
    drop(tap_file);

    network.tear_down().await.unwrap();
    assert!(
        !ns.pod.ip(&["-o", "link", "show"]).contains(TAP),
        "tap left behind"
    );
    assert_eq!(veth_state(&ns), before, "the veth is not as it was found");
}

#[tokio::test]
async fn test_bad_namespaces_fail_in_one_line_and_leave_nothing() {
    if !root_or_skip("test_bad_namespaces_fail_in_one_line_and_leave_nothing") {
        return;
    }
    let err = PodNetwork::set_up(Path::new("/nonexistent/netns"))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "network namespace /nonexistent/netns: No such file or directory (os error 2)"
    );
    let err = PodNetwork::set_up(Path::new("/etc/hostname"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("network namespace /etc/hostname: ") && !err.contains('\n'),
        "{err}"
    );

    // An ingress qdisc the CNI put there is refused, and left in place;
    // the tap made before it goes again.
    let ns = PodNetns::create(&format!("b{}", std::process::id()));
    ns.pod
        .tc(&["qdisc", "add", "dev", POD_INTERFACE, "ingress"]);
    let before = veth_state(&ns);
    let err = PodNetwork::set_up(&ns.pod.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "redirecting {POD_INTERFACE} to {TAP} (an ingress qdisc already on {POD_INTERFACE} is refused)"
        )) && !err.contains('\n'),
        "{err}"
    );
    assert!(
        !ns.pod.ip(&["-o", "link", "show"]).contains(TAP),
        "tap left behind"
    );
    assert_eq!(veth_state(&ns), before);

    // A tap of our name already there (a leftover) is not taken over.
    ns.pod
        .tc(&["qdisc", "del", "dev", POD_INTERFACE, "ingress"]);
    ns.pod.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    let err = PodNetwork::set_up(&ns.pod.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("cannot create the tap {TAP}")),
        "{err}"
    );
    let filters = ns.pod.tc(&["qdisc", "show", "dev", POD_INTERFACE]);
    assert!(!filters.contains("ingress"), "{filters}");
}

#[tokio::test]
async fn test_tear_down_after_the_veth_vanished() {
    if !root_or_skip("test_tear_down_after_the_veth_vanished") {
        return;
    }
    let ns = PodNetns::create(&format!("v{}", std::process::id()));
    let network = PodNetwork::set_up(&ns.pod.path()).await.unwrap();
    // The CNI deletes the pod's veth (both ends) while the pod runs.
    ns.pod.ip(&["link", "del", POD_INTERFACE]);
    network.tear_down().await.unwrap();
    let links = ns.pod.ip(&["-o", "link", "show"]);
    assert!(!links.contains(TAP), "tap left behind: {links}");
    // And once the namespace itself is gone there is nothing to do.
    let gone = PodNetwork {
        netns: "/var/run/netns/vmpod-no-such-namespace".into(),
        ..network
    };
    gone.tear_down().await.unwrap();
}
