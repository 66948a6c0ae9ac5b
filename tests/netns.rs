// SPDX-License-Identifier: Apache-2.0
//! Network namespaces for the pod-network tests, made with iproute2 the way
//! a CNI plugin leaves them: a pod namespace holding one end of a veth pair
//! (addresses, MTU, routes), and a peer namespace holding the other end.
//! Traffic stays inside the two; both are deleted on drop.

use std::path::PathBuf;
use std::process::Command;

/// The pod's side: 192.0.2.0/24 is TEST-NET-1, 2001:db8::/32 the IPv6
/// documentation prefix, 198.51.100.0/24 (TEST-NET-2) a routed network.
pub const POD_IPV4: &str = "192.0.2.2";
/// The peer's IPv4 address, the pod's gateway.
pub const PEER_IPV4: &str = "192.0.2.1";
/// The pod's IPv6 address.
pub const POD_IPV6: &str = "2001:db8::2";
/// The peer's IPv6 address, the pod's IPv6 gateway.
pub const PEER_IPV6: &str = "2001:db8::1";
/// A network routed through the peer.
pub const ROUTED_NET: &str = "198.51.100.0/24";
/// A network routed through a gateway outside the pod's prefixes, on the
/// link (`onlink`, as Calico routes): TEST-NET-3 via a benchmarking address.
pub const ONLINK_NET: &str = "203.0.113.0/24";
/// The on-link gateway of [`ONLINK_NET`].
pub const ONLINK_GATEWAY: &str = "198.18.0.1";
/// A gateway no address's prefix covers, reached through a route without
/// a gateway (`scope link`), as Calico's 169.254.1.1 is.
pub const LINK_GATEWAY: &str = "198.18.5.1";
/// A network routed through [`LINK_GATEWAY`].
pub const LINK_ROUTED_NET: &str = "198.18.6.0/24";
/// A permanent neighbour entry of the pod's interface, as the AWS VPC CNI
/// gives the pod its gateway's MAC.
pub const NEIGHBOUR_IPV4: &str = "192.0.2.77";
/// The MAC of [`NEIGHBOUR_IPV4`].
pub const NEIGHBOUR_MAC: &str = "02:00:00:00:00:77";
/// The veth's MTU (not the default, so that it shows it was carried).
pub const MTU: u32 = 1400;
/// The pod's interface, as a CNI names it.
pub const POD_INTERFACE: &str = "eth0";
/// A second interface of the pod, as Multus adds one.
pub const SECOND_INTERFACE: &str = "net1";
/// Its peer end's name, in the peer namespace.
pub const SECOND_PEER_INTERFACE: &str = "peer1";
/// The second interface's address (198.18.0.0/15 is for benchmarking).
pub const SECOND_POD_IPV4: &str = "198.18.1.2";
/// The second peer's address, the gateway of the second default route.
pub const SECOND_PEER_IPV4: &str = "198.18.1.1";
/// The second interface's MTU.
pub const SECOND_MTU: u32 = 1300;
/// The metric of the second default route.
pub const SECOND_METRIC: u32 = 200;

/// Runs `ip` with `args`, returning its stdout; panics with its stderr.
pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// Runs `tc` with `args`, returning its stdout; panics with its stderr.
pub fn tc(args: &[&str]) -> String {
    run("tc", args)
}

