// SPDX-License-Identifier: Apache-2.0
//! Pod networking in Kata's "tcfilter" model. Each interface the CNI put in
//! the pod's network namespace gets a tap beside it, joined to it both ways
//! by tc ingress + mirred redirect (no bridge, no host-side address); the VM
//! gets one virtio-net device per tap with the interface's MAC and MTU, and
//! the agent gives the guest's interface the addresses, routes and
//! permanent neighbour entries the namespace had, so the workload sees what
//! it would see under runc. The CNI's interface is left as it was found, but
//! for the ingress qdisc that teardown removes.

pub mod netns;
mod routes;
mod tap;
mod tc;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::{Handle, LinkUnspec};
use serde::{Deserialize, Serialize};
use vmpod_agent_api::messages::{IPAddress, Interface, Neighbour, Route};
use vmpod_sys::mac::MacAddr;

/// Taps are named `tap<N>_vmpod`; an interface so named is never a pod's.
const TAP_SUFFIX: &str = "_vmpod";

/// Errors setting up or tearing down a pod's network, each naming the
/// namespace and what failed; the cause, if any, is the error's source
/// (print the whole with [`vmpod_sys::error::chain`]).
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace file cannot be opened or entered.
    #[error("network namespace {path}")]
    Namespace {
        /// The namespace's path.
        path: PathBuf,
        /// The open's error (`NotFound`: no such namespace) or setns(2)'s
        /// (`EINVAL`: the file is no network namespace).
        source: std::io::Error,
    },
    /// A netlink request was refused.
    #[error("network namespace {netns}: {what}")]
    Netlink {
        /// The namespace's path.
        netns: PathBuf,
        /// The step, e.g. `listing routes` or `bringing tap0_vmpod up`.
        what: String,
        /// The kernel's answer.
        source: rtnetlink::Error,
    },
    /// A tap cannot be created.
    #[error("network namespace {netns}: cannot create the tap {tap}")]
    Tap {
        /// The namespace's path.
        netns: PathBuf,
        /// The tap's name.
        tap: String,
        /// The tun device's error (`EBUSY`: a tap of that name is there).
        source: std::io::Error,
    },
    /// A route of the namespace cannot be given to the guest as it is.
    #[error(
        "network namespace {netns}: the route to {destination} {why}, which the VM cannot be given"
    )]
    Route {
        /// The namespace's path.
        netns: PathBuf,
        /// The route's destination.
        destination: String,
        /// What it has that cannot be carried.
        why: &'static str,
    },
    /// An interface disappeared while it was being set up.
    #[error("network namespace {netns}: the interface {interface} vanished")]
    Vanished {
        /// The namespace's path.
        netns: PathBuf,
        /// The interface.
        interface: String,
    },
}

/// One interface of the pod's namespace and the tap that carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// The CNI's interface (e.g. `eth0`); the guest's gets its name.
    pub interface: String,
    /// The tap beside it.
    pub tap: String,
    /// The interface's MAC, which the guest's interface takes.
    pub mac: String,
    /// The interface's MTU.
    pub mtu: u32,
    /// Its addresses (no IPv6 link-local ones: those belong to the link).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Its permanent neighbour entries (address, MAC), which the CNI set
    /// because nothing answers ARP or NDP for them.
    #[serde(default)]
    pub neighbours: Vec<(IpAddr, String)>,
    /// Whether the interface's ingress redirect (qdisc and filter) is ours
    /// to remove; an ingress qdisc it already had is left alone.
    pub redirected: bool,
}

/// A route of the namespace's main table, as the guest gets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    /// `default` or `ADDRESS/PREFIX`.
    pub destination: String,
    /// The gateway, if any.
    pub gateway: Option<IpAddr>,
    /// The endpoint's interface it leaves by.
    pub device: String,
    /// The preferred source address, if any.
    pub source: Option<IpAddr>,
    /// The gateway is on the link whatever the addresses' prefixes say.
    #[serde(default)]
    pub onlink: bool,
    /// The route's metric (0: none given), which orders the default routes
    /// of several interfaces.
    #[serde(default)]
    pub metric: u32,
}

/// A pod's network as set up: what the VM and the agent are given, and
/// what teardown removes. Kept as JSON in the pod's directory so that a
/// `delete` after a killed shim can tear it down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    /// The namespace's path.
    pub netns: PathBuf,
    /// One per interface.
    pub endpoints: Vec<Endpoint>,
    /// The routes through the endpoints.
    pub routes: Vec<RouteSpec>,
    /// Routes the CNI set that the guest does not get, as `DESTINATION
    /// (why)`: in another table (policy routing, which the guest's kernel
    /// lacks), or blackhole, unreachable, prohibit or throw. Logged.
    #[serde(default)]
    pub uncarried_routes: Vec<String>,
}

