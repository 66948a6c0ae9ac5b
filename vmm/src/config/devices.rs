// SPDX-License-Identifier: Apache-2.0
//! Device settings: what `--disk`, `--net`, `--vsock` and `--fs` say (as
//! `key=value,flag` lists) and what the config file's `[[disk]]`, `[[net]]`,
//! `[vsock]` and `[[fs]]` tables say, checked the same way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
pub use vmpod_sys::mac::MacAddr;

/// Longest virtio-fs tag (the config space field's size).
pub const MAX_FS_TAG_LEN: usize = 36;
/// Longest file name of the vsock socket: any directory works (see
/// `vmpod_sys::unix_socket`), but the name with the `_<port>` that
/// guest-initiated connections add must fit a socket address.
pub const MAX_VSOCK_SOCKET_NAME_LEN: usize =
    vmpod_sys::unix_socket::MAX_NAME_LEN - "_4294967295".len();
/// The MTU range a virtio-net device offers: IPv4's minimum up to what
/// one frame buffer holds.
pub const NET_MTU_RANGE: std::ops::RangeInclusive<u16> = 68..=65535;
/// Lowest guest CID: 0-2 are reserved (hypervisor, local, host).
pub const MIN_GUEST_CID: u32 = 3;

/// Errors in a device setting, each naming the device and the problem.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceConfigError {
    /// A key this device does not know.
    #[error("Invalid --{device} option '{key}': expected {expected}")]
    UnknownKey {
        /// disk, net, vsock or fs.
        device: &'static str,
        /// The key.
        key: String,
        /// The keys it takes.
        expected: &'static str,
    },
    /// A key given twice.
    #[error("Invalid --{device}: '{key}' is given twice")]
    DuplicateKey {
        /// disk, net, vsock or fs.
        device: &'static str,
        /// The key.
        key: String,
    },
    /// A required key is missing or empty.
    #[error("Invalid --{device}: '{key}=' is required")]
    MissingKey {
        /// disk, net, vsock or fs.
        device: &'static str,
        /// The key.
        key: &'static str,
    },
    /// A flag given a value, or a key given none.
    #[error("Invalid --{device} option '{option}'")]
    BadOption {
        /// disk, net, vsock or fs.
        device: &'static str,
        /// The option as written.
        option: String,
    },
    /// Not a MAC address, or not a unicast one.
    #[error("Invalid MAC address '{0}': expected six hex bytes like 02:00:00:00:00:01, unicast")]
    Mac(String),
    /// A tap name Linux would refuse.
    #[error("Invalid tap name '{0}': {rule}", rule = vmpod_sys::ifname::RULE)]
    TapName(String),
    /// An MTU outside [`NET_MTU_RANGE`] or not a number.
    #[error("Invalid MTU '{0}': a number from 68 to 65535")]
    Mtu(String),
    /// A network namespace path that is not absolute.
    #[error(
        "Invalid network namespace '{0}': expected an absolute path such as /var/run/netns/NAME"
    )]
    Netns(PathBuf),
    /// A guest CID that is reserved or not a number.
    #[error("Invalid vsock CID '{0}': a number from {MIN_GUEST_CID} to 4294967294")]
    Cid(String),
    /// A socket file name too long for a socket address.
    #[error(
        "The vsock socket path {0} names no file of at most {MAX_VSOCK_SOCKET_NAME_LEN} bytes"
    )]
    SocketNameTooLong(PathBuf),
    /// A virtio-fs tag the guest could not mount by.
    #[error("Invalid virtio-fs tag '{0}': 1 to {MAX_FS_TAG_LEN} bytes, no NUL")]
    FsTag(String),
    /// Two shared directories with one tag.
    #[error("The virtio-fs tag '{0}' is used twice")]
    DuplicateFsTag(String),
}

/// `key=value,flag,...` as a map; `None` for flags.
fn parse_options<'a>(
    device: &'static str,
    text: &'a str,
    keys: &[&str],
    flags: &[&str],
    expected: &'static str,
) -> Result<BTreeMap<&'a str, Option<&'a str>>, DeviceConfigError> {
    let mut options = BTreeMap::new();
    for option in text.split(',') {
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (option, None),
        };
        let known_key = keys.contains(&key);
        let known_flag = flags.contains(&key);
        if !known_key && !known_flag {
            return Err(DeviceConfigError::UnknownKey {
                device,
                key: key.to_string(),
                expected,
            });
        }
        if known_key != value.is_some() {
            return Err(DeviceConfigError::BadOption {
                device,
                option: option.to_string(),
            });
        }
        if options.insert(key, value).is_some() {
            return Err(DeviceConfigError::DuplicateKey {
                device,
                key: key.to_string(),
            });
        }
    }
    Ok(options)
}

