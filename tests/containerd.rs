// SPDX-License-Identifier: Apache-2.0
//! A real containerd (Debian's 1.6) of its own for a test or a benchmark:
//! its root, state, sockets and log in a fresh temporary directory, the
//! vmpod shim on its PATH, a busybox image built without network, and a
//! teardown that leaves no process, mount or directory behind, even when
//! the shim under test misbehaves.
//!
//! Parallel tests each get their own containerd but share the host's
//! cgroup paths (`/vmpod-test/<id>`), runc root and `/run/containerd/s`:
//! give containers ids unique across tests.

mod host;
mod image;
mod teardown;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use host::{
    containerd_or_skip, count_mounts_below, mounts_below, processes_named, skip_reason,
    unix_sockets_below,
};
pub use image::busybox_archive;

use crate::{run_with_input, run_with_timeout, Outcome};

/// The containerd namespace all of [`Containerd::ctr`]'s commands use.
pub const NAMESPACE: &str = "vmpod-test";
/// The runtime name under which containerd finds the vmpod shim.
pub const RUNTIME: &str = "io.containerd.vmpod.v2";
/// The executable name containerd derives from [`RUNTIME`] and looks up on
/// its PATH.
pub const SHIM_BINARY: &str = "containerd-shim-vmpod-v2";
/// The image [`Containerd::import_busybox`] makes.
pub const BUSYBOX_IMAGE: &str = "docker.io/vmpod/busybox:test";
/// Debian's static busybox (package busybox-static), the image's only
/// executable.
pub const BUSYBOX: &str = "/bin/busybox";

/// containerd answers within a second; the bound is for loaded CI hosts.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long containerd gets to exit on SIGTERM before SIGKILL.
const TERM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the tasks left at [`Containerd::stop`] get to be deleted
/// through containerd (their shims then clean up as in production).
const TASK_CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long killed processes get to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// containerd's default state directory, compiled into ctr and the shims:
/// shim sockets (`s/`), ctr's FIFOs (`fifo/`) and runc's state (`runc/`)
/// go there even though our containerd's state is elsewhere.
const HOST_STATE: &str = "/run/containerd";
/// Longest path of a Unix socket (`sun_path` less its NUL).
const MAX_SOCKET_PATH: usize = 107;
/// containerd's CRI plugin, disabled unless [`ContainerdOptions::cri`].
pub const CRI_PLUGIN: &str = "io.containerd.grpc.v1.cri";
/// Plugins the tests do not use (CRI's unless asked for), disabled so that containerd starts fast
/// and touches nothing outside its directories (`opt` would create
/// `/opt/containerd`). The v1 runtime stays: 1.6's tasks service
/// requires it.
const DISABLED_PLUGINS: [&str; 10] = [
    CRI_PLUGIN,
    "io.containerd.internal.v1.opt",
    "io.containerd.internal.v1.restart",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.native",
    "io.containerd.snapshotter.v1.zfs",
];

/// How to start [`Containerd`].
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// The vmpod shim, linked as [`SHIM_BINARY`] into a directory put first
    /// on containerd's PATH.
    pub shim: Option<PathBuf>,
    /// Extra environment of containerd, which passes its environment on to
    /// the shims (the vmpod shim reads `VMPOD_CONFIG`).
    pub env: Vec<(String, String)>,
    /// Log at info level instead of debug, for benchmarks: containerd then
    /// also does not ask the shims for debug logs.
    pub quiet: bool,
    /// containerd's CRI plugin, enabled with these TOML lines appended to
    /// the config (its `[plugins."io.containerd.grpc.v1.cri"]` tables;
    /// [`crate::cri`] writes them); `None` disables it.
    pub cri: Option<String>,
}

