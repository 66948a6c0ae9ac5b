// SPDX-License-Identifier: Apache-2.0
//! The pod namespace's routes as the guest gets them: those the CNI set in
//! the main table through a carried interface, each a [`RouteSpec`]; the
//! ones the guest's plain routing cannot hold refused by name, and those
//! it does not get (other tables, blackhole and the like) listed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{is_link_local_v6, NetworkError, PodNetwork, RouteSpec};

/// The main routing table, the one the CNI fills.
const MAIN_TABLE: u8 = 254;
/// The local table: the kernel's own routes for local addresses.
const LOCAL_TABLE: u32 = 255;

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// `default` or `ADDRESS/PREFIX`; `None` for an IPv6 link-local prefix,
/// which belongs to the link.
fn destination_of(route: &RouteMessage) -> Option<String> {
    let destination = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Destination(address) => route_ip(address),
            _ => None,
        });
    match destination {
        Some(ip) if is_link_local_v6(&ip) => None,
        Some(ip) => Some(format!("{ip}/{}", route.header.destination_prefix_length)),
        None => Some("default".to_owned()),
    }
}

/// What keeps a route the CNI set (not the kernel) from the guest, as
/// `DESTINATION (why)`, if it is one [`route_spec`] passes over.
fn uncarried(route: &RouteMessage) -> Option<String> {
    let header = &route.header;
    if header.protocol == RouteProtocol::Kernel {
        return None;
    }
    let table = route
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(header.table));
    let why = if table == u32::from(MAIN_TABLE) {
        match header.kind {
            RouteType::BlackHole => "blackhole",
            RouteType::Unreachable => "unreachable",
            RouteType::Prohibit => "prohibit",
            RouteType::Throw => "throw",
            _ => return None,
        }
        .to_owned()
    } else if table == LOCAL_TABLE {
        return None;
    } else {
        format!("table {table}")
    };
    Some(format!("{} ({why})", destination_of(route)?))
}

/// The route as the guest gets it, if it is one the CNI set through one of
/// `links` (not one the kernel made for an address, nor a local or
/// multicast one). A route of a kind the guest's plain routing cannot hold
/// (several next hops, a next hop of the other family or a nexthop object,
/// a source prefix) is an error: given without it, the workload would see
/// other routes than under runc.
fn route_spec(
    route: &RouteMessage,
    links: &[(u32, String)],
) -> Result<Option<RouteSpec>, (String, &'static str)> {
    let header = &route.header;
    if header.table != MAIN_TABLE
        || header.protocol == RouteProtocol::Kernel
        || header.kind != RouteType::Unicast
    {
        return Ok(None);
    }
    let mut gateway = None;
    let mut source = None;
    let mut device = None;
    let mut metric = 0;
    let mut uncarried = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Gateway(address) => gateway = route_ip(address),
            RouteAttribute::PrefSource(address) => source = route_ip(address),
            RouteAttribute::Priority(priority) => metric = *priority,
            RouteAttribute::Oif(index) => {
                device = links
                    .iter()
                    .find(|(link, _)| link == index)
                    .map(|(_, name)| name.clone());
            }
            RouteAttribute::MultiPath(_) => uncarried = Some("has several next hops"),
            RouteAttribute::Via(_) => uncarried = Some("has a next hop of the other family"),
            RouteAttribute::NhId(_) => uncarried = Some("uses a nexthop object"),
            _ => {}
        }
    }
    if header.source_prefix_length != 0 {
        uncarried = Some("has a source prefix");
    }
    let Some(destination) = destination_of(route) else {
        return Ok(None);
    };
    if let Some(why) = uncarried {
        return Err((destination, why));
    }
    Ok(device.map(|device| RouteSpec {
        destination,
        gateway,
        device,
        source,
        onlink: header.flags.contains(RouteFlags::Onlink),
        metric,
    }))
}

