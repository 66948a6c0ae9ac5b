// SPDX-License-Identifier: Apache-2.0
//! What a snapshot was taken of, so that a restore under another kernel,
//! initrd, memory size, vCPU count, CPU template or device set is refused
//! before anything of it is loaded: the saved state only makes sense to
//! the exact guest and machine that produced it.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::arch::cpuid::CpuTemplate;
use crate::config::VmConfig;

/// The inputs a snapshot is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotIdentity {
    /// The vmpod release that wrote it.
    pub vmpod_version: String,
    /// SHA-256 of the kernel image, hex.
    pub kernel_sha256: String,
    /// SHA-256 of the initrd, hex, if there was one.
    pub initrd_sha256: Option<String>,
    /// The kernel command line as configured (vmpod's additions aside).
    pub cmdline: String,
    /// Guest memory.
    pub memory_mib: u64,
    /// vCPU count.
    pub vcpus: u8,
    /// The CPU template in effect (never `auto`).
    pub cpu_template: String,
    /// The virtio devices, in slot order, by kind (`block`, `net`,
    /// `vsock`, `fs:TAG`, `rng`).
    pub devices: Vec<String>,
}

/// Why an identity cannot be worked out, or does not match.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The kernel or initrd cannot be read to hash it.
    #[error("Cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The open or read error.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot belongs to another VM.
    #[error("the snapshot was taken with {what} {snapshot}, this VM has {this}")]
    Mismatch {
        /// Which input differs.
        what: &'static str,
        /// The snapshot's value.
        snapshot: String,
        /// This VM's value.
        this: String,
    },
}