fn run(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{tool}: {err}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`/var/run/netns/NAME`).
#[derive(Debug)]
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates `name` (removing a leftover of that name first), lo up.
    pub fn create(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        Netns {
            name: name.to_owned(),
        }
    }

    /// Its path, as an OCI spec names it.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// `ip -n NAME args...`.
    pub fn ip(&self, args: &[&str]) -> String {
        ip(&[&["-n", &self.name], args].concat())
    }

    /// `tc -n NAME args...`.
    pub fn tc(&self, args: &[&str]) -> String {
        tc(&[&["-n", &self.name], args].concat())
    }

    /// Runs `work` on a thread inside this namespace (sockets it makes
    /// belong to it).
    pub fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> T {
        let file = std::fs::File::open(self.path()).expect("netns file");
        vmpod_sys::netns::run_in(&file, work).expect("setns")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Joins `pod`'s `interface` to `peer`'s `peer_interface` by a veth pair
/// of `mtu`.
fn add_veth(pod: &Netns, interface: &str, peer: &Netns, peer_interface: &str, mtu: u32) {
    let mtu = mtu.to_string();
    pod.ip(&[
        "link",
        "add",
        interface,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        peer_interface,
        "mtu",
        &mtu,
        "netns",
        &peer.name,
    ]);
}

/// A pod namespace and its peer, joined by a veth pair, as a CNI plugin
/// would leave them.
#[derive(Debug)]
pub struct PodNetns {
    /// The pod's namespace: `eth0` with the pod's addresses and routes.
    pub pod: Netns,
    /// The peer's: `peer0`, the gateway.
    pub peer: Netns,
}

impl PodNetns {
    /// Creates both namespaces with `tag` in their names.
    pub fn create(tag: &str) -> PodNetns {
        let pod = Netns::create(&format!("vmpod-{tag}-pod"));
        let peer = Netns::create(&format!("vmpod-{tag}-peer"));
        add_veth(&pod, POD_INTERFACE, &peer, "peer0", MTU);
        for (ns, dev, v4, v6) in [
            (&pod, POD_INTERFACE, POD_IPV4, POD_IPV6),
            (&peer, "peer0", PEER_IPV4, PEER_IPV6),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        pod.ip(&["route", "add", "default", "via", PEER_IPV4]);
        pod.ip(&["route", "add", ROUTED_NET, "via", PEER_IPV4]);
        pod.ip(&[
            "route",
            "add",
            ONLINK_NET,
            "via",
            ONLINK_GATEWAY,
            "dev",
            POD_INTERFACE,
            "onlink",
        ]);
        let link_gateway = format!("{LINK_GATEWAY}/32");
        pod.ip(&[
            "route",
            "add",
            &link_gateway,
            "dev",
            POD_INTERFACE,
            "scope",
            "link",
        ]);
        pod.ip(&["route", "add", LINK_ROUTED_NET, "via", LINK_GATEWAY]);
        pod.ip(&["-6", "route", "add", "default", "via", PEER_IPV6]);
        pod.ip(&[
            "neigh",
            "add",
            NEIGHBOUR_IPV4,
            "lladdr",
            NEIGHBOUR_MAC,
            "dev",
            POD_INTERFACE,
            "nud",
            "permanent",
        ]);
        PodNetns { pod, peer }
    }

    /// Adds [`SECOND_INTERFACE`], a second veth to the peer namespace, with
    /// its own MTU and address and a default route of a higher metric.
    pub fn add_second_interface(&self) {
        add_veth(
            &self.pod,
            SECOND_INTERFACE,
            &self.peer,
            SECOND_PEER_INTERFACE,
            SECOND_MTU,
        );
        for (ns, dev, v4) in [
            (&self.pod, SECOND_INTERFACE, SECOND_POD_IPV4),
            (&self.peer, SECOND_PEER_INTERFACE, SECOND_PEER_IPV4),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        self.pod.ip(&[
            "route",
            "add",
            "default",
            "via",
            SECOND_PEER_IPV4,
            "dev",
            SECOND_INTERFACE,
            "metric",
            &SECOND_METRIC.to_string(),
        ]);
    }

    /// The pod namespace as a teardown must leave it: global addresses
    /// (not IPv6 link-local ones, which may still be tentative), links,
    /// IPv4 and IPv6 routes, qdiscs.
    pub fn pod_state(&self) -> String {
        [
            self.pod.ip(&["-o", "addr", "show", "scope", "global"]),
            self.pod.ip(&["-o", "link", "show"]),
            self.pod.ip(&["route", "show"]),
            self.pod.ip(&["-6", "route", "show"]),
            self.pod.tc(&["qdisc", "show"]),
        ]
        .concat()
    }

    /// The pod interface's MAC address.
    pub fn pod_mac(&self) -> String {
        self.mac_of(POD_INTERFACE)
    }

    /// The MAC address of the pod namespace's `interface`.
    pub fn mac_of(&self, interface: &str) -> String {
        let link = self.pod.ip(&["-o", "link", "show", interface]);
        link.split_whitespace()
            .skip_while(|word| *word != "link/ether")
            .nth(1)
            .expect("a MAC in ip link's output")
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn test_work_run_in_the_pod_namespace_sees_its_interface_and_mac() {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root || Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: needs root and ip");
            return;
        }
        let ns = PodNetns::create(&format!("n{}", std::process::id()));
        let namespace = std::fs::metadata(ns.pod.path()).unwrap().ino();
        let (inside, has_eth0) = ns.pod.run(|| {
            let inside = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            let name = std::ffi::CString::new(POD_INTERFACE).unwrap();
            // SAFETY: if_nametoindex reads the NUL-terminated name we own.
            (inside, unsafe { libc::if_nametoindex(name.as_ptr()) } != 0)
        });
        assert_eq!(inside, namespace);
        assert!(has_eth0);
        let mac: vmpod_sys::mac::MacAddr = ns.pod_mac().parse().unwrap();
        assert_eq!(mac.to_string(), ns.pod_mac());
    }
}