/// A running containerd, stopped (with everything it started) on drop.
#[derive(Debug)]
pub struct Containerd {
    dir: PathBuf,
    address: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl Containerd {
    /// containerd with this build's vmpod shim, configured for a run under
    /// `work`: the guest kernel and agent initrd that `./test.sh` builds
    /// (named by the environment), pods in `work/pods`, a generous
    /// `agent-timeout`, then the TOML lines `extra` (a key set there
    /// replaces its default).
    ///
    /// # Errors
    /// A message naming what is missing or failed.
    pub fn with_vmpod_shim(work: &Path, extra: &str, quiet: bool) -> Result<Containerd, String> {
        Containerd::start(Containerd::vmpod_shim_options(work, extra, quiet)?)
    }

    /// The options [`Containerd::with_vmpod_shim`] starts containerd with
    /// (the shim's config written to `work/config.toml`), for a caller
    /// that adds to them.
    ///
    /// # Errors
    /// A message naming what is missing or failed.
    pub fn vmpod_shim_options(
        work: &Path,
        extra: &str,
        quiet: bool,
    ) -> Result<ContainerdOptions, String> {
        let guest = crate::GuestArtifacts::from_env()?;
        let initrd = std::env::var_os("VMPOD_AGENT_INITRD")
            .map(PathBuf::from)
            .ok_or("VMPOD_AGENT_INITRD is not set (./test.sh builds the agent initrd)")?;
        let shim = crate::vmpod_vm_binary()?.with_file_name(SHIM_BINARY);
        if !shim.is_file() {
            return Err(format!("{} is not built", shim.display()));
        }
        fs::create_dir_all(work).map_err(|e| format!("mkdir {}: {e}", work.display()))?;
        let config = work.join("config.toml");
        let defaults = [
            (
                "kernel",
                format!("{:?}", guest.vmlinux.display().to_string()),
            ),
            ("initrd", format!("{:?}", initrd.display().to_string())),
            (
                "state-dir",
                format!("{:?}", work.join("pods").display().to_string()),
            ),
            ("agent-timeout", "600".to_string()),
        ];
        let set_by_extra = |key: &str| {
            extra
                .lines()
                .any(|line| line.split('=').next().map(str::trim) == Some(key))
        };
        let mut toml = String::new();
        for (key, value) in defaults.iter().filter(|(key, _)| !set_by_extra(key)) {
            toml.push_str(&format!("{key} = {value}\n"));
        }
        toml.push_str(extra);
        write_file(&config, toml.as_bytes())?;
        Ok(ContainerdOptions {
            shim: Some(shim),
            env: vec![("VMPOD_CONFIG".into(), config.display().to_string())],
            quiet,
            cri: None,
        })
    }

    /// Starts containerd in a fresh temporary directory and waits until it
    /// answers.
    ///
    /// # Errors
    /// A message if the directory cannot be made, containerd cannot be
    /// started or does not answer within 30 s (with its log's tail).
    pub fn start(opts: ContainerdOptions) -> Result<Containerd, String> {
        let dir = unique_dir()?;
        // From here on, drop cleans up whatever the start left.
        let mut containerd = Containerd {
            address: dir.join("sock/containerd.sock"),
            dir,
            child: None,
            stopped: false,
        };
        containerd.spawn(&opts)?;
        containerd.wait_ready()?;
        Ok(containerd)
    }

    fn spawn(&mut self, opts: &ContainerdOptions) -> Result<(), String> {
        let ttrpc = self.ttrpc_address();
        if ttrpc.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(format!(
                "{} is too long for a Unix socket (set TMPDIR to a shorter directory)",
                ttrpc.display()
            ));
        }
        let bin = self.dir.join("bin");
        for sub in [
            bin.as_path(),
            &self.root(),
            &self.state(),
            &self.dir.join("sock"),
        ] {
            fs::create_dir_all(sub).map_err(|e| format!("mkdir {}: {e}", sub.display()))?;
        }
        if let Some(shim) = &opts.shim {
            let shim =
                fs::canonicalize(shim).map_err(|e| format!("shim {}: {e}", shim.display()))?;
            std::os::unix::fs::symlink(&shim, bin.join(SHIM_BINARY))
                .map_err(|e| format!("cannot link the shim: {e}"))?;
        }
        let config = self.dir.join("config.toml");
        fs::write(&config, self.config(opts)?)
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let log = fs::File::create(self.log_path())
            .map_err(|e| format!("cannot create containerd's log: {e}"))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot duplicate the log's descriptor: {e}"))?;
        let mut path = std::ffi::OsString::from(&bin);
        if let Some(inherited) = std::env::var_os("PATH") {
            path.push(":");
            path.push(inherited);
        }
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .arg("--address")
            .arg(&self.address)
            .env("PATH", path)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        self.child = Some(
            cmd.spawn()
                .map_err(|e| format!("cannot start containerd: {e}"))?,
        );
        Ok(())
    }