/// The non-empty value of a required key.
fn required<'a>(
    device: &'static str,
    options: &BTreeMap<&str, Option<&'a str>>,
    key: &'static str,
) -> Result<&'a str, DeviceConfigError> {
    options
        .get(key)
        .copied()
        .flatten()
        .filter(|value| !value.is_empty())
        .ok_or(DeviceConfigError::MissingKey { device, key })
}

/// A disk: a raw image file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Whether the guest may only read it.
    #[serde(default)]
    pub readonly: bool,
}

impl FromStr for DiskConfig {
    type Err = DeviceConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = parse_options("disk", s, &["path"], &["readonly"], "path=IMG[,readonly]")?;
        Ok(DiskConfig {
            path: required("disk", &options, "path")?.into(),
            readonly: options.contains_key("readonly"),
        })
    }
}

/// A guest NIC's MAC address: a [`MacAddr`], unicast (a multicast
/// address cannot be a NIC's own).
fn nic_mac(text: &str) -> Result<MacAddr, DeviceConfigError> {
    text.parse::<MacAddr>()
        .ok()
        .filter(|mac| !mac.is_multicast())
        .ok_or_else(|| DeviceConfigError::Mac(text.to_string()))
}

/// [`nic_mac`] for the config file's `mac = "..."`.
fn deserialize_nic_mac<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<MacAddr>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|text| nic_mac(&text).map_err(serde::de::Error::custom))
        .transpose()
}

/// A network interface backed by a host tap device.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap device's name.
    pub tap: String,
    /// The guest's MAC address; a random local one if absent.
    #[serde(default, deserialize_with = "deserialize_nic_mac")]
    pub mac: Option<MacAddr>,
    /// Create the tap if it does not exist (it then goes away with the VM).
    #[serde(default)]
    pub create: bool,
    /// The network namespace holding the tap (a pod's, as the CNI made it);
    /// the VMM's own if absent.
    pub netns: Option<PathBuf>,
    /// The MTU offered to the guest (`VIRTIO_NET_F_MTU`); the guest's
    /// default (1500) if absent.
    pub mtu: Option<u16>,
}

impl NetConfig {
    fn check(self) -> Result<Self, DeviceConfigError> {
        if !vmpod_sys::ifname::is_valid(&self.tap) {
            return Err(DeviceConfigError::TapName(self.tap));
        }
        if let Some(mtu) = self.mtu.filter(|mtu| !NET_MTU_RANGE.contains(mtu)) {
            return Err(DeviceConfigError::Mtu(mtu.to_string()));
        }
        if let Some(netns) = self.netns.as_ref().filter(|path| !path.is_absolute()) {
            return Err(DeviceConfigError::Netns(netns.clone()));
        }
        Ok(self)
    }
}

impl FromStr for NetConfig {
    type Err = DeviceConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = parse_options(
            "net",
            s,
            &["tap", "mac", "netns", "mtu"],
            &["create"],
            "tap=NAME[,mac=MAC][,create][,netns=PATH][,mtu=N]",
        )?;
        let mtu = options
            .get("mtu")
            .copied()
            .flatten()
            .map(|mtu| {
                mtu.parse()
                    .map_err(|_| DeviceConfigError::Mtu(mtu.to_string()))
            })
            .transpose()?;
        NetConfig {
            tap: required("net", &options, "tap")?.to_string(),
            mac: options
                .get("mac")
                .copied()
                .flatten()
                .map(nic_mac)
                .transpose()?,
            create: options.contains_key("create"),
            netns: options.get("netns").copied().flatten().map(PathBuf::from),
            mtu,
        }
        .check()
    }
}

/// The vsock device: the guest's CID and the host-side Unix socket.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID.
    pub cid: u32,
    /// Host processes connect here (`CONNECT <port>`); guest connections
    /// to port P go to `<socket>_P`.
    pub socket: PathBuf,
}

impl VsockConfig {
    fn check(self) -> Result<Self, DeviceConfigError> {
        if self.cid < MIN_GUEST_CID || self.cid == u32::MAX {
            return Err(DeviceConfigError::Cid(self.cid.to_string()));
        }
        let name = self
            .socket
            .file_name()
            .map_or(usize::MAX, |name| name.len());
        if name > MAX_VSOCK_SOCKET_NAME_LEN {
            return Err(DeviceConfigError::SocketNameTooLong(self.socket));
        }
        Ok(self)
    }
}

