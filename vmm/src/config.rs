// SPDX-License-Identifier: Apache-2.0
//! The microVM's configuration: what the TOML file and the command-line
//! flags say, merged (flags win) and checked before anything is built.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::arch::cpuid::CpuTemplate;
use crate::arch::layout::MAX_VCPUS;
use crate::device_manager::mmio::MAX_VIRTIO_DEVICES;
use crate::devices::legacy::console_file::DEFAULT_CONSOLE_MAX_BYTES;

mod devices;

pub use devices::{
    DeviceConfigError, DeviceConfigs, DiskConfig, FsConfig, MacAddr, NetConfig, VsockConfig,
};

/// Guest memory when none is asked for.
pub const DEFAULT_MEMORY_MIB: u64 = 256;
/// Least guest memory: room for a kernel, its initrd and page tables.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Kernel command line when none is given: console on COM1, reset through
/// the i8042 so a guest reboot ends the VM, reboot a second after a panic.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// The least a `file:` serial console may be limited to.
pub const MIN_CONSOLE_MAX_BYTES: u64 = 4096;

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialTarget {
    /// The VMM's standard output.
    #[default]
    Stdout,
    /// A file, created or truncated, holding at most the newest
    /// `console-max-bytes` of output (see
    /// [`crate::devices::legacy::console_file`]).
    File(PathBuf),
    /// Nowhere.
    None,
}

impl FromStr for SerialTarget {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(SerialTarget::Stdout),
            "none" => Ok(SerialTarget::None),
            _ => match s.strip_prefix("file:") {
                Some(path) if !path.is_empty() => Ok(SerialTarget::File(PathBuf::from(path))),
                _ => Err(ConfigError::Serial(s.to_string())),
            },
        }
    }
}

impl<'de> Deserialize<'de> for SerialTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Settings as given, each optional: one layer of the configuration.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigLayer {
    /// Guest kernel: an ELF vmlinux or a bzImage.
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (cpio), optional.
    pub initrd: Option<PathBuf>,
    /// Kernel command line, replacing [`DEFAULT_CMDLINE`].
    pub cmdline: Option<String>,
    /// Number of vCPUs.
    pub vcpus: Option<u16>,
    /// Guest memory in MiB.
    pub memory: Option<u64>,
    /// Serial console target.
    pub serial: Option<SerialTarget>,
    /// The most a `file:` serial console keeps, in bytes.
    pub console_max_bytes: Option<u64>,
    /// CPU template.
    pub cpu_template: Option<CpuTemplate>,
    /// Whether the guest gets a virtio-rng device.
    pub rng: Option<bool>,
    /// Disks (`[[disk]]` tables).
    pub disk: Option<Vec<DiskConfig>>,
    /// Network interfaces (`[[net]]` tables).
    pub net: Option<Vec<NetConfig>>,
    /// The vsock device (`[vsock]` table).
    pub vsock: Option<VsockConfig>,
    /// Shared directories (`[[fs]]` tables).
    pub fs: Option<Vec<FsConfig>>,
}

impl ConfigLayer {
    /// Reads a TOML config file.
    ///
    /// # Errors
    /// [`ConfigError::ReadFile`] or [`ConfigError::ParseFile`].
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::ParseFile { message, .. } => ConfigError::ParseFile {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text (the path in errors is left empty).
    ///
    /// # Errors
    /// [`ConfigError::ParseFile`] naming the bad key or value.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::ParseFile {
            path: PathBuf::new(),
            message: e.message().to_string(),
        })
    }

    /// This layer with every setting of `over` that is present replacing
    /// its own.
    pub fn overridden_by(self, over: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            kernel: over.kernel.or(self.kernel),
            initrd: over.initrd.or(self.initrd),
            cmdline: over.cmdline.or(self.cmdline),
            vcpus: over.vcpus.or(self.vcpus),
            memory: over.memory.or(self.memory),
            serial: over.serial.or(self.serial),
            console_max_bytes: over.console_max_bytes.or(self.console_max_bytes),
            cpu_template: over.cpu_template.or(self.cpu_template),
            rng: over.rng.or(self.rng),
            disk: over.disk.or(self.disk),
            net: over.net.or(self.net),
            vsock: over.vsock.or(self.vsock),
            fs: over.fs.or(self.fs),
        }
    }

    /// Checks the merged settings and fills in defaults. `host_memory_mib`
    /// bounds the guest memory.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(self, host_memory_mib: u64) -> Result<VmConfig, ConfigError> {
        let kernel = self.kernel.ok_or(ConfigError::NoKernel)?;
        let vcpus = self.vcpus.unwrap_or(1);
        if vcpus == 0 || vcpus > u16::from(MAX_VCPUS) {
            return Err(ConfigError::Vcpus(vcpus));
        }
        let memory_mib = self.memory.unwrap_or(DEFAULT_MEMORY_MIB);
        if memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(memory_mib));
        }
        if memory_mib > host_memory_mib {
            return Err(ConfigError::MemoryTooLarge {
                asked: memory_mib,
                host: host_memory_mib,
            });
        }
        let devices = DeviceConfigs {
            disks: self.disk.unwrap_or_default(),
            nets: self.net.unwrap_or_default(),
            vsock: self.vsock,
            fs: self.fs.unwrap_or_default(),
        }
        .check()?;
        let console_max_bytes = self.console_max_bytes.unwrap_or(DEFAULT_CONSOLE_MAX_BYTES);
        if console_max_bytes < MIN_CONSOLE_MAX_BYTES {
            return Err(ConfigError::ConsoleMaxBytes(console_max_bytes));
        }
        let rng = self.rng.unwrap_or(false);
        let count = devices.count() + usize::from(rng);
        if count > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(count));
        }
        Ok(VmConfig {
            kernel,
            initrd: self.initrd,
            cmdline: self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string()),
            vcpus: vcpus as u8,
            memory_mib,
            serial: self.serial.unwrap_or_default(),
            console_max_bytes,
            cpu_template: self.cpu_template.unwrap_or_default(),
            rng,
            devices,
        })
    }
}

