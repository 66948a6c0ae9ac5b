// SPDX-License-Identifier: Apache-2.0
//! The installer end to end under the real containerd (Debian's 1.6):
//! `vmpod install` into a temporary root whose containerd config enables
//! the CRI plugin; containerd started with exactly that config loads the
//! CRI plugin with the `vmpod` handler; the DaemonSet's OCI archive
//! imports; a container of it runs in a pod VM through the installed shim,
//! which reads the installed `/etc/vmpod/config.toml` and boots the
//! installed kernel, initrd, `vmpod-vm` and `vmpod-jailer`; and uninstall
//! then gives the root back byte for byte.
//!
//! containerd runs in a mount namespace of its own where the root's
//! `/usr/local` is bound over the host's, so that the node paths the
//! installer wrote (`/usr/local/bin/...`, `/usr/local/share/vmpod/...`)
//! resolve to what it installed, and the host's own are not touched.

// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, guest_artifacts, repo, skip, stripped_binaries, Fixture};

/// containerd answers within seconds; the bound is for loaded hosts.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// One pod VM's boot and run, on hosts that emulate the guest kernel.
const RUN_TIMEOUT: Duration = Duration::from_secs(900);
const NAMESPACE: &str = "vmpod-inst";

/// containerd and what it started, stopped on drop.
struct Running {
    child: Child,
    address: PathBuf,
}

impl Running {
    fn ctr(&self, args: &[&str], timeout: Duration) -> vmpod_sys::command::Outcome {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .args(["--namespace", NAMESPACE])
            .args(args);
        vmpod_sys::command::run_with_timeout(&mut cmd, None, timeout).unwrap()
    }

    /// Shims of this containerd (they outlive it when it is killed).
    fn shims(&self) -> Vec<i32> {
        let address = self.address.display().to_string();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    cmdline.starts_with("containerd-shim") && cmdline.contains(&address)
                })
            })
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: a signal to our own, unreaped child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none()
            && start.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.shims() {
            // SAFETY: kill(2) on a pid; the shim's VM dies with it.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The containerd config before install: its own root, state and sockets
/// under `work`, the CRI plugin on (with nothing it would write elsewhere).
fn containerd_config(work: &Path) -> String {
    format!(
        "# containerd for the installer's test.\nversion = 2\nroot = \"{w}/containerd/root\"\nstate = \"{w}/containerd/state\"\n\
         disabled_plugins = [\"io.containerd.internal.v1.opt\", \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.zfs\"]\n\n\
         [grpc]\n  address = \"{w}/sock/containerd.sock\"\n\n[ttrpc]\n  address = \"{w}/sock/containerd.sock.ttrpc\"\n\n\
         [plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    # No CNI here: the test's container uses none.\n    \
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n      conf_dir = \"{w}/cni\"\n",
        w = work.display()
    )
}

fn prerequisites(fixture: &Fixture) -> Result<(PathBuf, PathBuf), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root".into());
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm is not usable: {e}"))?;
    for tool in ["containerd", "ctr", "unshare"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output();
        if !found.is_ok_and(|out| out.status.success()) {
            return Err(format!("{tool} is not installed"));
        }
    }
    let guest = guest_artifacts()?;
    stripped_binaries(&fixture.artifacts())?;
    Ok(guest)
}

