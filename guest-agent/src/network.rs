// SPDX-License-Identifier: Apache-2.0
//! Pod networking inside the guest, over rtnetlink: an interface found by
//! its MAC gets its name, MTU and addresses and comes up; the routes the
//! shim gives replace the ones it gave before; the permanent neighbour
//! entries it gives are added. Every value is checked before anything
//! changes.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAttribute, RouteFlags, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tokio::sync::Mutex;
use vmpod_agent_api::messages::{IPAddress, Interface, Neighbour, Route};

/// An address with its prefix length.
type Prefixed = (IpAddr, u8);

/// Failures of network requests.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A malformed field.
    #[error("{0}")]
    Invalid(String),
    /// No interface has that MAC.
    #[error("no interface has MAC {0}")]
    NoInterface(String),
    /// No interface has that name (a route's device).
    #[error("no interface is named {0}")]
    NoDevice(String),
    /// The kernel refused a change.
    #[error("{what}")]
    Netlink {
        /// What the agent asked for.
        what: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink socket could not be opened.
    #[error("opening rtnetlink")]
    Socket(#[source] std::io::Error),
}

fn invalid(message: String) -> NetworkError {
    NetworkError::Invalid(message)
}

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Netlink { what, source }
}

/// Parses `aa:bb:cc:dd:ee:ff` ([`vmpod_sys::mac::MacAddr`]'s form).
///
/// # Errors
///
/// [`NetworkError::Invalid`].
pub fn parse_mac(text: &str) -> Result<[u8; 6], NetworkError> {
    let mac: vmpod_sys::mac::MacAddr = text.parse().map_err(|_| {
        invalid(format!(
            "hw_addr {text:?} is not a MAC address like 02:00:00:00:00:01"
        ))
    })?;
    Ok(mac.0)
}

/// An address and prefix, checked.
fn parse_address(address: &IPAddress) -> Result<(IpAddr, u8), NetworkError> {
    let ip: IpAddr = address.address.parse().map_err(|_| {
        invalid(format!(
            "address {:?} is not an IP address",
            address.address
        ))
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match u8::try_from(address.prefix_len) {
        Ok(prefix) if prefix <= max => Ok((ip, prefix)),
        _ => Err(invalid(format!(
            "prefix length {} of {ip} is above {max}",
            address.prefix_len
        ))),
    }
}

/// `default` or `ADDRESS/PREFIX`.
fn parse_destination(text: &str) -> Result<Option<(IpAddr, u8)>, NetworkError> {
    if text == "default" || text.is_empty() {
        return Ok(None);
    }
    let (address, prefix) = text.split_once('/').ok_or_else(|| {
        invalid(format!(
            "route destination {text:?} is neither default nor ADDRESS/PREFIX"
        ))
    })?;
    let mut parsed = IPAddress::new();
    parsed.address = address.to_owned();
    parsed.prefix_len = prefix
        .parse()
        .map_err(|_| invalid(format!("route destination {text:?} has no numeric prefix")))?;
    parse_address(&parsed).map(Some)
}

fn parse_optional_ip(field: &str, text: &str) -> Result<Option<IpAddr>, NetworkError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| invalid(format!("{field} {text:?} is not an IP address")))
}

/// The guest's network configuration, through one rtnetlink socket.
#[derive(Debug)]
pub struct Network {
    handle: Handle,
    /// Routes set by the last UpdateRoutes, removed by the next.
    routes: Mutex<Vec<RouteMessage>>,
}