/// A checked configuration, ready to build a VM from.
#[derive(Debug, Clone, PartialEq)]
pub struct VmConfig {
    /// Guest kernel image.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line before vmpod's additions.
    pub cmdline: String,
    /// vCPUs, 1..=[`MAX_VCPUS`].
    pub vcpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Serial console target.
    pub serial: SerialTarget,
    /// The most a `file:` serial console keeps, in bytes.
    pub console_max_bytes: u64,
    /// CPU template (possibly `auto`).
    pub cpu_template: CpuTemplate,
    /// A virtio-rng device, fed from the host's `getrandom`.
    pub rng: bool,
    /// Disks, network interfaces, vsock and shared directories.
    pub devices: DeviceConfigs,
}

/// Errors in the configuration: all are the user's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No kernel anywhere.
    #[error("No kernel given: use --kernel or `kernel` in the config file")]
    NoKernel,
    /// vCPU count out of range.
    #[error("Invalid vCPU count {0}: it must be between 1 and {MAX_VCPUS}")]
    Vcpus(u16),
    /// Memory below the minimum.
    #[error("Guest memory of {0} MiB is too small: at least {MIN_MEMORY_MIB} MiB are needed")]
    MemoryTooSmall(u64),
    /// Memory above what the host has.
    #[error("Guest memory of {asked} MiB is more than the host's {host} MiB")]
    MemoryTooLarge {
        /// What was asked for.
        asked: u64,
        /// What the host has.
        host: u64,
    },
    /// A device setting is wrong.
    #[error(transparent)]
    Device(#[from] DeviceConfigError),
    /// More virtio devices than interrupt lines.
    #[error("Too many virtio devices: {0}, the most is {MAX_VIRTIO_DEVICES}")]
    TooManyDevices(usize),
    /// A console limit too small to hold a line of a kernel's oops.
    #[error("Invalid console-max-bytes {0}: it must be at least {MIN_CONSOLE_MAX_BYTES}")]
    ConsoleMaxBytes(u64),
    /// A serial target that is none of the known forms.
    #[error("Invalid serial target '{0}': expected stdout, none or file:PATH")]
    Serial(String),
    /// The config file cannot be read.
    #[error("Cannot read the config file {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The open or read error (missing file, no permission, not UTF-8).
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("Invalid config file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's one-line explanation (names the key).
        message: String,
    },
}