#[test]
fn test_containerd_runs_a_pod_through_the_installed_vmpod() {
    let test = "test_containerd_runs_a_pod_through_the_installed_vmpod";
    let fixture = Fixture::new("ctr");
    let (kernel_dir, initrd) = match prerequisites(&fixture) {
        Ok(guest) => guest,
        Err(why) => return skip(test, why),
    };
    for (name, from) in [
        ("vmlinux", kernel_dir.join("vmlinux")),
        ("vmpod-agent-initrd.cpio", initrd.clone()),
    ] {
        fs::copy(&from, fixture.artifacts().join(name)).unwrap();
    }
    let work = fixture.dir.clone();
    fs::create_dir_all(work.join("sock")).unwrap();
    fixture.write(
        "/etc/containerd/config.toml",
        &containerd_config(&work),
        0o644,
    );
    // An admin's shim config: install keeps these keys.
    let pods = work.join("pods");
    fixture.write(
        "/etc/vmpod/config.toml",
        &format!("state-dir = \"{}\"\nagent-timeout = 600\n", pods.display()),
        0o644,
    );
    let before = fixture.snapshot();
    assert_ok(&fixture.install(&[]));

    let root = fixture.root();
    let script = format!(
        "mount --bind '{}/usr/local' /usr/local && exec containerd --config '{}/etc/containerd/config.toml'",
        root.display(),
        root.display()
    );
    let log = work.join("containerd.log");
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("PATH", "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .env("VMPOD_CONFIG", root.join("etc/vmpod/config.toml"))
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let containerd = Running {
        child,
        address: work.join("sock/containerd.sock"),
    };
    let log_text = || fs::read_to_string(&log).unwrap_or_default();
    let start = Instant::now();
    while containerd.ctr(&["version"], Duration::from_secs(5)).status != Some(0) {
        assert!(
            start.elapsed() < START_TIMEOUT,
            "containerd did not start: {}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The CRI plugin loaded the installed config, handler vmpod included.
    let plugins = containerd.ctr(&["plugins", "ls"], Duration::from_secs(10));
    let cri = plugins
        .stdout
        .lines()
        .find(|line| line.contains("io.containerd.grpc.v1") && line.contains(" cri "));
    assert!(
        cri.is_some_and(|line| line.trim_end().ends_with("ok")),
        "{}\n{}",
        plugins.stdout,
        log_text()
    );

    // The DaemonSet's image: built, imported, and run in a pod VM.
    let archive = work.join("vmpod-deploy.tar");
    let out = Command::new(repo().join("deploy/build-image.sh"))
        .arg(&archive)
        .env("VMPOD_BIN_DIR", fixture.artifacts())
        .env("VMPOD_KERNEL_DIR", &kernel_dir)
        .env("VMPOD_AGENT_INITRD", &initrd)
        .output()
        .unwrap();
    assert_ok(&out);
    let import = containerd.ctr(
        &["images", "import", archive.to_str().unwrap()],
        Duration::from_secs(120),
    );
    assert_eq!(
        import.status,
        Some(0),
        "{} {}",
        import.stdout,
        import.stderr
    );
    let images = containerd.ctr(&["images", "ls", "-q"], Duration::from_secs(10));
    assert!(
        images
            .stdout
            .lines()
            .any(|l| l == "localhost/vmpod-deploy:latest"),
        "{}",
        images.stdout
    );
    let run = containerd.ctr(
        &[
            "run",
            "--rm",
            "--runtime",
            "io.containerd.vmpod.v2",
            "localhost/vmpod-deploy:latest",
            "vmpod-inst-1",
            "/bin/busybox",
            "sh",
            "-c",
            "echo hello from the pod VM; /bin/busybox cat /proc/version; exit 7",
        ],
        RUN_TIMEOUT,
    );
    assert_eq!(
        run.status,
        Some(7),
        "stdout {}\nstderr {}\n{}",
        run.stdout,
        run.stderr,
        log_text()
    );
    assert!(
        run.stdout.contains("hello from the pod VM"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("Linux version"), "{}", run.stdout);
    assert!(
        containerd.shims().is_empty(),
        "a shim outlived ctr run --rm"
    );
    drop(containerd);

    let out = fixture.uninstall();
    assert_ok(&out);
    let after = fixture.snapshot();
    assert_eq!(after, before, "uninstall did not give the root back");
    let left: Vec<_> = fs::read_dir(&pods)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|ns| fs::read_dir(ns).is_ok_and(|mut d| d.next().is_none())),
        "pods left: {left:?}"
    );
}
