// SPDX-License-Identifier: Apache-2.0
//! The container's /dev: the nodes of `linux.devices` (made with mknod),
//! the default devices bound from the agent's /dev, and the standard
//! symlinks.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Linux, LinuxDevice, LinuxDeviceType};

use super::mounts::dirs_below_earlier_mount;
use super::{cstring, path_cstring, PlanError};
use crate::container::paths::resolve_in_root;

/// The device nodes every container gets, bound from the agent's /dev.
pub const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The symlinks every container's /dev gets: (link, target).
pub const DEFAULT_DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// The mode of a device node whose spec gives none.
const DEFAULT_NODE_MODE: libc::mode_t = 0o666;

/// A device node or default device in the container's /dev.
#[derive(Debug)]
pub struct DeviceStep {
    /// Host path of the node under the root.
    pub target: CString,
    /// Bind this agent device onto it.
    pub bind_source: CString,
}

/// A device node of `linux.devices`, made with mknod.
#[derive(Debug)]
pub struct DeviceNode {
    /// Host path of the node under the root.
    pub target: CString,
    /// Directories the child makes first, in order (on a file system it
    /// mounts, such as the /dev tmpfs).
    pub make_dirs: Vec<CString>,
    /// S_IFCHR/S_IFBLK/S_IFIFO and the permission bits.
    pub mode: libc::mode_t,
    /// makedev(major, minor).
    pub dev: libc::dev_t,
    /// Owner.
    pub uid: libc::uid_t,
    /// Group.
    pub gid: libc::gid_t,
}

/// `linux.devices`, after the mounts on `mounted`.
pub(super) fn plan_device_nodes(
    linux: &Linux,
    rootfs: &Path,
    mounted: &[PathBuf],
) -> Result<Vec<DeviceNode>, PlanError> {
    linux
        .devices()
        .iter()
        .flatten()
        .map(|device| device_node(device, rootfs, mounted))
        .collect()
}

/// The default devices in `dev` (the container's /dev as a host path).
/// A default device the spec lists (as `--privileged` lists the host's)
/// is the spec's node, as in runc.
pub(super) fn default_devices(
    dev: &Path,
    device_nodes: &[DeviceNode],
) -> Result<Vec<DeviceStep>, PlanError> {
    DEFAULT_DEVICES
        .iter()
        .map(|name| {
            Ok(DeviceStep {
                target: path_cstring("/dev", &dev.join(name))?,
                bind_source: cstring("/dev", format!("/dev/{name}"))?,
            })
        })
        .filter(|step: &Result<DeviceStep, PlanError>| {
            step.as_ref().map_or(true, |step| {
                device_nodes.iter().all(|node| node.target != step.target)
            })
        })
        .collect()
}

/// The standard symlinks in `dev`: (link host path, target).
pub(super) fn dev_links(dev: &Path) -> Result<Vec<(CString, CString)>, PlanError> {
    DEFAULT_DEV_LINKS
        .iter()
        .map(|(link, target)| {
            Ok((
                path_cstring("/dev", &dev.join(link))?,
                cstring("/dev", *target)?,
            ))
        })
        .collect()
}

fn device_node(
    device: &LinuxDevice,
    rootfs: &Path,
    mounted: &[PathBuf],
) -> Result<DeviceNode, PlanError> {
    let path = device.path();
    if !path.is_absolute() {
        return Err(PlanError::NotAbsolute {
            field: "linux.devices.path",
            path: path.display().to_string(),
        });
    }
    let kind = match device.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(PlanError::Device(format!(
                "{} has type \"a\", which only device cgroup rules take",
                path.display()
            )))
        }
    };
    let number = |value: i64, what: &str| {
        u32::try_from(value).map_err(|_| {
            PlanError::Device(format!(
                "{}: {what} {value} is out of range",
                path.display()
            ))
        })
    };
    let dev = libc::makedev(
        number(device.major(), "major")?,
        number(device.minor(), "minor")?,
    );
    let target = resolve_in_root(rootfs, path, mounted)?;
    Ok(DeviceNode {
        make_dirs: node_dirs(&target, mounted)?,
        target: path_cstring("linux.devices.path", &target)?,
        mode: kind | (device.file_mode().unwrap_or(DEFAULT_NODE_MODE) & 0o7777),
        dev,
        uid: device.uid().unwrap_or(0),
        gid: device.gid().unwrap_or(0),
    })
}