impl FromStr for VsockConfig {
    type Err = DeviceConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = parse_options("vsock", s, &["cid", "socket"], &[], "cid=N,socket=PATH")?;
        let cid = required("vsock", &options, "cid")?;
        VsockConfig {
            cid: cid
                .parse()
                .map_err(|_| DeviceConfigError::Cid(cid.to_string()))?,
            socket: required("vsock", &options, "socket")?.into(),
        }
        .check()
    }
}

/// A host directory shared with the guest through virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The name the guest mounts it by (`mount -t virtiofs TAG /mnt`).
    pub tag: String,
    /// The shared directory.
    pub dir: PathBuf,
    /// Whether the guest may only read it.
    #[serde(default)]
    pub readonly: bool,
}

impl FsConfig {
    fn check(self) -> Result<Self, DeviceConfigError> {
        if self.tag.is_empty() || self.tag.len() > MAX_FS_TAG_LEN || self.tag.contains('\0') {
            return Err(DeviceConfigError::FsTag(self.tag));
        }
        Ok(self)
    }
}

impl FromStr for FsConfig {
    type Err = DeviceConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let options = parse_options(
            "fs",
            s,
            &["tag", "dir"],
            &["readonly"],
            "tag=TAG,dir=DIR[,readonly]",
        )?;
        FsConfig {
            tag: required("fs", &options, "tag")?.to_string(),
            dir: required("fs", &options, "dir")?.into(),
            readonly: options.contains_key("readonly"),
        }
        .check()
    }
}

/// Every device setting of a VM, checked as a whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceConfigs {
    /// Disks, in the guest's order (`/dev/vda`, `/dev/vdb`, ...).
    pub disks: Vec<DiskConfig>,
    /// Network interfaces (`eth0`, ...).
    pub nets: Vec<NetConfig>,
    /// The vsock device.
    pub vsock: Option<VsockConfig>,
    /// Shared directories.
    pub fs: Vec<FsConfig>,
}

impl DeviceConfigs {
    /// Checks what the file said as the flags are checked, and what only a
    /// whole set can get wrong (a tag used twice).
    ///
    /// # Errors
    /// The first [`DeviceConfigError`].
    pub fn check(self) -> Result<Self, DeviceConfigError> {
        let nets = self
            .nets
            .into_iter()
            .map(NetConfig::check)
            .collect::<Result<_, _>>()?;
        let vsock = self.vsock.map(VsockConfig::check).transpose()?;
        let fs: Vec<FsConfig> = self
            .fs
            .into_iter()
            .map(FsConfig::check)
            .collect::<Result<_, _>>()?;
        for (i, share) in fs.iter().enumerate() {
            if fs[..i].iter().any(|other| other.tag == share.tag) {
                return Err(DeviceConfigError::DuplicateFsTag(share.tag.clone()));
            }
        }
        Ok(DeviceConfigs {
            disks: self.disks,
            nets,
            vsock,
            fs,
        })
    }

    /// How many virtio devices these settings make.
    pub fn count(&self) -> usize {
        self.disks.len() + self.nets.len() + usize::from(self.vsock.is_some()) + self.fs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_disk_options() {
        let disk: DiskConfig = "path=/img/root.ext4,readonly".parse().unwrap();
        assert_eq!(disk.path, PathBuf::from("/img/root.ext4"));
        assert!(disk.readonly);
        assert!(!"path=a".parse::<DiskConfig>().unwrap().readonly);
        assert_eq!(
            "readonly".parse::<DiskConfig>().unwrap_err(),
            DeviceConfigError::MissingKey {
                device: "disk",
                key: "path"
            }
        );
        assert_eq!(
            "path=".parse::<DiskConfig>().unwrap_err().to_string(),
            "Invalid --disk: 'path=' is required"
        );
        let err = "path=a,size=3".parse::<DiskConfig>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "Invalid --disk option 'size': expected path=IMG[,readonly]"
        );
        let err = "path=a,path=b".parse::<DiskConfig>().unwrap_err();
        assert!(err.to_string().contains("'path' is given twice"), "{err}");
        let err = "path=a,readonly=yes".parse::<DiskConfig>().unwrap_err();
        assert!(err.to_string().contains("'readonly=yes'"), "{err}");
        let err = "path".parse::<DiskConfig>().unwrap_err();
        assert!(err.to_string().contains("'path'"), "{err}");
    }

