// SPDX-License-Identifier: Apache-2.0
//! Helpers shared by vmpod's cross-component tests: finding the built
//! artifacts, running a command with a deadline, a real containerd
//! ([`containerd`]) and its CRI path ([`cri`]).

pub mod bench;
pub mod containerd;
pub mod cri;
pub mod events;
pub mod guest_checks;
pub mod host_faults;
pub mod netns;
pub mod vm_api;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub use vmpod_sys::command::Outcome;

/// Environment variable naming the guest kernel directory (`vmlinux`,
/// `bzImage`), as `scripts/setup.sh` writes it.
pub const KERNEL_DIR_ENV: &str = "VMPOD_KERNEL_DIR";
/// Environment variable naming the test initrd.
pub const TEST_INITRD_ENV: &str = "VMPOD_TEST_INITRD";
/// Environment variable naming the static test init binary (for root
/// file system images and shared directories).
pub const TEST_INIT_ENV: &str = "VMPOD_TEST_INIT";

/// The guest artifacts a boot test needs, or why they are missing.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    /// ELF vmlinux (with the PVH note).
    pub vmlinux: PathBuf,
    /// bzImage of the same build.
    pub bzimage: PathBuf,
    /// Uncompressed cpio with vmpod-test-init as /init.
    pub test_initrd: PathBuf,
    /// The static vmpod-test-init binary.
    pub test_init: PathBuf,
}

impl GuestArtifacts {
    /// Reads the artifact paths from the environment and checks they
    /// exist; the error says what to run to make them.
    ///
    /// # Errors
    /// A message naming the missing artifact.
    pub fn from_env() -> Result<Self, String> {
        let var = |name: &str| {
            std::env::var_os(name).map(PathBuf::from).ok_or_else(|| {
                format!(
                    "{name} is not set (run the tests through ./test.sh, which builds the guest)"
                )
            })
        };
        let kernel_dir = var(KERNEL_DIR_ENV)?;
        let artifacts = GuestArtifacts {
            vmlinux: kernel_dir.join("vmlinux"),
            bzimage: kernel_dir.join("bzImage"),
            test_initrd: var(TEST_INITRD_ENV)?,
            test_init: var(TEST_INIT_ENV)?,
        };
        for path in [
            &artifacts.vmlinux,
            &artifacts.bzimage,
            &artifacts.test_initrd,
            &artifacts.test_init,
        ] {
            if !path.is_file() {
                return Err(format!("{} does not exist", path.display()));
            }
        }
        Ok(artifacts)
    }
}

/// The `vmpod-vm` binary of this build (next to the test's `deps/`).
///
/// # Errors
/// A message if it was not built.
pub fn vmpod_vm_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or("cannot locate the target directory")?;
    let bin = profile_dir.join("vmpod-vm");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} was not built (cargo build --workspace)",
            bin.display()
        ))
    }
}

/// Runs `cmd` to completion or until `timeout`, when it is killed
/// ([`vmpod_sys::command::run_with_timeout`] without input).
///
/// # Panics
/// If the command cannot be spawned.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Outcome {
    run_with_input(cmd, None, timeout)
}

/// Like [`run_with_timeout`], with `input` (if any) as the command's
/// standard input, which is closed after it.
///
/// # Panics
/// If the command cannot be spawned.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Outcome {
    vmpod_sys::command::run_with_timeout(cmd, input, timeout).expect("spawn")
}

/// Writes a guest root file system tree to `dir`: `/init` (the test init),
/// the mount points it uses, and a `from-host.txt` the virtio-fs check
/// reads.
///
/// # Errors
/// The first I/O error.
pub fn write_root_tree(dir: &std::path::Path, test_init: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for sub in ["dev", "proc", "sys", "mnt", "tmp"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let init = dir.join("init");
    std::fs::copy(test_init, &init)?;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(dir.join("from-host.txt"), "written by the host\n")
}

/// Makes an ext4 image of `size_mib` MiB at `image` holding the tree at
/// `dir` (`mkfs.ext4 -d`).
///
/// # Errors
/// A message with mkfs's output if it fails.
pub fn make_ext4_image(
    dir: &std::path::Path,
    image: &std::path::Path,
    size_mib: u32,
) -> Result<(), String> {
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(|e| format!("cannot run mkfs.ext4: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A file's content inside an ext4 image, read with `debugfs` (no mount).
///
/// # Errors
/// A message if debugfs fails or the file is missing.
pub fn read_ext4_file(image: &std::path::Path, path: &str) -> Result<String, String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(image)
        .output()
        .map_err(|e| format!("cannot run debugfs: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && !text.is_empty() {
        Ok(text)
    } else {
        Err(format!(
            "debugfs cat {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The guest artifacts for `test`, or `None` after printing why the test
/// skips: no usable /dev/kvm, or (outside ./test.sh) no built guest.
///
/// # Panics
/// Under `VMPOD_REQUIRE_GUEST` (set by ./test.sh, which builds the guest),
/// a missing artifact is a failure, not a skip.
pub fn guest_or_skip(test: &str) -> Option<GuestArtifacts> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        eprintln!("skipped {test}: /dev/kvm is not usable here: {e}");
        return None;
    }
    match GuestArtifacts::from_env() {
        Ok(artifacts) => Some(artifacts),
        Err(e) => {
            assert!(
                std::env::var_os("VMPOD_REQUIRE_GUEST").is_none(),
                "{test}: {e}"
            );
            eprintln!("skipped {test}: {e}");
            None
        }
    }
}
