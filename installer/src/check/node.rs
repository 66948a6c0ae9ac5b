// SPDX-License-Identifier: Apache-2.0
//! The checks of the node beneath the root: devices, cgroups, containerd,
//! the installed files.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::Line;
use crate::containerd::{self, Version};
use crate::layout::{self, Root, BINARIES};
use crate::restart;
use crate::shim_config;

/// `KVM_GET_API_VERSION`, `_IO(KVMIO, 0x00)`.
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
/// The only KVM API version there is.
const KVM_API_VERSION: libc::c_int = 12;
/// The oldest containerd vmpod runs under (shim v2 protocol, CRI v1).
const MIN_CONTAINERD: (u32, u32) = (1, 6);

/// Opens `path` read-write, as a device is used.
fn open_rw(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// `/dev/kvm` opens and speaks KVM's API.
pub(super) fn kvm(root: &Root) -> Line {
    let path = root.join("/dev/kvm");
    let file = match open_rw(&path) {
        Ok(file) => file,
        Err(err) => {
            return Line::missing("/dev/kvm", format!("cannot open {}: {err}", path.display()))
        }
    };
    use std::os::fd::AsRawFd;
    // SAFETY: an ioctl without arguments on a descriptor we own.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION) };
    if version == KVM_API_VERSION {
        Line::ok("/dev/kvm", format!("usable (KVM API {version})"))
    } else {
        Line::missing(
            "/dev/kvm",
            format!("{} is not KVM (API version {version})", path.display()),
        )
    }
}

/// `/dev/net/tun` opens: each pod's network reaches its VM through a tap.
pub(super) fn tun(root: &Root) -> Line {
    let path = root.join("/dev/net/tun");
    match open_rw(&path) {
        Ok(_) => Line::ok(
            "/dev/net/tun",
            "usable (pod networks reach the VM through taps)",
        ),
        Err(err) => Line::missing(
            "/dev/net/tun",
            format!("cannot open {}: {err}", path.display()),
        ),
    }
}

/// The file system type at `path` (`statfs`'s `f_type`).
fn fs_type(path: &Path) -> Option<i64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is plain old data; the kernel fills it.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a buffer that outlive the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then_some(stat.f_type)
}

/// The cgroup layout: the jailer puts each pod's VM in the pod's cgroup in
/// every hierarchy mounted, so any layout works, but one must be mounted.
pub(super) fn cgroups(root: &Root) -> Line {
    let base = root.join("/sys/fs/cgroup");
    let what = "cgroups";
    match fs_type(&base) {
        Some(libc::CGROUP2_SUPER_MAGIC) => Line::ok(what, "unified (cgroup v2)"),
        Some(libc::TMPFS_MAGIC) => {
            if fs_type(&base.join("unified")) == Some(libc::CGROUP2_SUPER_MAGIC) {
                return Line::ok(
                    what,
                    "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)",
                );
            }
            let v1 = std::fs::read_dir(&base)
                .into_iter()
                .flatten()
                .flatten()
                .any(|entry| fs_type(&entry.path()) == Some(libc::CGROUP_SUPER_MAGIC));
            if v1 {
                Line::ok(what, "legacy (cgroup v1 controllers only)")
            } else {
                Line::missing(
                    what,
                    format!("no cgroup hierarchy under {}", base.display()),
                )
            }
        }
        _ => Line::missing(what, format!("{} is not a cgroup mount", base.display())),
    }
}

