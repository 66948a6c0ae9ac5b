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
    PodNetns, LINK_GATEWAY, LINK_ROUTED_NET, MTU, NEIGHBOUR_IPV4, NEIGHBOUR_MAC, ONLINK_GATEWAY,
    ONLINK_NET, PEER_IPV4, PEER_IPV6, POD_INTERFACE, POD_IPV4, POD_IPV6, ROUTED_NET,
    SECOND_INTERFACE, SECOND_METRIC, SECOND_MTU, SECOND_PEER_IPV4, SECOND_POD_IPV4,
};
use vmpod_shim::network::{PodNetwork, RouteSpec};
use vmpod_sys::error::chain;

const TAP: &str = "tap0_vmpod";
const SECOND_TAP: &str = "tap1_vmpod";

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
    ns.add_second_interface();
    // A neighbour entry the kernel learns, which is not the CNI's to carry.
    ns.pod.run(|| {
        let socket = UdpSocket::bind((POD_IPV4, 0)).unwrap();
        let _ = socket.send_to(b"to the peer", (PEER_IPV4, 9));
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ns.pod.ip(&["neigh", "show", PEER_IPV4]).contains("lladdr") {
        assert!(Instant::now() < deadline, "the peer's MAC was not learnt");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The peer learnt the pod's MAC from it; it must ask again below.
    ns.peer.ip(&["neigh", "flush", "dev", "peer0"]);
    // Routes the guest does not get: named, not carried.
    ns.pod
        .ip(&["route", "add", "blackhole", "198.51.100.200/32"]);
    ns.pod
        .ip(&["route", "add", ROUTED_NET, "via", PEER_IPV4, "table", "100"]);
    let before = ns.pod_state();

    let network = PodNetwork::set_up(&ns.pod.path()).await.unwrap();
    assert_eq!(network.endpoints.len(), 2, "{network:?}");
    let endpoint = &network.endpoints[0];
    assert_eq!(endpoint.interface, POD_INTERFACE);
    assert_eq!(endpoint.tap, TAP);
    assert_eq!(endpoint.mac, ns.pod_mac());
    assert_eq!(endpoint.mtu, MTU);
    let v4: IpAddr = POD_IPV4.parse().unwrap();
    let v6: IpAddr = POD_IPV6.parse().unwrap();
    assert_eq!(endpoint.addresses, vec![(v4, 24), (v6, 64)]);
    // The permanent neighbour entry, not the ones the kernel learnt.
    assert_eq!(
        endpoint.neighbours,
        vec![(NEIGHBOUR_IPV4.parse().unwrap(), NEIGHBOUR_MAC.to_owned())]
    );
    let neighbours = network.guest_neighbours();
    assert_eq!(neighbours.len(), 1, "{neighbours:?}");
    assert_eq!(
        (
            &*neighbours[0].address,
            &*neighbours[0].device,
            &*neighbours[0].hw_addr
        ),
        (NEIGHBOUR_IPV4, POD_INTERFACE, NEIGHBOUR_MAC)
    );
    let mut uncarried = network.uncarried_routes.clone();
    uncarried.sort();
    assert_eq!(
        uncarried,
        [
            format!("{ROUTED_NET} (table 100)"),
            "198.51.100.200/32 (blackhole)".to_owned()
        ]
    );
    let second = &network.endpoints[1];
    assert_eq!(second.neighbours, vec![]);
    assert_eq!(second.interface, SECOND_INTERFACE);
    assert_eq!(second.tap, SECOND_TAP);
    assert_eq!(second.mac, ns.mac_of(SECOND_INTERFACE));
    assert_eq!(second.mtu, SECOND_MTU);
    assert_eq!(
        second.addresses,
        vec![(SECOND_POD_IPV4.parse().unwrap(), 24)]
    );
    // The CNI's routes, in the kernel's order; not the ones it made for the
    // addresses.
    let route = |destination: &str, gateway: Option<&str>| RouteSpec {
        destination: destination.to_owned(),
        gateway: gateway.map(|ip| ip.parse().unwrap()),
        device: POD_INTERFACE.to_owned(),
        source: None,
        onlink: false,
        metric: 0,
    };
    let link_gateway = format!("{LINK_GATEWAY}/32");
    assert_eq!(
        network.routes,
        vec![
            route("default", Some(PEER_IPV4)),
            RouteSpec {
                device: SECOND_INTERFACE.to_owned(),
                metric: SECOND_METRIC,
                ..route("default", Some(SECOND_PEER_IPV4))
            },
            route(&link_gateway, None),
            route(LINK_ROUTED_NET, Some(LINK_GATEWAY)),
            route(ROUTED_NET, Some(PEER_IPV4)),
            RouteSpec {
                onlink: true,
                ..route(ONLINK_NET, Some(ONLINK_GATEWAY))
            },
            // IPv6 routes always have a metric, 1024 unless given.
            RouteSpec {
                metric: 1024,
                ..route("default", Some(PEER_IPV6))
            },
        ]
    );
    assert!(network.guest_routes()[5].onlink);
    assert_eq!(network.guest_routes()[1].metric, SECOND_METRIC);
    assert_eq!(
        network.vmm_args(),
        vec![
            format!(
                "tap={TAP},netns={},mac={},mtu={MTU}",
                ns.pod.path().display(),
                ns.pod_mac()
            ),
            format!(
                "tap={SECOND_TAP},netns={},mac={},mtu={SECOND_MTU}",
                ns.pod.path().display(),
                ns.mac_of(SECOND_INTERFACE)
            )
        ]
    );
    let interfaces = network.guest_interfaces();
    assert_eq!(interfaces[0].name, POD_INTERFACE);
    assert_eq!(interfaces[0].hw_addr, ns.pod_mac());
    assert_eq!(interfaces[0].mtu, MTU);
    assert_eq!(interfaces[0].addresses[1].address, POD_IPV6);
    assert_eq!(interfaces[1].name, SECOND_INTERFACE);
    assert_eq!(interfaces[1].addresses[0].address, SECOND_POD_IPV4);
    assert_eq!(network.guest_routes()[4].destination, ROUTED_NET);

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
    let links = ns.pod.ip(&["-o", "link", "show"]);
    assert!(
        !links.contains(TAP) && !links.contains(SECOND_TAP),
        "tap left behind: {links}"
    );
    assert_eq!(
        ns.pod_state(),
        before,
        "the veths are not as they were found"
    );
}

#[tokio::test]
async fn test_bad_namespaces_fail_in_one_line_and_leave_nothing() {
    if !root_or_skip("test_bad_namespaces_fail_in_one_line_and_leave_nothing") {
        return;
    }
    let err = chain(
        &PodNetwork::set_up(Path::new("/nonexistent/netns"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        err,
        "network namespace /nonexistent/netns: No such file or directory (os error 2)"
    );
    let err = chain(
        &PodNetwork::set_up(Path::new("/etc/hostname"))
            .await
            .unwrap_err(),
    );
    assert!(
        err.starts_with("network namespace /etc/hostname: ") && !err.contains('\n'),
        "{err}"
    );

    // An ingress qdisc the CNI put there is refused, and left in place;
    // the tap made before it goes again.
    let ns = PodNetns::create(&format!("b{}", std::process::id()));
    ns.pod
        .tc(&["qdisc", "add", "dev", POD_INTERFACE, "ingress"]);
    let before = ns.pod_state();
    let err = chain(&PodNetwork::set_up(&ns.pod.path()).await.unwrap_err());
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
    assert_eq!(ns.pod_state(), before);

    // A tap of our name already there (a leftover) is not taken over.
    ns.pod
        .tc(&["qdisc", "del", "dev", POD_INTERFACE, "ingress"]);
    ns.pod.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    let err = chain(&PodNetwork::set_up(&ns.pod.path()).await.unwrap_err());
    assert!(
        err.contains(&format!("cannot create the tap {TAP}")),
        "{err}"
    );
    let filters = ns.pod.tc(&["qdisc", "show", "dev", POD_INTERFACE]);
    assert!(!filters.contains("ingress"), "{filters}");
    ns.pod.ip(&["link", "del", TAP]);

    // Routes the guest's plain routing cannot hold are refused, naming the
    // route, rather than dropped; the taps go again.
    let before = ns.pod_state();
    let bad_routes: [(&[&str], &str); 3] = [
        (
            &[
                "route",
                "add",
                "198.51.100.128/25",
                "nexthop",
                "via",
                PEER_IPV4,
                "nexthop",
                "via",
                "192.0.2.3",
            ],
            "the route to 198.51.100.128/25 has several next hops",
        ),
        (
            &[
                "route",
                "add",
                "198.51.100.64/26",
                "via",
                "inet6",
                PEER_IPV6,
                "dev",
                POD_INTERFACE,
            ],
            "the route to 198.51.100.64/26 has a next hop of the other family",
        ),
        (
            &[
                "-6",
                "route",
                "add",
                "2001:db8:5::/64",
                "from",
                "2001:db8:6::/64",
                "via",
                PEER_IPV6,
            ],
            "the route to 2001:db8:5::/64 has a source prefix",
        ),
    ];
    for (add, expected) in bad_routes {
        ns.pod.ip(add);
        let err = chain(&PodNetwork::set_up(&ns.pod.path()).await.unwrap_err());
        assert!(
            err.contains(expected)
                && err.ends_with(", which the VM cannot be given")
                && !err.contains('\n'),
            "{err}"
        );
        let del: Vec<&str> = add
            .iter()
            .map(|arg| if *arg == "add" { "del" } else { arg })
            .collect();
        ns.pod.ip(&del);
        assert_eq!(ns.pod_state(), before, "after {add:?}");
    }
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