    fn config(&self, opts: &ContainerdOptions) -> Result<String, String> {
        let disabled = DISABLED_PLUGINS
            .iter()
            .filter(|p| opts.cri.is_none() || **p != CRI_PLUGIN)
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut config = format!(
            "version = 2\n\
             root = {root}\n\
             state = {state}\n\
             disabled_plugins = [{disabled}]\n\
             \n\
             [grpc]\n  address = {grpc}\n\
             \n\
             [ttrpc]\n  address = {ttrpc}\n\
             \n\
             [debug]\n  level = \"{level}\"\n",
            root = toml_path(&self.root())?,
            state = toml_path(&self.state())?,
            grpc = toml_path(&self.address)?,
            ttrpc = toml_path(&self.ttrpc_address())?,
            level = if opts.quiet { "info" } else { "debug" },
        );
        if let Some(cri) = &opts.cri {
            config.push('\n');
            config.push_str(cri);
        }
        Ok(config)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let mut version = Command::new("ctr");
            version.arg("--address").arg(&self.address).arg("version");
            let outcome = run_with_timeout(&mut version, Duration::from_secs(5));
            if outcome.status == Some(0) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "containerd exited with {status} at start; log:\n{}",
                        self.log_tail(40)
                    ));
                }
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "containerd did not answer on {} within {START_TIMEOUT:?} ({}); log:\n{}",
                    self.address.display(),
                    outcome.stderr.trim(),
                    self.log_tail(40)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The temporary directory holding everything of this containerd.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's gRPC socket (what `ctr --address` takes).
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// containerd's ttrpc socket, where shims publish events.
    pub fn ttrpc_address(&self) -> PathBuf {
        self.dir.join("sock/containerd.sock.ttrpc")
    }

    /// containerd's root directory (content, snapshots, metadata).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// containerd's state directory (bundles of running tasks).
    pub fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The bundle containerd makes for container `id` (its `config.json`,
    /// `rootfs`, the shim's `address`), there while the task exists.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.tasks_dir().join(id)
    }

    fn tasks_dir(&self) -> PathBuf {
        self.state()
            .join("io.containerd.runtime.v2.task")
            .join(NAMESPACE)
    }

    /// containerd's log (its own lines and those of the shims).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    /// The last `lines` lines of containerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        match fs::read(self.log_path()) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(no log: {e})"),
        }
    }

    /// `ctr --address SOCK --namespace vmpod-test ARGS`, not yet run: for
    /// a caller that wants it on its own terminal.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        self.ctr_command_in(NAMESPACE, args)
    }

    /// [`Containerd::ctr_command`] in containerd namespace `namespace`
    /// (CRI's is `k8s.io`).
    pub fn ctr_command_in(&self, namespace: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .args(["--namespace", namespace])
            .args(args);
        cmd
    }

    /// Runs `ctr --address SOCK --namespace vmpod-test ARGS` to completion,
    /// with no standard input.
    ///
    /// # Panics
    /// If ctr cannot be run at all (the prerequisites say it is there).
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in(NAMESPACE, args)
    }

    /// [`Containerd::ctr`] in containerd namespace `namespace`.
    ///
    /// # Panics
    /// If ctr cannot be run at all.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        self.ctr_command_in(namespace, args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ctr: {e}"))
    }

    /// Like [`Containerd::ctr`], with `input` as standard input and ctr
    /// killed after `timeout`.
    ///
    /// `ctr run` (1.6) loses an end of input that comes before its task is
    /// created (it sets up the CloseIO call only after `NewTask`), so
    /// `ctr run ... cat` never ends with short input; `ctr tasks exec`
    /// has no such race.
    ///
    /// # Panics
    /// If ctr cannot be run at all.
    pub fn ctr_with_input(&self, args: &[&str], input: &[u8], timeout: Duration) -> Outcome {
        run_with_input(&mut self.ctr_command(args), Some(input), timeout)
    }
}

/// A new directory under the system's temporary directory, canonical so
/// that it compares with the paths of /proc/self/mountinfo.
fn unique_dir() -> Result<PathBuf, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base =
        fs::canonicalize(std::env::temp_dir()).map_err(|e| format!("temporary directory: {e}"))?;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("vmpod-containerd-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier process with our pid.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("mkdir {}: {e}", dir.display())),
        }
    }
}

/// `path` as a TOML basic string.
fn toml_path(path: &Path) -> Result<String, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    Ok(format!(
        "\"{}\"",
        text.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// Writes `contents` to `path`; the error names the file.
fn write_file(path: &Path, contents: &[u8]) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_config_names_our_paths() {
        let containerd = Containerd {
            dir: PathBuf::from("/tmp/vmpod-containerd-x"),
            address: PathBuf::from("/tmp/vmpod-containerd-x/sock/containerd.sock"),
            child: None,
            stopped: true,
        };
        let config = containerd.config(&ContainerdOptions::default()).unwrap();
        assert!(config.contains("root = \"/tmp/vmpod-containerd-x/root\""));
        assert!(config.contains("address = \"/tmp/vmpod-containerd-x/sock/containerd.sock.ttrpc\""));
        assert!(config.contains("\"io.containerd.grpc.v1.cri\""));
    }
}