    #[test]
    fn test_nic_macs_are_unicast_macs() {
        let mac = nic_mac("02:00:0a:ff:00:01").unwrap();
        assert_eq!(mac.0, [2, 0, 10, 255, 0, 1]);
        assert_eq!(mac.to_string(), "02:00:0a:ff:00:01");
        // Malformed ones: vmpod_sys::mac's tests; multicast ones are no NIC's.
        for bad in [
            "02:00:00:00:00:zz",
            "03:00:00:00:00:01",
            "ff:ff:ff:ff:ff:ff",
        ] {
            assert_eq!(
                nic_mac(bad),
                Err(DeviceConfigError::Mac(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn test_net_options() {
        let net: NetConfig = "tap=vmtap0,mac=02:00:00:00:00:01,create".parse().unwrap();
        assert_eq!(net.tap, "vmtap0");
        assert_eq!(net.mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert!(net.create);
        let net: NetConfig = "tap=t".parse().unwrap();
        assert_eq!((net.mac, net.create), (None, false));
        let err = "tap=averyveryverylongname"
            .parse::<NetConfig>()
            .unwrap_err();
        assert!(err.to_string().contains("Invalid tap name"), "{err}");
        assert!("tap=a/b".parse::<NetConfig>().is_err());
        let err = "tap=t,mac=01:00:00:00:00:01"
            .parse::<NetConfig>()
            .unwrap_err();
        assert!(err.to_string().contains("unicast"), "{err}");
        assert!("mac=02:00:00:00:00:01".parse::<NetConfig>().is_err());
        let net: NetConfig = "tap=t,netns=/var/run/netns/pod,mtu=1400".parse().unwrap();
        assert_eq!(net.netns, Some(PathBuf::from("/var/run/netns/pod")));
        assert_eq!(net.mtu, Some(1400));
        for (bad, message) in [
            ("tap=t,mtu=67", "Invalid MTU '67'"),
            ("tap=t,mtu=65536", "Invalid MTU '65536'"),
            ("tap=t,mtu=big", "Invalid MTU 'big'"),
            ("tap=t,netns=pod", "Invalid network namespace 'pod'"),
        ] {
            let err = bad.parse::<NetConfig>().unwrap_err().to_string();
            assert!(err.starts_with(message), "{bad}: {err}");
        }
    }

    #[test]
    fn test_vsock_options() {
        let vsock: VsockConfig = "cid=3,socket=/run/v.sock".parse().unwrap();
        assert_eq!(vsock.cid, 3);
        assert_eq!(vsock.socket, PathBuf::from("/run/v.sock"));
        for bad in [
            "cid=2,socket=/s",
            "cid=x,socket=/s",
            "cid=4294967295,socket=/s",
        ] {
            let err = bad.parse::<VsockConfig>().unwrap_err();
            assert!(
                err.to_string().contains("Invalid vsock CID"),
                "{bad}: {err}"
            );
        }
        assert!("cid=3".parse::<VsockConfig>().is_err());
        let deep = format!("/{}/v.sock", "d".repeat(300));
        let vsock: VsockConfig = format!("cid=3,socket={deep}").parse().unwrap();
        assert_eq!(vsock.socket, PathBuf::from(deep), "any directory will do");
        let long = format!(
            "cid=3,socket=/{}",
            "s".repeat(MAX_VSOCK_SOCKET_NAME_LEN + 1)
        );
        let err = long.parse::<VsockConfig>().unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "The vsock socket path {} names no file of at most 71 bytes",
                &long[13..]
            )
        );
        let err = "cid=3,socket=/".parse::<VsockConfig>().unwrap_err();
        assert!(err.to_string().contains("names no file"), "{err}");
    }

    #[test]
    fn test_fs_options_and_tags() {
        let fs: FsConfig = "tag=root,dir=/srv/root,readonly".parse().unwrap();
        assert_eq!((fs.tag.as_str(), fs.readonly), ("root", true));
        let err = format!("tag={},dir=/d", "t".repeat(MAX_FS_TAG_LEN + 1))
            .parse::<FsConfig>()
            .unwrap_err();
        assert!(err.to_string().contains("Invalid virtio-fs tag"), "{err}");
        assert!("dir=/d".parse::<FsConfig>().is_err());
        let twice = DeviceConfigs {
            fs: vec![fs.clone(), fs],
            ..Default::default()
        };
        assert_eq!(
            twice.check().unwrap_err(),
            DeviceConfigError::DuplicateFsTag("root".into())
        );
    }

    #[test]
    fn test_count() {
        let configs = DeviceConfigs {
            disks: vec!["path=a".parse().unwrap(), "path=b".parse().unwrap()],
            nets: vec!["tap=t".parse().unwrap()],
            vsock: Some("cid=3,socket=/s".parse().unwrap()),
            fs: vec![],
        };
        assert_eq!(configs.count(), 4);
    }
}