impl Network {
    /// Opens rtnetlink in the agent's network namespace.
    ///
    /// # Errors
    ///
    /// [`NetworkError::Socket`].
    pub fn new() -> Result<Self, NetworkError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetworkError::Socket)?;
        tokio::spawn(connection);
        Ok(Network {
            handle,
            routes: Mutex::new(Vec::new()),
        })
    }

    /// The index of the first interface one of whose attributes `matches`.
    ///
    /// Reads the kernel's dump to its end even after a match: a dump
    /// dropped half-read leaves its later messages with no receiver, and
    /// netlink-proto warns of each.
    async fn link_index(
        &self,
        matches: impl Fn(&LinkAttribute) -> bool,
    ) -> Result<Option<u32>, NetworkError> {
        let mut links = self.handle.link().get().execute();
        let mut found = None;
        while let Some(link) = links
            .try_next()
            .await
            .map_err(netlink("listing interfaces"))?
        {
            if found.is_none() && link.attributes.iter().any(&matches) {
                found = Some(link.header.index);
            }
        }
        Ok(found)
    }

    /// The guest's virtio-net interfaces (index, MAC), in the order the
    /// kernel made them: the order of the VM's network devices.
    async fn device_links(&self) -> Result<Vec<(u32, Vec<u8>)>, NetworkError> {
        let mut links = self.handle.link().get().execute();
        let mut found = Vec::new();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(netlink("listing interfaces"))?
        {
            let virtio = link
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::ParentDevBusName(bus) if bus == "virtio"));
            if virtio {
                let mac = link.attributes.iter().find_map(|a| match a {
                    LinkAttribute::Address(bytes) => Some(bytes.clone()),
                    _ => None,
                });
                found.push((link.header.index, mac.unwrap_or_default()));
            }
        }
        found.sort_by_key(|(index, _)| *index);
        Ok(found)
    }

    /// Gives the guest's virtio-net interfaces, in device order, `macs` one
    /// each (those that have theirs already are left alone). A VM restored
    /// from a template has the template's; the pod's taps carry the pod's.
    ///
    /// # Errors
    ///
    /// [`NetworkError::Invalid`] when the guest has another number of
    /// interfaces, or the refused change.
    pub async fn set_device_macs(&self, macs: &[[u8; 6]]) -> Result<(), NetworkError> {
        let devices = self.device_links().await?;
        if devices.len() != macs.len() {
            return Err(invalid(format!(
                "the request has {} interface MACs, the guest {} network devices",
                macs.len(),
                devices.len()
            )));
        }
        for ((index, current), mac) in devices.iter().zip(macs) {
            if current.as_slice() == mac {
                continue;
            }
            let mac_text = vmpod_sys::mac::MacAddr(*mac).to_string();
            self.set_link(
                LinkUnspec::new_with_index(*index)
                    .address(mac.to_vec())
                    .build(),
            )
            .await
            .map_err(netlink(format!("setting MAC {mac_text}")))?;
        }
        Ok(())
    }

    /// Brings up the loopback interface.
    ///
    /// # Errors
    ///
    /// [`NetworkError`] when lo is missing or refuses.
    pub async fn loopback_up(&self) -> Result<(), NetworkError> {
        let index = self
            .link_index(|a| matches!(a, LinkAttribute::IfName(name) if name == "lo"))
            .await?
            .ok_or_else(|| NetworkError::NoDevice("lo".into()))?;
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(netlink("bringing lo up"))
    }

    /// Configures the interface with `interface.hw_addr`: name, MTU,
    /// addresses (replacing the ones it had), up.
    ///
    /// # Errors
    ///
    /// [`NetworkError`] naming the field or the refused change.
    pub async fn update_interface(&self, interface: &Interface) -> Result<Interface, NetworkError> {
        let (mac, addresses) = check_interface(interface)?;
        let index = self
            .link_index(|a| matches!(a, LinkAttribute::Address(bytes) if bytes.as_slice() == mac))
            .await?
            .ok_or_else(|| NetworkError::NoInterface(interface.hw_addr.clone()))?;
        if !interface.name.is_empty() {
            self.rename(index, &interface.name).await?;
        }
        if interface.mtu != 0 {
            self.set_link(LinkUnspec::new_with_index(index).mtu(interface.mtu).build())
                .await
                .map_err(netlink(format!("setting mtu {}", interface.mtu)))?;
        }
        self.replace_addresses(index, &addresses).await?;
        self.set_link(LinkUnspec::new_with_index(index).up().build())
            .await
            .map_err(netlink("bringing the interface up"))?;
        Ok(interface.clone())
    }

    async fn set_link(
        &self,
        message: rtnetlink::packet_route::link::LinkMessage,
    ) -> Result<(), rtnetlink::Error> {
        self.handle.link().set(message).execute().await
    }

    /// Names the interface `index` `name`. Another interface may hold the
    /// name (the guest's probe order need not be the pod's): it steps
    /// aside to a name of its own index, and gets its pod name by its own
    /// update.
    async fn rename(&self, index: u32, name: &str) -> Result<(), NetworkError> {
        let holder = self
            .link_index(|a| matches!(a, LinkAttribute::IfName(held) if held == name))
            .await?
            .filter(|holder| *holder != index);
        if let Some(holder) = holder {
            let aside = format!("vmpodif{holder}");
            self.set_link(LinkUnspec::new_with_index(holder).down().build())
                .await
                .map_err(netlink(format!("taking {name} down")))?;
            self.set_link(
                LinkUnspec::new_with_index(holder)
                    .name(aside.clone())
                    .build(),
            )
            .await
            .map_err(netlink(format!(
                "renaming {name} to {aside} to free its name"
            )))?;
        }
        self.set_link(LinkUnspec::new_with_index(index).down().build())
            .await
            .map_err(netlink("taking the interface down"))?;
        self.set_link(
            LinkUnspec::new_with_index(index)
                .name(name.to_owned())
                .build(),
        )
        .await
        .map_err(netlink(format!("renaming the interface to {name}")))
    }

    /// Replaces the addresses of the interface `index` with `addresses`
    /// (IPv6 link-local ones belong to the link, not the pod, and stay).
    async fn replace_addresses(
        &self,
        index: u32,
        addresses: &[(IpAddr, u8)],
    ) -> Result<(), NetworkError> {
        let mut old = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let mut stale = Vec::new();
        while let Some(address) = old.try_next().await.map_err(netlink("listing addresses"))? {
            let link_local = address.attributes.iter().any(|a| {
                matches!(a, AddressAttribute::Address(IpAddr::V6(ip)) if ip.segments()[0] & 0xffc0 == 0xfe80)
            });
            if !link_local {
                stale.push(address);
            }
        }
        for address in stale {
            self.handle
                .address()
                .del(address)
                .execute()
                .await
                .map_err(netlink("removing an old address"))?;
        }
        for (ip, prefix) in addresses {
            self.handle
                .address()
                .add(index, *ip, *prefix)
                .execute()
                .await
                .map_err(netlink(format!("adding {ip}/{prefix}")))?;
        }
        Ok(())
    }

    /// Replaces the routes of the last call with `routes`. Routes without a
    /// gateway go first, since a gateway may be reachable only through one
    /// of them. If one is refused, the routes are put back as they were.
    ///
    /// # Errors
    ///
    /// [`NetworkError`] naming the route at fault.
    pub async fn update_routes(&self, routes: &[Route]) -> Result<Vec<Route>, NetworkError> {
        let mut ordered: Vec<&Route> = routes.iter().collect();
        ordered.sort_by_key(|route| !route.gateway.is_empty());
        let mut messages = Vec::new();
        for route in &ordered {
            messages.push(self.route_message(route).await?);
        }
        let mut current = self.routes.lock().await;
        for old in current.iter() {
            let _ = self.handle.route().del(old.clone()).execute().await;
        }
        for (i, message) in messages.iter().enumerate() {
            if let Err(source) = self.handle.route().add(message.clone()).execute().await {
                // Back to the routes as they were.
                for added in &messages[..i] {
                    let _ = self.handle.route().del(added.clone()).execute().await;
                }
                for old in current.iter() {
                    let _ = self.handle.route().add(old.clone()).execute().await;
                }
                return Err(NetworkError::Netlink {
                    what: format!("adding route to {}", display_destination(ordered[i])),
                    source,
                });
            }
        }
        *current = messages;
        Ok(routes.to_vec())
    }

    /// Adds `neighbours` as permanent entries, each replacing an entry of
    /// the same address on its device: a CNI that gives the pod its
    /// gateway's MAC (as the AWS VPC CNI does) has nothing answer ARP for it.
    ///
    /// # Errors
    ///
    /// [`NetworkError`] naming the neighbour at fault.
    pub async fn add_neighbours(&self, neighbours: &[Neighbour]) -> Result<(), NetworkError> {
        let mut entries = Vec::new();
        for neighbour in neighbours {
            let ip = parse_optional_ip("neighbour address", &neighbour.address)?
                .ok_or_else(|| invalid("a neighbour has no address".into()))?;
            let mac = parse_mac(&neighbour.hw_addr)?;
            let index = self
                .link_index(
                    |a| matches!(a, LinkAttribute::IfName(name) if *name == neighbour.device),
                )
                .await?
                .ok_or_else(|| NetworkError::NoDevice(neighbour.device.clone()))?;
            entries.push((index, ip, mac, &neighbour.device));
        }
        for (index, ip, mac, device) in entries {
            self.handle
                .neighbours()
                .add(index, ip)
                .link_layer_address(&mac)
                .replace()
                .execute()
                .await
                .map_err(netlink(format!("adding neighbour {ip} on {device}")))?;
        }
        Ok(())
    }

    /// The netlink message for `route`, checked: a gateway or a device,
    /// one address family.
    async fn route_message(&self, route: &Route) -> Result<RouteMessage, NetworkError> {
        let destination = parse_destination(&route.destination)?;
        let gateway = parse_optional_ip("route gateway", &route.gateway)?;
        let source = parse_optional_ip("route source", &route.source)?;
        let device = self.route_device(route).await?;
        if gateway.is_none() && device.is_none() {
            return Err(invalid(format!(
                "route to {} has neither a gateway nor a device",
                display_destination(route)
            )));
        }
        let v6 = destination
            .map(|(ip, _)| ip.is_ipv6())
            .or(gateway.map(|ip| ip.is_ipv6()))
            .unwrap_or(false);
        let family_mismatch = [destination.map(|(ip, _)| ip), gateway, source]
            .into_iter()
            .flatten()
            .any(|ip| ip.is_ipv6() != v6);
        if family_mismatch {
            return Err(invalid(format!(
                "route to {} mixes IPv4 and IPv6",
                display_destination(route)
            )));
        }
        let mut message = if v6 {
            ipv6_route(destination, gateway, source, device)
        } else {
            ipv4_route(destination, gateway, source, device)
        };
        if route.onlink {
            message.header.flags |= RouteFlags::Onlink;
        }
        if gateway.is_none() {
            // As `ip route` makes it: a gateway behind it is then reachable.
            message.header.scope = RouteScope::Link;
        }
        if route.metric != 0 {
            message
                .attributes
                .push(RouteAttribute::Priority(route.metric));
        }
        Ok(message)
    }

    /// The index of the route's device, if it names one.
    async fn route_device(&self, route: &Route) -> Result<Option<u32>, NetworkError> {
        if route.device.is_empty() {
            return Ok(None);
        }
        self.link_index(|a| matches!(a, LinkAttribute::IfName(name) if *name == route.device))
            .await?
            .ok_or_else(|| NetworkError::NoDevice(route.device.clone()))
            .map(Some)
    }
}

