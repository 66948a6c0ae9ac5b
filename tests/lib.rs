// SPDX-License-Identifier: Apache-2.0
//! Helpers shared by vmpod's cross-component tests: finding the built
//! artifacts, and running a command with a deadline.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Environment variable naming the guest kernel directory (`vmlinux`,
/// `bzImage`), as `scripts/setup.sh` writes it.
pub const KERNEL_DIR_ENV: &str = "VMPOD_KERNEL_DIR";
/// Environment variable naming the test initrd.
pub const TEST_INITRD_ENV: &str = "VMPOD_TEST_INITRD";

/// The guest artifacts a boot test needs, or why they are missing.
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    /// ELF vmlinux (with the PVH note).
    pub vmlinux: PathBuf,
    /// bzImage of the same build.
    pub bzimage: PathBuf,
    /// Uncompressed cpio with vmpod-test-init as /init.
    pub test_initrd: PathBuf,
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
        };
        for path in [
            &artifacts.vmlinux,
            &artifacts.bzimage,
            &artifacts.test_initrd,
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

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code, `None` if killed by a signal.
    pub status: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether the deadline killed it.
    pub timed_out: bool,
}

/// Runs `cmd` to completion or until `timeout`, when it is killed.
///
/// # Panics
/// If the command cannot be spawned.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let readers = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .map(|pipe| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    });
    let mut timed_out = false;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let [stdout, stderr] = readers.map(|r| r.join().unwrap_or_default());
    Outcome {
        status: status.code(),
        stdout,
        stderr,
        elapsed: start.elapsed(),
        timed_out,
    }
}