/// Total RAM of the host in MiB.
pub fn host_memory_mib() -> u64 {
    // SAFETY: sysinfo only writes into the struct it is given.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit)) >> 20
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer_with_kernel() -> ConfigLayer {
        ConfigLayer {
            kernel: Some("/k".into()),
            ..Default::default()
        }
    }

    #[test]
    fn test_defaults_fill_in() {
        let config = layer_with_kernel().validate(1024).unwrap();
        assert_eq!(config.vcpus, 1);
        assert_eq!(config.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(config.cmdline, DEFAULT_CMDLINE);
        assert_eq!(config.serial, SerialTarget::Stdout);
        assert_eq!(config.cpu_template, CpuTemplate::Auto);
        assert!(!config.rng);
    }

    #[test]
    fn test_toml_says_what_flags_say() {
        let layer = ConfigLayer::from_toml(
            r#"
            kernel = "/boot/vmlinux"
            initrd = "/boot/initrd.cpio"
            cmdline = "console=ttyS0"
            vcpus = 2
            memory = 512
            serial = "file:/tmp/console.log"
            console-max-bytes = 65536
            cpu-template = "emulated-supervisor"
            rng = true
            [[disk]]
            path = "/img/root.ext4"
            readonly = true
            [[disk]]
            path = "/img/data.ext4"
            [[net]]
            tap = "vmtap0"
            mac = "02:00:00:00:00:01"
            [vsock]
            cid = 3
            socket = "/run/vmpod/v.sock"
            [[fs]]
            tag = "rootfs"
            dir = "/srv/rootfs"
            "#,
        )
        .unwrap();
        let config = layer.validate(1024).unwrap();
        assert_eq!(config.kernel, PathBuf::from("/boot/vmlinux"));
        assert_eq!(config.initrd, Some(PathBuf::from("/boot/initrd.cpio")));
        assert_eq!(config.vcpus, 2);
        assert_eq!(config.memory_mib, 512);
        assert_eq!(config.serial, SerialTarget::File("/tmp/console.log".into()));
        assert_eq!(config.console_max_bytes, 65536);
        assert_eq!(config.cpu_template, CpuTemplate::EmulatedSupervisor);
        assert!(config.rng);
        let devices = &config.devices;
        assert_eq!(devices.disks.len(), 2);
        assert!(devices.disks[0].readonly && !devices.disks[1].readonly);
        assert_eq!(devices.nets[0].mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(devices.vsock.as_ref().map(|v| v.cid), Some(3));
        assert_eq!(devices.fs[0].dir, PathBuf::from("/srv/rootfs"));
    }

    #[test]
    fn test_device_tables_are_checked_like_flags() {
        let bad = [
            ("[[net]]\ntap = \"a/b\"", "Invalid tap name"),
            ("[[net]]\ntap = \"t\"\nmac = \"xx\"", "Invalid MAC address"),
            ("[vsock]\ncid = 1\nsocket = \"/s\"", "Invalid vsock CID"),
            ("[[fs]]\ntag = \"\"\ndir = \"/d\"", "Invalid virtio-fs tag"),
            ("[[disk]]\npath = \"/i\"\nsize = 3", "unknown field"),
            ("[[disk]]\nreadonly = true", "missing field"),
        ];
        for (text, needle) in bad {
            let err = ConfigLayer::from_toml(&format!("kernel = \"/k\"\n{text}"))
                .and_then(|layer| layer.validate(1024).map(|_| ()))
                .unwrap_err();
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
        let many = ConfigLayer {
            disk: Some(vec!["path=/i".parse().unwrap(); MAX_VIRTIO_DEVICES]),
            rng: Some(true),
            ..layer_with_kernel()
        };
        let err = many.validate(1024).unwrap_err();
        assert!(
            err.to_string().contains("Too many virtio devices: 20"),
            "{err}"
        );
    }

    #[test]
    fn test_flags_override_the_file() {
        let file = ConfigLayer {
            vcpus: Some(4),
            memory: Some(128),
            ..layer_with_kernel()
        };
        let flags = ConfigLayer {
            vcpus: Some(2),
            ..Default::default()
        };
        let config = file.overridden_by(flags).validate(1024).unwrap();
        assert_eq!((config.vcpus, config.memory_mib), (2, 128));
        assert_eq!(config.kernel, PathBuf::from("/k"));
    }

    #[test]
    fn test_unknown_key_is_named() {
        let err = ConfigLayer::from_toml("kernel = \"/k\"\nmemroy = 5\n").unwrap_err();
        assert!(err.to_string().contains("memroy"), "{err}");
    }

    #[test]
    fn test_wrong_types_and_values_are_named() {
        let err = ConfigLayer::from_toml("vcpus = \"two\"").unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let err = ConfigLayer::from_toml("serial = \"tty\"").unwrap_err();
        assert!(err.to_string().contains("tty"), "{err}");
        let err = ConfigLayer::from_toml("cpu-template = \"fast\"").unwrap_err();
        assert!(err.to_string().contains("fast"), "{err}");
        let err = ConfigLayer::from_toml("rng = \"yes\"").unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
    }

    #[test]
    fn test_range_checks() {
        let with = |vcpus, memory| ConfigLayer {
            vcpus: Some(vcpus),
            memory: Some(memory),
            ..layer_with_kernel()
        };
        assert!(matches!(
            with(0, 64).validate(1024),
            Err(ConfigError::Vcpus(0))
        ));
        assert!(matches!(
            with(33, 64).validate(1024),
            Err(ConfigError::Vcpus(33))
        ));
        assert!(with(32, 64).validate(1024).is_ok());
        assert!(matches!(
            with(1, 31).validate(1024),
            Err(ConfigError::MemoryTooSmall(31))
        ));
        assert!(matches!(
            with(1, 2048).validate(1024),
            Err(ConfigError::MemoryTooLarge {
                asked: 2048,
                host: 1024
            })
        ));
        assert!(matches!(
            ConfigLayer::default().validate(1024),
            Err(ConfigError::NoKernel)
        ));
    }

    #[test]
    fn test_serial_targets_parse() {
        assert_eq!(
            "stdout".parse::<SerialTarget>().unwrap(),
            SerialTarget::Stdout
        );
        assert_eq!("none".parse::<SerialTarget>().unwrap(), SerialTarget::None);
        assert_eq!(
            "file:/x".parse::<SerialTarget>().unwrap(),
            SerialTarget::File("/x".into())
        );
        assert!("file:".parse::<SerialTarget>().is_err());
        assert!("stderr".parse::<SerialTarget>().is_err());
    }

    #[test]
    fn test_host_memory_is_known() {
        assert!(host_memory_mib() > 0);
    }
}