/// `(major, minor, patch)` from `containerd --version`'s line, e.g.
/// `containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1`
/// or `containerd containerd.io v1.7.13 7c3aca7`.
pub fn parse_containerd_version(line: &str) -> Option<(u32, u32, u32)> {
    let field = line.split_whitespace().nth(2)?;
    let field = field.strip_prefix('v').unwrap_or(field);
    let mut parts = field.splitn(3, '.').map(|part| {
        let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// containerd is there and new enough.
pub(super) fn containerd_version(root: &Root) -> Line {
    let what = "containerd";
    let program = match restart::find(root, "containerd") {
        Ok(program) => program,
        Err(err) => return Line::missing(what, vmpod_sys::error::chain(&err)),
    };
    let outcome = match restart::run(root, &program, &["--version"], Duration::from_secs(10)) {
        Ok(outcome) => outcome,
        Err(err) => return Line::missing(what, vmpod_sys::error::chain(&err)),
    };
    let line = outcome.stdout.trim();
    match parse_containerd_version(line) {
        Some((major, minor, patch)) if (major, minor) >= MIN_CONTAINERD => Line::ok(
            what,
            format!("{major}.{minor}.{patch} at {}", program.display()),
        ),
        Some((major, minor, patch)) => Line::missing(
            what,
            format!(
                "{major}.{minor}.{patch} is older than {}.{}",
                MIN_CONTAINERD.0, MIN_CONTAINERD.1
            ),
        ),
        None => Line::missing(what, format!("cannot read the version in {line:?}")),
    }
}

/// containerd's config registers the runtime handler `vmpod`.
pub(super) fn containerd_registration(root: &Root) -> Line {
    let what = format!("containerd runtime {}", containerd::HANDLER);
    let text = match std::fs::read_to_string(root.join(containerd::CONFIG_PATH)) {
        Ok(text) => text,
        Err(err) => return Line::missing(what, format!("{}: {err}", containerd::CONFIG_PATH)),
    };
    if let Some(plugin) = disabled_cri_plugin(&text) {
        return Line::missing(
            what,
            format!(
                "{} disables the CRI plugin ({plugin:?} in disabled_plugins)",
                containerd::CONFIG_PATH
            ),
        );
    }
    match containerd::registered(containerd::CONFIG_PATH, &text) {
        Err(err) => Line::missing(what, vmpod_sys::error::chain(&err)),
        Ok((_, false)) => Line::missing(
            what,
            format!("not registered in {}", containerd::CONFIG_PATH),
        ),
        Ok((Version::V2, true)) => Line::ok(
            what,
            format!("registered in {} (version 2)", containerd::CONFIG_PATH),
        ),
        Ok((Version::V3, true)) => {
            let drop_in =
                std::fs::read_to_string(root.join(containerd::DROP_IN_PATH)).unwrap_or_default();
            if containerd::drop_in_registers(&drop_in) {
                Line::ok(
                    what,
                    format!("registered in {} (version 3)", containerd::DROP_IN_PATH),
                )
            } else {
                Line::missing(
                    what,
                    format!(
                        "{} is imported but does not register it",
                        containerd::DROP_IN_PATH
                    ),
                )
            }
        }
    }
}

/// The CRI plugin's name in `disabled_plugins`, if the config turns it
/// off (Docker's containerd package ships `disabled_plugins = ["cri"]`).
fn disabled_cri_plugin(text: &str) -> Option<String> {
    const CRI_NAMES: [&str; 3] = [
        "cri",
        "io.containerd.grpc.v1.cri",
        "io.containerd.cri.v1.runtime",
    ];
    let config: toml::Table = toml::from_str(text).ok()?;
    config
        .get("disabled_plugins")?
        .as_array()?
        .iter()
        .filter_map(|plugin| plugin.as_str())
        .find(|plugin| CRI_NAMES.contains(plugin))
        .map(str::to_owned)
}

/// Each file install puts on the node.
pub(super) fn installed_files(root: &Root) -> Vec<Line> {
    let executables = BINARIES.iter().map(|name| (layout::binary(name), true));
    let data = [
        (layout::kernel(), false),
        (layout::initrd(), false),
        (PathBuf::from(shim_config::CONFIG_PATH), false),
    ];
    executables
        .chain(data)
        .map(|(node, executable)| {
            let what = node.display().to_string();
            match std::fs::metadata(root.join(&node)) {
                Ok(meta) if !meta.is_file() => Line::missing(what, "not a file"),
                Ok(meta) if executable && meta.permissions().mode() & 0o111 == 0 => {
                    Line::missing(what, "not executable")
                }
                Ok(_) => Line::ok(what, "installed"),
                Err(err) => Line::missing(what, format!("{err} (vmpod install puts it there)")),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_disabled_cri_plugin_is_found() {
        assert_eq!(
            disabled_cri_plugin("disabled_plugins = [\"cri\"]\n").as_deref(),
            Some("cri")
        );
        assert_eq!(
            disabled_cri_plugin(
                "version = 2\ndisabled_plugins = [\"x\", \"io.containerd.grpc.v1.cri\"]\n"
            )
            .as_deref(),
            Some("io.containerd.grpc.v1.cri")
        );
        assert_eq!(
            disabled_cri_plugin("version = 2\ndisabled_plugins = [\"x\"]\n"),
            None
        );
        assert_eq!(disabled_cri_plugin("version = 2\n"), None);
    }

    #[test]
    fn test_containerd_versions_as_packages_print_them() {
        let cases = [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
                Some((1, 6, 20)),
            ),
            (
                "containerd containerd.io v1.7.13 7c3aca7a610df76212171d200ca3811ff6096eb8",
                Some((1, 7, 13)),
            ),
            (
                "containerd github.com/containerd/containerd/v2 v2.0.0 207ad71",
                Some((2, 0, 0)),
            ),
            (
                "containerd github.com/containerd/containerd 1.5.9-0ubuntu3",
                Some((1, 5, 9)),
            ),
            ("containerd", None),
            ("containerd x vX.Y", None),
        ];
        for (line, expected) in cases {
            assert_eq!(parse_containerd_version(line), expected, "{line}");
        }
    }
}