/// An interface as netlink lists it.
struct LinkInfo {
    index: u32,
    name: String,
    mac: Option<MacAddr>,
    mtu: u32,
    loopback: bool,
}

fn link_info(link: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: link.header.index,
        name: String::new(),
        mac: None,
        mtu: 1500,
        loopback: link.header.flags.contains(LinkFlags::Loopback),
    };
    for attribute in &link.attributes {
        match attribute {
            LinkAttribute::IfName(name) => info.name.clone_from(name),
            LinkAttribute::Address(bytes) => {
                info.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr);
            }
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            _ => {}
        }
    }
    info
}

fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(ip) if ip.segments()[0] & 0xffc0 == 0xfe80)
}

impl PodNetwork {
    /// Sets up the network of the namespace at `netns`: a tap and a two-way
    /// redirect per interface. On failure nothing of it is left.
    ///
    /// # Errors
    /// [`NetworkError`] naming the namespace and the step.
    pub async fn set_up(netns: &Path) -> Result<PodNetwork, NetworkError> {
        let namespace = netns::open(netns).map_err(|source| NetworkError::Namespace {
            path: netns.to_path_buf(),
            source,
        })?;
        let handle = netns::netlink(&namespace).map_err(|source| NetworkError::Namespace {
            path: netns.to_path_buf(),
            source,
        })?;
        let mut network = PodNetwork {
            netns: netns.to_path_buf(),
            endpoints: Vec::new(),
            routes: Vec::new(),
            uncarried_routes: Vec::new(),
        };
        let built = network.build(&namespace, &handle).await;
        if let Err(err) = built {
            network.remove(&handle).await;
            return Err(err);
        }
        Ok(network)
    }

