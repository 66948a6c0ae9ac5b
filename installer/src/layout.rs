// SPDX-License-Identifier: Apache-2.0
//! Where vmpod is installed, as paths on the node (absolute, as the node
//! sees them) and beneath the root being installed into.

use std::path::{Path, PathBuf};

/// Where the executables go: on containerd's `PATH`, so that it finds the
/// shim by its runtime name.
pub const BIN_DIR: &str = "/usr/local/bin";
/// Where the guest kernel and the agent initrd go.
pub const SHARE_DIR: &str = "/usr/local/share/vmpod";
/// The installer's own state: the install record and the backups of the
/// files it replaced.
pub const STATE_DIR: &str = "/var/lib/vmpod/installer";
/// The install record, read by `uninstall`.
pub const RECORD: &str = "/var/lib/vmpod/installer/record.toml";
/// The backups of the files install replaced, under their own paths.
pub const BACKUP_DIR: &str = "/var/lib/vmpod/installer/backup";
/// Copies of vmpod's own files that a re-install replaces, kept until it
/// has finished so that a failed re-install can put them back.
pub const ROLLBACK_DIR: &str = "/var/lib/vmpod/installer/rollback";

/// The executables, by file name: the shim, the VMM, its jailer and the
/// installer itself.
pub const BINARIES: [&str; 4] = [
    "containerd-shim-vmpod-v2",
    "vmpod-vm",
    "vmpod-jailer",
    "vmpod",
];
/// The guest kernel's file name, as guest-kernel/build.sh makes it.
pub const KERNEL: &str = "vmlinux";
/// The agent initrd's file name, as rootfs/build-agent-initrd.sh makes it.
pub const INITRD: &str = "vmpod-agent-initrd.cpio";

/// A root directory and the node paths beneath it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root(PathBuf);

impl Root {
    /// The root at `dir` (`/` for the running system).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Root(dir.into())
    }

    /// The root directory itself.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// Whether this is the running system's own root.
    pub fn is_system(&self) -> bool {
        self.0 == Path::new("/")
    }

    /// `node_path` (absolute, as the node sees it) beneath this root.
    pub fn join(&self, node_path: impl AsRef<Path>) -> PathBuf {
        let relative = node_path
            .as_ref()
            .strip_prefix("/")
            .unwrap_or(node_path.as_ref());
        self.0.join(relative)
    }
}

/// The node path of an installed executable.
pub fn binary(name: &str) -> PathBuf {
    Path::new(BIN_DIR).join(name)
}

/// The node path of the installed guest kernel.
pub fn kernel() -> PathBuf {
    Path::new(SHARE_DIR).join(KERNEL)
}

/// The node path of the installed agent initrd.
pub fn initrd() -> PathBuf {
    Path::new(SHARE_DIR).join(INITRD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_node_paths_land_beneath_the_root() {
        let root = Root::new("/host");
        assert_eq!(
            root.join(binary("vmpod-vm")),
            Path::new("/host/usr/local/bin/vmpod-vm")
        );
        assert_eq!(root.join("etc"), Path::new("/host/etc"));
        assert!(!root.is_system());
        assert!(Root::new("/").is_system());
        assert_eq!(Root::new("/").join(kernel()), kernel());
    }
}