/// An IPv4 route of the parts given (the caller checked the family).
fn ipv4_route(
    destination: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
    device: Option<u32>,
) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<std::net::Ipv4Addr>::new();
    if let Some((IpAddr::V4(ip), prefix)) = destination {
        builder = builder.destination_prefix(ip, prefix);
    }
    if let Some(IpAddr::V4(ip)) = gateway {
        builder = builder.gateway(ip);
    }
    if let Some(IpAddr::V4(ip)) = source {
        builder = builder.pref_source(ip);
    }
    if let Some(index) = device {
        builder = builder.output_interface(index);
    }
    builder.build()
}

/// An IPv6 route of the parts given (the caller checked the family).
fn ipv6_route(
    destination: Option<(IpAddr, u8)>,
    gateway: Option<IpAddr>,
    source: Option<IpAddr>,
    device: Option<u32>,
) -> RouteMessage {
    let mut builder = RouteMessageBuilder::<std::net::Ipv6Addr>::new();
    if let Some((IpAddr::V6(ip), prefix)) = destination {
        builder = builder.destination_prefix(ip, prefix);
    }
    if let Some(IpAddr::V6(ip)) = gateway {
        builder = builder.gateway(ip);
    }
    if let Some(IpAddr::V6(ip)) = source {
        builder = builder.pref_source(ip);
    }
    if let Some(index) = device {
        builder = builder.output_interface(index);
    }
    builder.build()
}