impl PodNetwork {
    /// The namespace's routes: those the guest gets through `links`, and
    /// those it does not.
    pub(super) async fn read_routes(
        &mut self,
        handle: &Handle,
        links: &[(u32, String)],
    ) -> Result<(), NetworkError> {
        let mut routes = Vec::new();
        let mut uncarried_routes = Vec::new();
        for request in [
            RouteMessageBuilder::<Ipv4Addr>::new().build(),
            RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let messages: Vec<_> = handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await
                .map_err(self.netlink_error("listing routes"))?;
            for message in &messages {
                uncarried_routes.extend(uncarried(message));
                match route_spec(message, links) {
                    Ok(route) => routes.extend(route),
                    Err((destination, why)) => {
                        return Err(NetworkError::Route {
                            netns: self.netns.clone(),
                            destination,
                            why,
                        })
                    }
                }
            }
        }
        self.routes = routes;
        self.uncarried_routes = uncarried_routes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index of the carried interface the test routes leave by.
    const ETH0: u32 = 2;

    /// A unicast route the CNI (protocol boot) set in `table` to
    /// `destination` (`ADDRESS/PREFIX`), with `attributes` besides.
    fn route(table: u8, destination: &str, attributes: &[RouteAttribute]) -> RouteMessage {
        let (address, prefix) = destination.split_once('/').unwrap();
        let mut route = RouteMessage::default();
        route.header.table = table;
        route.header.protocol = RouteProtocol::Boot;
        route.header.kind = RouteType::Unicast;
        route.header.destination_prefix_length = prefix.parse().unwrap();
        route.attributes.push(RouteAttribute::Destination(
            match address.parse().unwrap() {
                IpAddr::V4(ip) => RouteAddress::Inet(ip),
                IpAddr::V6(ip) => RouteAddress::Inet6(ip),
            },
        ));
        route.attributes.extend_from_slice(attributes);
        route
    }

    /// The carried interfaces: eth0 only.
    fn links() -> Vec<(u32, String)> {
        vec![(ETH0, "eth0".to_owned())]
    }

    #[test]
    fn test_a_cni_route_through_a_carried_link_is_given() {
        let gateway = "192.0.2.1".parse().unwrap();
        let mut message = route(
            MAIN_TABLE,
            "198.51.100.0/24",
            &[
                RouteAttribute::Oif(ETH0),
                RouteAttribute::Gateway(RouteAddress::Inet(gateway)),
                RouteAttribute::Priority(100),
            ],
        );
        message.header.flags = RouteFlags::Onlink;
        let spec = route_spec(&message, &links()).unwrap().unwrap();
        assert_eq!(
            spec,
            RouteSpec {
                destination: "198.51.100.0/24".into(),
                gateway: Some(IpAddr::V4(gateway)),
                device: "eth0".into(),
                source: None,
                onlink: true,
                metric: 100,
            }
        );
        assert_eq!(uncarried(&message), None);
    }

    #[test]
    fn test_kernel_routes_and_other_links_routes_are_passed_over() {
        let mut kernel = route(MAIN_TABLE, "192.0.2.0/24", &[RouteAttribute::Oif(ETH0)]);
        kernel.header.protocol = RouteProtocol::Kernel;
        assert_eq!(route_spec(&kernel, &links()), Ok(None));
        assert_eq!(uncarried(&kernel), None);
        let elsewhere = route(MAIN_TABLE, "192.0.2.0/24", &[RouteAttribute::Oif(9)]);
        assert_eq!(route_spec(&elsewhere, &links()), Ok(None));
    }

    #[test]
    fn test_an_ipv6_link_local_prefix_belongs_to_the_link() {
        let message = route(MAIN_TABLE, "fe80::/64", &[RouteAttribute::Oif(ETH0)]);
        assert_eq!(route_spec(&message, &links()), Ok(None));
    }

    #[test]
    fn test_a_route_the_guest_cannot_hold_is_refused_by_destination() {
        let message = route(
            MAIN_TABLE,
            "198.51.100.0/24",
            &[
                RouteAttribute::Oif(ETH0),
                RouteAttribute::MultiPath(Vec::new()),
            ],
        );
        assert_eq!(
            route_spec(&message, &links()),
            Err(("198.51.100.0/24".to_owned(), "has several next hops"))
        );
        let mut sourced = route(MAIN_TABLE, "2001:db8:5::/64", &[RouteAttribute::Oif(ETH0)]);
        sourced.header.source_prefix_length = 48;
        assert_eq!(
            route_spec(&sourced, &links()),
            Err(("2001:db8:5::/64".to_owned(), "has a source prefix"))
        );
    }

    #[test]
    fn test_routes_of_other_tables_and_kinds_are_named_as_uncarried() {
        let policy = route(100, "203.0.113.0/24", &[]);
        assert_eq!(
            uncarried(&policy).as_deref(),
            Some("203.0.113.0/24 (table 100)")
        );
        assert_eq!(route_spec(&policy, &links()), Ok(None));
        let mut blackhole = route(MAIN_TABLE, "203.0.113.0/24", &[]);
        blackhole.header.kind = RouteType::BlackHole;
        assert_eq!(
            uncarried(&blackhole).as_deref(),
            Some("203.0.113.0/24 (blackhole)")
        );
        let mut local = route(0, "192.0.2.2/32", &[RouteAttribute::Table(LOCAL_TABLE)]);
        local.header.kind = RouteType::Local;
        assert_eq!(uncarried(&local), None);
    }
}
