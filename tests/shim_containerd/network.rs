// SPDX-License-Identifier: Apache-2.0
//! The pod's network reaches the guest: a CNI-made namespace with two
//! interfaces, carried into the VM (addresses, routes, neighbours, DNS),
//! traffic both ways, and nothing left of it after delete or a refused
//! route.

use std::io::BufRead;
use std::time::{Duration, Instant};

use vmpod_integration_tests::containerd::containerd_or_skip;
use vmpod_integration_tests::events::Events;
use vmpod_integration_tests::netns::{
    PodNetns, LINK_GATEWAY, LINK_ROUTED_NET, MTU, NEIGHBOUR_IPV4, NEIGHBOUR_MAC, ONLINK_GATEWAY,
    ONLINK_NET, PEER_IPV4, PEER_IPV6, POD_INTERFACE, POD_IPV4, POD_IPV6, ROUTED_NET,
    SECOND_INTERFACE, SECOND_METRIC, SECOND_MTU, SECOND_PEER_IPV4, SECOND_POD_IPV4,
};

use crate::fixture::{fixture, text, GUEST_DEADLINE};

/// A TCP server in `ns` on `address`: accepts one connection within
/// [`GUEST_DEADLINE`], reads a line and answers `reply`; returns the line.
fn serve_once(
    ns: &vmpod_integration_tests::netns::Netns,
    address: (&'static str, u16),
    reply: &'static str,
) -> std::thread::JoinHandle<String> {
    let listener = ns.run(|| std::net::TcpListener::bind(address).expect("bind in the peer"));
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + GUEST_DEADLINE;
        let (stream, _) = loop {
            match listener.accept() {
                Ok(accepted) => break accepted,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return String::from("(no connection)");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(err) => return format!("(accept: {err})"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(GUEST_DEADLINE)).unwrap();
        let mut line = String::new();
        let _ = std::io::BufReader::new(&stream).read_line(&mut line);
        let _ = std::io::Write::write_all(&mut &stream, reply.as_bytes());
        line
    })
}

#[test]
fn test_pod_network_reaches_the_guest() {
    let test = "test_pod_network_reaches_the_guest";
    let Some(f) = fixture(test, "") else {
        return;
    };
    if !containerd_or_skip(test, &["ip", "tc"]) {
        return;
    }
    let events = Events::watch(&f.containerd, GUEST_DEADLINE);
    let net = PodNetns::create(&format!("c{}", std::process::id()));
    net.add_second_interface();
    let veth_before = net.pod_state();
    let etc = f.work.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let resolv = "nameserver 192.0.2.53\nsearch pod.test\n";
    let hosts = "127.0.0.1 localhost\n192.0.2.2 vn-pod\n";
    std::fs::write(etc.join("resolv.conf"), resolv).unwrap();
    std::fs::write(etc.join("hosts"), hosts).unwrap();
    let with_ns = format!("network:{}", net.pod.path().display());
    let mount = |file: &str| {
        format!(
            "type=bind,src={},dst=/etc/{file},options=rbind:ro",
            etc.join(file).display()
        )
    };
    let (resolv_mount, hosts_mount) = (mount("resolv.conf"), mount("hosts"));
    f.start_detached(
        "vn-pod",
        &[
            "--with-ns",
            &with_ns,
            "--mount",
            &resolv_mount,
            "--mount",
            &hosts_mount,
        ],
        "vn-pod",
        &["sleep", "3600"],
    );
    let links = net.pod.ip(&["-o", "link", "show"]);
    assert!(
        links.contains("tap0_vmpod") && links.contains("tap1_vmpod"),
        "{links}"
    );

    let exec = |name: &str, command: &[&str]| {
        let out = f.retry_host_fault(
            "vn-pod",
            name,
            |attempt| {
                let exec_id = format!("{name}-{attempt}");
                f.ctr(&[&["task", "exec", "--exec-id", &exec_id, "vn-pod"], command].concat())
            },
            |out| out.status.code(),
        );
        f.ok(name, &out);
        text(&out.stdout)
    };
    // The guest's interface is the veth's: name, MAC, MTU, addresses.
    let addr = exec("addr", &["ip", "addr", "show", POD_INTERFACE]);
    for wanted in [
        format!("mtu {MTU}"),
        format!("link/ether {}", net.pod_mac()),
        format!("inet {POD_IPV4}/24"),
        format!("inet6 {POD_IPV6}/64"),
    ] {
        assert!(addr.contains(&wanted), "no {wanted:?} in:\n{addr}");
    }
    // The second interface: its own MAC, MTU and address.
    let addr = exec("addr1", &["ip", "addr", "show", SECOND_INTERFACE]);
    for wanted in [
        format!("mtu {SECOND_MTU}"),
        format!("link/ether {}", net.mac_of(SECOND_INTERFACE)),
        format!("inet {SECOND_POD_IPV4}/24"),
    ] {
        assert!(addr.contains(&wanted), "no {wanted:?} in:\n{addr}");
    }
    let routes = exec("route", &["ip", "route"]);
    for (wanted, flag) in [
        (format!("default via {PEER_IPV4} dev {POD_INTERFACE}"), ""),
        (
            format!("default via {SECOND_PEER_IPV4} dev {SECOND_INTERFACE}"),
            &*format!("metric {SECOND_METRIC}"),
        ),
        (format!("{LINK_GATEWAY} dev {POD_INTERFACE}"), "scope link"),
        (
            format!("{LINK_ROUTED_NET} via {LINK_GATEWAY} dev {POD_INTERFACE}"),
            "",
        ),
        (
            format!("{ROUTED_NET} via {PEER_IPV4} dev {POD_INTERFACE}"),
            "",
        ),
        (
            format!("{ONLINK_NET} via {ONLINK_GATEWAY} dev {POD_INTERFACE}"),
            "onlink",
        ),
    ] {
        assert!(
            routes
                .lines()
                .any(|line| line.starts_with(&wanted) && line.contains(flag)),
            "no {wanted:?} {flag} in:\n{routes}"
        );
    }
    let neighbours = exec("neigh", &["ip", "neigh"]);
    assert!(
        neighbours
            .lines()
            .any(|line| line.starts_with(NEIGHBOUR_IPV4)
                && line.contains(&format!("dev {POD_INTERFACE} lladdr {NEIGHBOUR_MAC}"))
                && line.contains("PERMANENT")),
        "no permanent {NEIGHBOUR_IPV4} in:\n{neighbours}"
    );
    let routes6 = exec("route6", &["ip", "-6", "route"]);
    assert!(
        routes6.contains(&format!("default via {PEER_IPV6} dev {POD_INTERFACE}")),
        "{routes6}"
    );
    assert_eq!(exec("resolv", &["cat", "/etc/resolv.conf"]), resolv);
    assert_eq!(exec("hosts", &["cat", "/etc/hosts"]), hosts);

    // The container reaches a server in the peer namespace.
    let server = serve_once(&net.peer, (PEER_IPV4, 7000), "pong from the peer\n");
    let reply = exec(
        "connect",
        &["sh", "-c", "echo ping from the pod | nc 192.0.2.1 7000"],
    );
    assert_eq!(server.join().unwrap(), "ping from the pod\n");
    assert_eq!(reply, "pong from the peer\n");
    // And through the second interface.
    let server = serve_once(&net.peer, (SECOND_PEER_IPV4, 7001), "pong on net1\n");
    let reply = exec(
        "connect1",
        &[
            "sh",
            "-c",
            &format!("echo ping on net1 | nc {SECOND_PEER_IPV4} 7001"),
        ],
    );
    assert_eq!(server.join().unwrap(), "ping on net1\n");
    assert_eq!(reply, "pong on net1\n");

    // The peer reaches a server in the container.
    let (answer, _) = f.retry_host_fault(
        "vn-pod",
        "exec --detach listen",
        |attempt| {
            let listen = format!("listen-{attempt}");
            f.ok(
                "exec --detach listen",
                &f.ctr(&[
                    "task",
                    "exec",
                    "--detach",
                    "--exec-id",
                    &listen,
                    "vn-pod",
                    "sh",
                    "-c",
                    "echo pong from the pod | nc -l -p 8080",
                ]),
            );
            let answer = net.peer.run(|| {
                let deadline = Instant::now() + GUEST_DEADLINE;
                loop {
                    let connected = std::net::TcpStream::connect_timeout(
                        &(POD_IPV4.parse::<std::net::IpAddr>().unwrap(), 8080).into(),
                        Duration::from_secs(5),
                    );
                    if let Ok(stream) = connected {
                        stream.set_read_timeout(Some(GUEST_DEADLINE)).unwrap();
                        let mut line = String::new();
                        let _ = std::io::BufReader::new(&stream).read_line(&mut line);
                        return Some(line);
                    }
                    // A server that ended will not answer.
                    if Instant::now() > deadline
                        || events.exit_status(&listen, Duration::ZERO).is_some()
                    {
                        return None;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
            let exit = match answer {
                Some(_) => None,
                None => events.exit_status(&listen, Duration::ZERO),
            };
            (answer, exit)
        },
        |(_, exit)| *exit,
    );
    assert_eq!(
        answer.expect("the peer could not reach the container's server"),
        "pong from the pod\n"
    );

    // Delete: no tap or tc filter is left, the veth is as the CNI made it.
    f.ok(
        "task kill",
        &f.ctr(&["task", "kill", "-s", "KILL", "vn-pod"]),
    );
    f.wait_status("vn-pod", Some("STOPPED"));
    f.ok("task rm", &f.ctr(&["task", "rm", "vn-pod"]));
    f.ok("container rm", &f.ctr(&["container", "rm", "vn-pod"]));
    f.assert_nothing_left("after the networked pod");
    let links = net.pod.ip(&["-o", "link", "show"]);
    assert!(!links.contains("_vmpod"), "tap left behind: {links}");
    let qdiscs = net.pod.tc(&["qdisc", "show"]);
    assert!(!qdiscs.contains("ingress"), "{qdiscs}");
    assert_eq!(net.pod_state(), veth_before);

    // A route the guest refuses (its preferred source is an address on the
    // namespace's lo, which is not carried): the task fails in one line
    // naming the route, and no VM, tap or filter is left.
    net.pod.ip(&["addr", "add", "198.18.9.9/32", "dev", "lo"]);
    net.pod.ip(&[
        "route",
        "add",
        "198.18.10.0/24",
        "via",
        PEER_IPV4,
        "src",
        "198.18.9.9",
    ]);
    let veth_before = net.pod_state();
    let out = f.run(&["--rm", "--with-ns", &with_ns], "vn-refused", &["true"]);
    assert!(!out.status.success(), "vn-refused ran");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "configuring the guest's network: agent UpdateRoutes: adding route to 198.18.10.0/24: "
        ) && !stderr.contains("Status {"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    eprintln!("vn-refused: {}", stderr.trim_end());
    let _ = f.ctr(&["container", "rm", "vn-refused"]);
    f.assert_nothing_left("after the refused route");
    assert_eq!(
        net.pod_state(),
        veth_before,
        "the namespace is not as it was found"
    );
}