    fn netlink_error(
        &self,
        what: impl Into<String>,
    ) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
        let netns = self.netns.clone();
        let what = what.into();
        move |source| NetworkError::Netlink {
            netns,
            what,
            source,
        }
    }

    async fn links(&self, handle: &Handle) -> Result<Vec<LinkInfo>, NetworkError> {
        handle
            .link()
            .get()
            .execute()
            .map_ok(|link| link_info(&link))
            .try_collect()
            .await
            .map_err(self.netlink_error("listing interfaces"))
    }

    /// Finds the interfaces, makes their taps and joins them; each endpoint
    /// is recorded as soon as anything of it exists, for [`Self::remove`].
    async fn build(
        &mut self,
        namespace: &std::fs::File,
        handle: &Handle,
    ) -> Result<(), NetworkError> {
        let interfaces: Vec<LinkInfo> = self
            .links(handle)
            .await?
            .into_iter()
            .filter(|link| !link.loopback && !link.name.ends_with(TAP_SUFFIX))
            .collect();
        let mut routed = Vec::new();
        for (n, interface) in interfaces.iter().enumerate() {
            let Some(mac) = interface.mac else {
                tracing::info!(
                    "{}: {} has no Ethernet address; not carried into the VM",
                    self.netns.display(),
                    interface.name
                );
                continue;
            };
            let tap = format!("tap{n}{TAP_SUFFIX}");
            self.carry(namespace, handle, interface, mac, tap).await?;
            routed.push((interface.index, interface.name.clone()));
        }
        self.read_routes(handle, &routed).await
    }

    /// Makes `interface`'s tap and joins the two; when that fails because
    /// the interface has gone, says so.
    async fn carry(
        &mut self,
        namespace: &std::fs::File,
        handle: &Handle,
        interface: &LinkInfo,
        mac: MacAddr,
        tap: String,
    ) -> Result<(), NetworkError> {
        let joined = async {
            let addresses = self.addresses(handle, interface).await?;
            let neighbours = self.permanent_neighbours(handle, interface).await?;
            tap::create(namespace, &tap).map_err(|source| NetworkError::Tap {
                netns: self.netns.clone(),
                tap: tap.clone(),
                source,
            })?;
            self.endpoints.push(Endpoint {
                interface: interface.name.clone(),
                tap: tap.clone(),
                mac: mac.to_string(),
                mtu: interface.mtu,
                addresses,
                neighbours,
                redirected: false,
            });
            let tap_index = self.index_of(handle, &tap).await?;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(tap_index)
                        .mtu(interface.mtu)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(self.netlink_error(format!("bringing {tap} up")))?;
            tc::redirect(handle, interface.index, tap_index)
                .await
                .map_err(self.netlink_error(format!(
                    "redirecting {} to {tap} (an ingress qdisc already on {} is refused)",
                    interface.name, interface.name
                )))?;
            if let Some(endpoint) = self.endpoints.last_mut() {
                endpoint.redirected = true;
            }
            tc::redirect(handle, tap_index, interface.index)
                .await
                .map_err(self.netlink_error(format!("redirecting {tap} to {}", interface.name)))
        }
        .await;
        match (joined, self.still_there(handle, interface).await) {
            (_, Ok(false)) => Err(self.vanished(interface)),
            (Err(err), _) | (Ok(()), Err(err)) => Err(err),
            (Ok(()), Ok(true)) => Ok(()),
        }
    }

    /// Whether `interface` is still in the namespace under its index and name.
    async fn still_there(
        &self,
        handle: &Handle,
        interface: &LinkInfo,
    ) -> Result<bool, NetworkError> {
        let links = self.links(handle).await?;
        Ok(links
            .iter()
            .any(|link| link.index == interface.index && link.name == interface.name))
    }

    fn vanished(&self, interface: &LinkInfo) -> NetworkError {
        NetworkError::Vanished {
            netns: self.netns.clone(),
            interface: interface.name.clone(),
        }
    }

    async fn addresses(
        &self,
        handle: &Handle,
        interface: &LinkInfo,
    ) -> Result<Vec<(IpAddr, u8)>, NetworkError> {
        let messages: Vec<_> = handle
            .address()
            .get()
            .set_link_index_filter(interface.index)
            .execute()
            .try_collect()
            .await
            .map_err(self.netlink_error(format!("listing the addresses of {}", interface.name)))?;
        let mut addresses = Vec::new();
        for message in messages {
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the
            // peer's on point-to-point links.
            let local = message.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let address = local.or_else(|| {
                message.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = address.filter(|ip| !is_link_local_v6(ip)) {
                addresses.push((ip, message.header.prefix_len));
            }
        }
        Ok(addresses)
    }

    async fn permanent_neighbours(
        &self,
        handle: &Handle,
        interface: &LinkInfo,
    ) -> Result<Vec<(IpAddr, String)>, NetworkError> {
        let messages: Vec<_> = handle
            .neighbours()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(self.netlink_error(format!("listing the neighbours of {}", interface.name)))?;
        let mut neighbours = Vec::new();
        for message in messages {
            if message.header.ifindex != interface.index
                || message.header.state != NeighbourState::Permanent
            {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for attribute in &message.attributes {
                match attribute {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        ip = Some(IpAddr::V4(*v4));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        ip = Some(IpAddr::V6(*v6));
                    }
                    NeighbourAttribute::LinkLayerAddress(bytes) => {
                        mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr);
                    }
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                neighbours.push((ip, mac.to_string()));
            }
        }
        Ok(neighbours)
    }

    async fn index_of(&self, handle: &Handle, name: &str) -> Result<u32, NetworkError> {
        let links = self.links(handle).await?;
        links
            .iter()
            .find(|link| link.name == name)
            .map(|link| link.index)
            .ok_or_else(|| NetworkError::Vanished {
                netns: self.netns.clone(),
                interface: name.to_owned(),
            })
    }

    /// The `--net` values for `vmpod-vm`, one per endpoint.
    pub fn vmm_args(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|endpoint| {
                format!(
                    "tap={},netns={},mac={},mtu={}",
                    endpoint.tap,
                    self.netns.display(),
                    endpoint.mac,
                    endpoint.mtu
                )
            })
            .collect()
    }

    /// What the agent's UpdateInterface is given, one per endpoint.
    pub fn guest_interfaces(&self) -> Vec<Interface> {
        self.endpoints
            .iter()
            .map(|endpoint| {
                let mut interface = Interface::new();
                interface.name.clone_from(&endpoint.interface);
                interface.hw_addr.clone_from(&endpoint.mac);
                interface.mtu = endpoint.mtu;
                interface.addresses = endpoint
                    .addresses
                    .iter()
                    .map(|(ip, prefix)| {
                        let mut address = IPAddress::new();
                        address.address = ip.to_string();
                        address.prefix_len = u32::from(*prefix);
                        address
                    })
                    .collect();
                interface
            })
            .collect()
    }

    /// What the agent's AddNeighbours is given: every endpoint's.
    pub fn guest_neighbours(&self) -> Vec<Neighbour> {
        self.endpoints
            .iter()
            .flat_map(|endpoint| {
                endpoint.neighbours.iter().map(|(ip, mac)| {
                    let mut neighbour = Neighbour::new();
                    neighbour.address = ip.to_string();
                    neighbour.device.clone_from(&endpoint.interface);
                    neighbour.hw_addr.clone_from(mac);
                    neighbour
                })
            })
            .collect()
    }

    /// What the agent's UpdateRoutes is given.
    pub fn guest_routes(&self) -> Vec<Route> {
        self.routes
            .iter()
            .map(|spec| {
                let mut route = Route::new();
                route.destination.clone_from(&spec.destination);
                route.gateway = spec.gateway.map(|ip| ip.to_string()).unwrap_or_default();
                route.device.clone_from(&spec.device);
                route.source = spec.source.map(|ip| ip.to_string()).unwrap_or_default();
                route.onlink = spec.onlink;
                route.metric = spec.metric;
                route
            })
            .collect()
    }

    /// Removes the taps (and their filters) and the ingress qdiscs added to
    /// the CNI's interfaces. What is already gone is not an error; the
    /// namespace itself being gone leaves nothing to remove.
    ///
    /// # Errors
    /// [`NetworkError::Namespace`] when the namespace exists but cannot be
    /// entered.
    pub async fn tear_down(&self) -> Result<(), NetworkError> {
        let namespace = match netns::open(&self.netns) {
            Ok(namespace) => namespace,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(NetworkError::Namespace {
                    path: self.netns.clone(),
                    source,
                })
            }
        };
        let handle = netns::netlink(&namespace).map_err(|source| NetworkError::Namespace {
            path: self.netns.clone(),
            source,
        })?;
        self.remove(&handle).await;
        Ok(())
    }

    async fn remove(&self, handle: &Handle) {
        let Ok(links) = self.links(handle).await else {
            tracing::warn!(
                "{}: cannot list interfaces to tear down",
                self.netns.display()
            );
            return;
        };
        let index = |name: &str| {
            links
                .iter()
                .find(|link| link.name == name)
                .map(|link| link.index)
        };
        for endpoint in &self.endpoints {
            if let Some(tap) = index(&endpoint.tap) {
                if let Err(err) = handle.link().del(tap).execute().await {
                    tracing::warn!("{}: deleting {}: {err}", self.netns.display(), endpoint.tap);
                }
            }
            match index(&endpoint.interface) {
                Some(interface) if endpoint.redirected => {
                    if let Err(err) = tc::remove_redirect(handle, interface).await {
                        tracing::warn!(
                            "{}: removing the redirect of {}: {err}",
                            self.netns.display(),
                            endpoint.interface
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ip ARGS`, for the namespace the test makes.
    fn ip(args: &[&str]) {
        let out = std::process::Command::new("ip").args(args).output();
        let out = out.unwrap_or_else(|err| panic!("ip: {err}"));
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }

    #[tokio::test]
    async fn test_an_interface_that_vanishes_while_carried_is_named_and_nothing_is_left() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || std::process::Command::new("ip").arg("-V").output().is_err() {
            assert!(
                std::env::var_os("VMPOD_REQUIRE_AGENT").is_none(),
                "needs root and ip (./test.sh installs it)"
            );
            eprintln!("skipped: needs root and ip");
            return;
        }
        let name = format!("vmpod-vanish-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        ip(&["netns", "add", &name]);
        ip(&[
            "-n", &name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        let path = PathBuf::from("/var/run/netns").join(&name);
        let namespace = netns::open(&path).unwrap();
        let handle = netns::netlink(&namespace).unwrap();
        let mut network = PodNetwork {
            netns: path.clone(),
            endpoints: Vec::new(),
            routes: Vec::new(),
            uncarried_routes: Vec::new(),
        };
        let links = network.links(&handle).await.unwrap();
        let eth0 = links.into_iter().find(|link| link.name == "eth0").unwrap();
        // The CNI deletes it between the listing and its tap.
        ip(&["-n", &name, "link", "del", "eth0"]);
        let mac = eth0.mac.unwrap();
        let err = network
            .carry(&namespace, &handle, &eth0, mac, "tap0_vmpod".into())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "network namespace {}: the interface eth0 vanished",
                path.display()
            )
        );
        network.remove(&handle).await;
        let links = std::process::Command::new("ip")
            .args(["-n", &name, "-o", "link", "show"])
            .output()
            .unwrap();
        let links = String::from_utf8_lossy(&links.stdout).into_owned();
        ip(&["netns", "del", &name]);
        assert!(!links.contains("tap0_vmpod"), "tap left behind: {links}");
    }

    #[test]
    fn test_link_local_v6_is_recognised() {
        assert!(is_link_local_v6(&"fe80::1".parse().unwrap()));
        assert!(!is_link_local_v6(&"2001:db8::1".parse().unwrap()));
        assert!(!is_link_local_v6(&"192.0.2.1".parse().unwrap()));
    }
}