/// The interface request checked: its MAC and addresses parsed, its name
/// and MTU within the kernel's bounds.
fn check_interface(interface: &Interface) -> Result<([u8; 6], Vec<Prefixed>), NetworkError> {
    let mac = parse_mac(&interface.hw_addr)?;
    if !interface.name.is_empty() && !vmpod_sys::ifname::is_valid(&interface.name) {
        return Err(invalid(format!(
            "interface name {:?} is not a valid name",
            interface.name
        )));
    }
    if interface.mtu != 0 && !(68..=65535).contains(&interface.mtu) {
        return Err(invalid(format!(
            "mtu {} is outside 68..65535",
            interface.mtu
        )));
    }
    let addresses = interface
        .addresses
        .iter()
        .map(parse_address)
        .collect::<Result<Vec<_>, _>>()?;
    Ok((mac, addresses))
}

fn display_destination(route: &Route) -> &str {
    if route.destination.is_empty() {
        "default"
    } else {
        &route.destination
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_macs_parse_only_in_six_hex_pairs() {
        assert_eq!(
            parse_mac("02:00:0a:FF:00:01").unwrap(),
            [2, 0, 10, 255, 0, 1]
        );
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "0g:00:00:00:00:01",
            "2:0:0:0:0:1",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn test_interface_requests_are_checked_before_any_change() {
        let mut interface = Interface::new();
        interface.hw_addr = "02:00:00:00:00:01".into();
        interface.name = "eth0".into();
        interface.mtu = 1500;
        let mut address = IPAddress::new();
        address.address = "192.0.2.10".into();
        address.prefix_len = 24;
        interface.addresses.push(address);
        let (mac, addresses) = check_interface(&interface).unwrap();
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(addresses, vec![("192.0.2.10".parse().unwrap(), 24)]);
        for name in ["a/b", "a b", ".", "..", "sixteen-bytes-xx"] {
            let mut bad = interface.clone();
            bad.name = name.into();
            let err = check_interface(&bad).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("interface name {name:?} is not a valid name")
            );
        }
        let mut bad = interface.clone();
        bad.mtu = 67;
        let err = check_interface(&bad).unwrap_err();
        assert_eq!(err.to_string(), "mtu 67 is outside 68..65535");
    }

    #[test]
    fn test_a_refused_change_reads_as_what_then_the_kernels_answer() {
        let err = NetworkError::Socket(std::io::ErrorKind::PermissionDenied.into());
        assert_eq!(err.to_string(), "opening rtnetlink");
        assert_eq!(
            vmpod_sys::error::chain(&err),
            format!(
                "opening rtnetlink: {}",
                std::io::Error::from(std::io::ErrorKind::PermissionDenied)
            )
        );
    }

    #[test]
    fn test_addresses_and_destinations_are_checked() {
        let mut address = IPAddress::new();
        address.address = "192.0.2.10".into();
        address.prefix_len = 24;
        assert_eq!(
            parse_address(&address).unwrap(),
            ("192.0.2.10".parse().unwrap(), 24)
        );
        address.prefix_len = 33;
        assert!(parse_address(&address).is_err());
        address.address = "2001:db8::1".into();
        address.prefix_len = 64;
        assert!(parse_address(&address).is_ok());
        address.address = "300.1.1.1".into();
        assert!(parse_address(&address).is_err());
        assert_eq!(parse_destination("default").unwrap(), None);
        assert_eq!(
            parse_destination("198.51.100.0/24").unwrap(),
            Some(("198.51.100.0".parse().unwrap(), 24))
        );
        assert!(parse_destination("198.51.100.0").is_err());
        assert!(parse_destination("198.51.100.0/x").is_err());
    }
}