/// A node's directories (/dev/net of /dev/net/tun), as runc makes them:
/// for the child below an earlier mount, else now in the image.
fn node_dirs(target: &Path, mounted: &[PathBuf]) -> Result<Vec<CString>, PlanError> {
    if let Some(dirs) = dirs_below_earlier_mount("linux.devices.path", target, mounted, true)? {
        return Ok(dirs);
    }
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|source| PlanError::MountPoint {
            path: parent.display().to_string(),
            source,
        })?;
    }
    Ok(Vec::new())
}

#[cfg(test)]
mod tests {
    use super::super::tests::scratch;
    use super::*;

    fn device(json: serde_json::Value) -> LinuxDevice {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn test_a_device_node_below_the_dev_mount_is_made_by_the_child() {
        let root = scratch("tun");
        let mounted = vec![root.join("dev")];
        let tun = device(serde_json::json!({
            "path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200,
            "fileMode": 0o620, "uid": 1, "gid": 2
        }));
        let node = device_node(&tun, &root, &mounted).unwrap();
        assert_eq!(node.mode, libc::S_IFCHR | 0o620);
        assert_eq!(node.dev, libc::makedev(10, 200));
        assert_eq!((node.uid, node.gid), (1, 2));
        let net = path_cstring("t", &root.join("dev/net")).unwrap();
        assert_eq!(node.make_dirs, vec![net]);
        assert!(!root.join("dev/net").exists());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_a_device_node_in_the_image_gets_its_directory_now() {
        let root = scratch("fuse");
        let fuse = device(serde_json::json!({
            "path": "/dev/misc/fuse", "type": "b", "major": 10, "minor": 229
        }));
        let node = device_node(&fuse, &root, &[]).unwrap();
        assert_eq!(node.mode, libc::S_IFBLK | DEFAULT_NODE_MODE);
        assert!(node.make_dirs.is_empty());
        assert!(root.join("dev/misc").is_dir());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_devices_the_agent_cannot_make_are_refused() {
        let root = scratch("bad-devices");
        let any = device(serde_json::json!({"path": "/dev/x", "type": "a"}));
        let err = device_node(&any, &root, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.devices: /dev/x has type \"a\", which only device cgroup rules take"
        );
        let huge = device(serde_json::json!({
            "path": "/dev/x", "type": "c", "major": 1i64 << 40, "minor": 0
        }));
        let err = device_node(&huge, &root, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "linux.devices: /dev/x: major {} is out of range",
                1i64 << 40
            )
        );
        let relative = device(serde_json::json!({"path": "dev/x", "type": "c"}));
        assert!(matches!(
            device_node(&relative, &root, &[]),
            Err(PlanError::NotAbsolute { .. })
        ));
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_a_default_device_the_spec_lists_is_the_specs_node() {
        let dev = Path::new("/root/dev");
        let all = default_devices(dev, &[]).unwrap();
        assert_eq!(all.len(), DEFAULT_DEVICES.len());
        assert_eq!(all[0].target.as_c_str(), c"/root/dev/null");
        assert_eq!(all[0].bind_source.as_c_str(), c"/dev/null");
        let null = DeviceNode {
            target: c"/root/dev/null".to_owned(),
            make_dirs: Vec::new(),
            mode: libc::S_IFCHR | 0o666,
            dev: libc::makedev(1, 3),
            uid: 0,
            gid: 0,
        };
        let rest = default_devices(dev, &[null]).unwrap();
        assert_eq!(rest.len(), DEFAULT_DEVICES.len() - 1);
        assert!(rest
            .iter()
            .all(|step| step.target.as_c_str() != c"/root/dev/null"));
    }

    #[test]
    fn test_dev_links_point_into_proc() {
        let links = dev_links(Path::new("/root/dev")).unwrap();
        assert_eq!(links.len(), DEFAULT_DEV_LINKS.len());
        assert_eq!(links[0].0.as_c_str(), c"/root/dev/fd");
        assert_eq!(links[0].1.as_c_str(), c"/proc/self/fd");
    }
}
