// SPDX-License-Identifier: Apache-2.0
//! The pod's network in the guest: interfaces found by MAC, routes
//! replaced as a whole, bad values refused before anything changes.

use crate::common::{self, HostAgent};
use crate::refused;

fn address(ip: &str, prefix: u32) -> vmpod_agent_api::messages::IPAddress {
    let mut address = vmpod_agent_api::messages::IPAddress::new();
    address.address = ip.into();
    address.prefix_len = prefix;
    address
}

fn route(destination: &str, gateway: &str, device: &str) -> vmpod_agent_api::messages::Route {
    let mut route = vmpod_agent_api::messages::Route::new();
    route.destination = destination.into();
    route.gateway = gateway.into();
    route.device = device.into();
    route
}

/// UpdateInterface finds the interface by MAC, renames it, sets MTU and
/// IPv4/IPv6 addresses and brings it up; UpdateRoutes replaces the routes;
/// bad values are refused before anything changes, and a refused route
/// leaves the routes as they were.
#[tokio::test]
async fn test_interfaces_and_routes() {
    let agent: HostAgent = agent_or_skip!("net");
    assert!(
        agent.ip(&["link", "show", "lo"]).contains(",UP"),
        "lo is not up"
    );
    agent.ip(&[
        "link",
        "add",
        "veth0",
        "address",
        "02:00:00:00:00:07",
        "type",
        "veth",
        "peer",
        "name",
        "veth1",
    ]);
    agent.ip(&["link", "set", "veth1", "up"]);
    let mut interface = vmpod_agent_api::messages::Interface::new();
    interface.hw_addr = "02:00:00:00:00:07".into();
    interface.name = "eth7".into();
    interface.mtu = 1400;
    interface.addresses = vec![address("192.0.2.10", 24), address("2001:db8::10", 64)];
    let c = &agent.client;
    c.update_interface(interface.clone()).await.unwrap();
    let link = agent.ip(&["link", "show", "eth7"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let addresses = agent.ip(&["addr", "show", "dev", "eth7"]);
    assert!(addresses.contains("inet 192.0.2.10/24"), "{addresses}");
    assert!(addresses.contains("inet6 2001:db8::10/64"), "{addresses}");
    // Updating again replaces the addresses.
    interface.addresses = vec![address("192.0.2.11", 24)];
    c.update_interface(interface.clone()).await.unwrap();
    let addresses = agent.ip(&["addr", "show", "dev", "eth7"]);
    assert!(
        addresses.contains("inet 192.0.2.11/24") && !addresses.contains("192.0.2.10"),
        "{addresses}"
    );

    c.update_routes(vec![
        route("default", "192.0.2.1", ""),
        route("198.51.100.0/24", "192.0.2.254", "eth7"),
    ])
    .await
    .unwrap();
    let routes = agent.ip(&["route", "show"]);
    assert!(
        routes.contains("default via 192.0.2.1 dev eth7"),
        "{routes}"
    );
    assert!(
        routes.contains("198.51.100.0/24 via 192.0.2.254 dev eth7"),
        "{routes}"
    );
    // A gateway outside every prefix: refused unless on the link (onlink,
    // as Calico routes).
    let mut onlink = route("203.0.113.0/24", "198.18.0.1", "eth7");
    let message = refused(c.update_routes(vec![onlink.clone()])).await;
    assert!(
        message.starts_with("adding route to 203.0.113.0/24: "),
        "{message}"
    );
    onlink.onlink = true;
    c.update_routes(vec![onlink]).await.unwrap();
    let routes = agent.ip(&["route", "show"]);
    assert!(
        routes.lines().any(
            |line| line.starts_with("203.0.113.0/24 via 198.18.0.1 dev eth7")
                && line.ends_with(" onlink ")
        ),
        "{routes}"
    );
    // A gateway reachable only through a route without one (Calico's
    // `169.254.1.1 dev eth0 scope link` layout), given after the route
    // that needs it; and a metric.
    let mut behind = route("198.18.6.0/24", "198.18.5.1", "eth7");
    behind.metric = 300;
    c.update_routes(vec![behind, route("198.18.5.1/32", "", "eth7")])
        .await
        .unwrap();
    let routes = agent.ip(&["route", "show"]);
    assert!(
        routes.contains("198.18.5.1 dev eth7 proto static scope link"),
        "{routes}"
    );
    assert!(
        routes.lines().any(
            |line| line.starts_with("198.18.6.0/24 via 198.18.5.1 dev eth7")
                && line.contains(" metric 300")
        ),
        "{routes}"
    );
    c.update_routes(vec![route("198.51.100.0/24", "192.0.2.254", "eth7")])
        .await
        .unwrap();
    let routes = agent.ip(&["route", "show"]);
    assert!(
        !routes.contains("default") && !routes.contains("onlink") && !routes.contains("198.18"),
        "{routes}"
    );

    // Refused, with the routes left as they were.
    let message = refused(c.update_routes(vec![
        route("203.0.113.0/24", "192.0.2.253", "eth7"),
        route("default", "10.99.0.1", ""),
    ]))
    .await;
    assert!(
        message.starts_with("adding route to default: "),
        "{message}"
    );
    let after = agent.ip(&["route", "show"]);
    assert_eq!(after, routes);
    for (bad, expected) in [
        (
            route("default", "", ""),
            "has neither a gateway nor a device",
        ),
        (
            route("10.0.0.0", "192.0.2.1", ""),
            "neither default nor ADDRESS/PREFIX",
        ),
        (
            route("192.0.2.0/24", "2001:db8::1", "eth7"),
            "mixes IPv4 and IPv6",
        ),
        (
            route("default", "", "nosuchdev"),
            "no interface is named nosuchdev",
        ),
    ] {
        let message = refused(c.update_routes(vec![bad])).await;
        assert!(message.contains(expected), "{message}");
    }
    // Names swapped against the probe order: eth8 (MAC ..08) is to become
    // eth9 while eth9 (MAC ..09) is to become eth8; each update frees the
    // name it takes.
    for (name, mac, peer) in [
        ("eth8", "02:00:00:00:00:08", "p8"),
        ("eth9", "02:00:00:00:00:09", "p9"),
    ] {
        agent.ip(&[
            "link", "add", name, "address", mac, "type", "veth", "peer", "name", peer,
        ]);
    }
    for (name, mac) in [("eth9", "02:00:00:00:00:08"), ("eth8", "02:00:00:00:00:09")] {
        let mut swapped = vmpod_agent_api::messages::Interface::new();
        swapped.hw_addr = mac.into();
        swapped.name = name.into();
        c.update_interface(swapped).await.unwrap();
    }
    for (name, mac) in [("eth9", "02:00:00:00:00:08"), ("eth8", "02:00:00:00:00:09")] {
        let link = agent.ip(&["link", "show", name]);
        assert!(link.contains(mac) && link.contains(",UP"), "{name}: {link}");
    }
    let mut unknown = interface.clone();
    unknown.hw_addr = "02:00:00:00:00:99".into();
    assert_eq!(
        refused(c.update_interface(unknown)).await,
        "no interface has MAC 02:00:00:00:00:99"
    );
    let mut bad = interface.clone();
    bad.addresses = vec![address("192.0.2.12", 40)];
    assert!(refused(c.update_interface(bad))
        .await
        .contains("prefix length 40"));
    let mut bad = interface.clone();
    bad.hw_addr = "zz".into();
    assert!(refused(c.update_interface(bad))
        .await
        .contains("is not a MAC address"));
    // None of the refused requests changed the interface.
    let addresses = agent.ip(&["addr", "show", "dev", "eth7"]);
    assert!(addresses.contains("inet 192.0.2.11/24"), "{addresses}");

    // Permanent neighbours, IPv4 and IPv6; given again, each replaces its
    // entry.
    let neighbour = |ip: &str, device: &str, mac: &str| {
        let mut neighbour = vmpod_agent_api::messages::Neighbour::new();
        neighbour.address = ip.into();
        neighbour.device = device.into();
        neighbour.hw_addr = mac.into();
        neighbour
    };
    let neighbours = vec![
        neighbour("192.0.2.77", "eth7", "02:00:00:00:00:77"),
        neighbour("2001:db8::77", "eth7", "02:00:00:00:00:78"),
    ];
    c.add_neighbours(neighbours.clone()).await.unwrap();
    c.add_neighbours(neighbours).await.unwrap();
    let table = agent.ip(&["neigh", "show", "dev", "eth7"]);
    for wanted in [
        "192.0.2.77 lladdr 02:00:00:00:00:77 PERMANENT",
        "2001:db8::77 lladdr 02:00:00:00:00:78 PERMANENT",
    ] {
        assert!(table.contains(wanted), "no {wanted:?} in:\n{table}");
    }
    for (bad, expected) in [
        (
            neighbour("192.0.2.300", "eth7", "02:00:00:00:00:77"),
            "neighbour address \"192.0.2.300\" is not an IP address",
        ),
        (
            neighbour("", "eth7", "02:00:00:00:00:77"),
            "a neighbour has no address",
        ),
        (
            neighbour("192.0.2.78", "eth7", "02:00:00:00:77"),
            "is not a MAC address",
        ),
        (
            neighbour("192.0.2.78", "nosuchdev", "02:00:00:00:00:77"),
            "no interface is named nosuchdev",
        ),
    ] {
        // Checked before any is added: the good one first is not added.
        let good = neighbour("192.0.2.79", "eth7", "02:00:00:00:00:79");
        let message = refused(c.add_neighbours(vec![good, bad])).await;
        assert!(message.contains(expected), "{message}");
    }
    let table = agent.ip(&["neigh", "show", "dev", "eth7"]);
    assert!(!table.contains("192.0.2.79"), "{table}");
}