fn sha256_file(path: &Path) -> Result<String, IdentityError> {
    let read_error = |source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// The device kinds of `config` in the order the builder places them.
pub fn device_kinds(config: &VmConfig) -> Vec<String> {
    let devices = &config.devices;
    let mut kinds: Vec<String> = Vec::new();
    kinds.extend(devices.disks.iter().map(|_| "block".to_string()));
    kinds.extend(devices.nets.iter().map(|_| "net".to_string()));
    kinds.extend(devices.vsock.iter().map(|_| "vsock".to_string()));
    kinds.extend(devices.fs.iter().map(|share| format!("fs:{}", share.tag)));
    if config.rng {
        kinds.push("rng".to_string());
    }
    kinds
}

impl SnapshotIdentity {
    /// The identity of the VM `config` describes, with CPU template
    /// `template` resolved. Hashes the kernel, then the initrd, on the
    /// calling thread: the API thread's seccomp filter lets it start none.
    ///
    /// # Errors
    /// [`IdentityError::Read`] when an image cannot be read.
    pub fn of(config: &VmConfig, template: CpuTemplate) -> Result<Self, IdentityError> {
        let kernel_sha256 = sha256_file(&config.kernel)?;
        let initrd_sha256 = config.initrd.as_deref().map(sha256_file).transpose()?;
        Ok(Self::with_hashes(
            config,
            template,
            kernel_sha256,
            initrd_sha256,
        ))
    }

    /// [`SnapshotIdentity::of`] with the two images hashed side by side,
    /// for a restore: hashing is most of its start-up (tens of MiB). Runs
    /// before any seccomp filter is installed.
    ///
    /// # Errors
    /// [`IdentityError::Read`] when an image cannot be read.
    pub fn of_hashing_in_parallel(
        config: &VmConfig,
        template: CpuTemplate,
    ) -> Result<Self, IdentityError> {
        let (kernel_sha256, initrd_sha256) = std::thread::scope(|s| {
            let initrd = s.spawn(|| config.initrd.as_deref().map(sha256_file).transpose());
            let kernel = sha256_file(&config.kernel);
            let initrd = initrd.join().unwrap_or_else(|_| {
                Err(IdentityError::Read {
                    path: config.initrd.clone().unwrap_or_default(),
                    source: std::io::Error::other("the hashing thread panicked"),
                })
            });
            (kernel, initrd)
        });
        Ok(Self::with_hashes(
            config,
            template,
            kernel_sha256?,
            initrd_sha256?,
        ))
    }

    fn with_hashes(
        config: &VmConfig,
        template: CpuTemplate,
        kernel_sha256: String,
        initrd_sha256: Option<String>,
    ) -> Self {
        SnapshotIdentity {
            vmpod_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_sha256,
            initrd_sha256,
            cmdline: config.cmdline.clone(),
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            cpu_template: template.to_string(),
            devices: device_kinds(config),
        }
    }

    /// Checks that a snapshot with identity `self` can be restored as the
    /// VM whose identity is `this`.
    ///
    /// # Errors
    /// [`IdentityError::Mismatch`] naming the first input that differs.
    pub fn check(&self, this: &SnapshotIdentity) -> Result<(), IdentityError> {
        let mismatch = |what, snapshot: &dyn std::fmt::Debug, this: &dyn std::fmt::Debug| {
            Err(IdentityError::Mismatch {
                what,
                snapshot: format!("{snapshot:?}"),
                this: format!("{this:?}"),
            })
        };
        if self.vmpod_version != this.vmpod_version {
            return mismatch("vmpod", &self.vmpod_version, &this.vmpod_version);
        }
        if self.kernel_sha256 != this.kernel_sha256 {
            return mismatch("kernel sha256", &self.kernel_sha256, &this.kernel_sha256);
        }
        if self.initrd_sha256 != this.initrd_sha256 {
            return mismatch("initrd sha256", &self.initrd_sha256, &this.initrd_sha256);
        }
        if self.cmdline != this.cmdline {
            return mismatch("kernel command line", &self.cmdline, &this.cmdline);
        }
        if self.memory_mib != this.memory_mib {
            return mismatch("memory MiB", &self.memory_mib, &this.memory_mib);
        }
        if self.vcpus != this.vcpus {
            return mismatch("vCPUs", &self.vcpus, &this.vcpus);
        }
        if self.cpu_template != this.cpu_template {
            return mismatch("CPU template", &self.cpu_template, &this.cpu_template);
        }
        if self.devices != this.devices {
            return mismatch("devices", &self.devices, &this.devices);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> SnapshotIdentity {
        SnapshotIdentity {
            vmpod_version: "0.1.0".into(),
            kernel_sha256: "aa".into(),
            initrd_sha256: Some("bb".into()),
            cmdline: "console=ttyS0".into(),
            memory_mib: 256,
            vcpus: 1,
            cpu_template: "host".into(),
            devices: vec!["vsock".into(), "rng".into()],
        }
    }

    #[test]
    fn test_each_input_is_checked_and_named() {
        let snapshot = identity();
        assert!(snapshot.check(&identity()).is_ok());
        type Change = fn(&mut SnapshotIdentity);
        let cases: [(Change, &str); 8] = [
            (|i| i.vmpod_version = "0.2.0".into(), "vmpod \"0.1.0\""),
            (|i| i.kernel_sha256 = "cc".into(), "kernel sha256 \"aa\""),
            (|i| i.initrd_sha256 = None, "initrd sha256 Some(\"bb\")"),
            (|i| i.cmdline = "quiet".into(), "kernel command line"),
            (|i| i.memory_mib = 512, "memory MiB 256, this VM has 512"),
            (|i| i.vcpus = 2, "vCPUs 1, this VM has 2"),
            (
                |i| i.cpu_template = "emulated-supervisor".into(),
                "CPU template",
            ),
            (
                |i| {
                    i.devices.pop();
                },
                "devices",
            ),
        ];
        for (change, expected) in cases {
            let mut this = identity();
            change(&mut this);
            let message = snapshot.check(&this).unwrap_err().to_string();
            assert!(message.contains(expected), "{message}");
        }
    }

    #[test]
    fn test_parallel_hashing_gives_the_same_identity() {
        let dir = std::env::temp_dir().join(format!("vmpod-identity-both-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("kernel"), b"kernel").unwrap();
        std::fs::write(dir.join("initrd"), b"initrd").unwrap();
        let config = crate::config::ConfigLayer {
            kernel: Some(dir.join("kernel")),
            initrd: Some(dir.join("initrd")),
            ..Default::default()
        }
        .validate(1024)
        .unwrap();
        let one_thread = SnapshotIdentity::of(&config, CpuTemplate::Host).unwrap();
        let two_threads =
            SnapshotIdentity::of_hashing_in_parallel(&config, CpuTemplate::Host).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(one_thread, two_threads);
        assert_ne!(
            one_thread.initrd_sha256,
            Some(one_thread.kernel_sha256.clone())
        );
    }

    #[test]
    fn test_sha256_of_a_file() {
        let path = std::env::temp_dir().join(format!("vmpod-identity-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            sha256_file(&path),
            Err(IdentityError::Read { .. })
        ));
    }
}
