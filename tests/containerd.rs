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

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

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
/// Plugins the tests do not use, disabled so that containerd starts fast
/// and touches nothing outside its directories (`opt` would create
/// `/opt/containerd`). The v1 runtime stays: 1.6's tasks service
/// requires it.
const DISABLED_PLUGINS: [&str; 10] = [
    "io.containerd.grpc.v1.cri",
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
    /// `agent-timeout`, then the TOML lines `extra`.
    ///
    /// # Errors
    /// A message naming what is missing or failed.
    pub fn with_vmpod_shim(work: &Path, extra: &str, quiet: bool) -> Result<Containerd, String> {
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
        write_file(
            &config,
            format!(
                "kernel = \"{}\"\ninitrd = \"{}\"\nstate-dir = \"{}\"\nagent-timeout = 600\n{extra}",
                guest.vmlinux.display(),
                initrd.display(),
                work.join("pods").display()
            )
            .as_bytes(),
        )?;
        Containerd::start(ContainerdOptions {
            shim: Some(shim),
            env: vec![("VMPOD_CONFIG".into(), config.display().to_string())],
            quiet,
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
        fs::write(&config, self.config(opts.quiet)?)
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

    fn config(&self, quiet: bool) -> Result<String, String> {
        let disabled = DISABLED_PLUGINS.map(|p| format!("\"{p}\"")).join(", ");
        Ok(format!(
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
            level = if quiet { "info" } else { "debug" },
        ))
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
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .args(["--namespace", NAMESPACE])
            .args(args);
        cmd
    }

    /// Runs `ctr --address SOCK --namespace vmpod-test ARGS` to completion,
    /// with no standard input.
    ///
    /// # Panics
    /// If ctr cannot be run at all (the prerequisites say it is there).
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args)
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

    /// Builds a single-layer OCI image of Debian's static busybox (one
    /// symlink per applet in /bin, root and nobody in /etc/passwd), without
    /// network, imports it and returns its reference, [`BUSYBOX_IMAGE`].
    ///
    /// # Errors
    /// A message naming the step that failed.
    pub fn import_busybox(&self) -> Result<String, String> {
        let work = self.dir.join("busybox-image");
        let _ = fs::remove_dir_all(&work);
        let layout = work.join("oci");
        let blobs = layout.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(|e| format!("mkdir {}: {e}", blobs.display()))?;
        let rootfs = work.join("rootfs");
        busybox_tree(&rootfs)?;
        let layer = work.join("layer.tar");
        run_tool(
            Command::new("tar")
                .args([
                    "--sort=name",
                    "--numeric-owner",
                    "--owner=0",
                    "--group=0",
                    "-C",
                ])
                .arg(&rootfs)
                .arg("-cf")
                .arg(&layer)
                .arg("."),
        )?;
        let (layer_digest, layer_size) = add_blob(&blobs, &layer)?;
        let arch = oci_arch();
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["sh"],
                "WorkingDir": "/"
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
        });
        let (config_digest, config_size) = add_json_blob(&blobs, &work, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config_size
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer_size
            }]
        });
        let (manifest_digest, manifest_size) = add_json_blob(&blobs, &work, &manifest)?;
        // ctr names an image after io.containerd.image.name; with only the
        // OCI ref name ("test") it would be "import-<date>:test".
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": manifest_size,
                "platform": {"architecture": arch, "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": BUSYBOX_IMAGE,
                    "org.opencontainers.image.ref.name": "test"
                }
            }]
        });
        write_file(&layout.join("index.json"), index.to_string().as_bytes())?;
        write_file(
            &layout.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
        let archive = work.join("image.tar");
        run_tool(
            Command::new("tar")
                .arg("-C")
                .arg(&layout)
                .arg("-cf")
                .arg(&archive)
                .args(["oci-layout", "index.json", "blobs"]),
        )?;
        let archive_arg = archive
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", archive.display()))?;
        let platform = format!("linux/{arch}");
        let import = self.ctr(&["images", "import", "--platform", &platform, archive_arg]);
        if !import.status.success() {
            return Err(format!(
                "ctr images import failed ({}): {}",
                import.status,
                String::from_utf8_lossy(&import.stderr)
            ));
        }
        let list = self.ctr(&["images", "ls", "-q"]);
        let names = String::from_utf8_lossy(&list.stdout);
        if !names.lines().any(|name| name == BUSYBOX_IMAGE) {
            return Err(format!("{BUSYBOX_IMAGE} is not among the images: {names}"));
        }
        fs::remove_dir_all(&work).map_err(|e| format!("rm -r {}: {e}", work.display()))?;
        Ok(BUSYBOX_IMAGE.to_string())
    }

    /// The live shim processes serving this containerd: `containerd-shim-*`
    /// processes whose command line names its socket (they are not its
    /// children: shims daemonise).
    pub fn shim_pids(&self) -> Vec<u32> {
        let address = self.address.as_os_str().as_bytes();
        live_processes()
            .into_iter()
            .filter(|p| {
                p.argv.first().is_some_and(|argv0| {
                    basename(argv0).starts_with(b"containerd-shim")
                        && p.argv.iter().any(|arg| arg.as_slice() == address)
                })
            })
            .map(|p| p.pid)
            .collect()
    }

    /// Stops containerd and removes everything it left: tasks still there
    /// are deleted through containerd first (so that their shims clean up
    /// as in production), then containerd gets SIGTERM (SIGKILL after
    /// 10 s), shims still serving it are killed with their descendants
    /// (containers, VMs) and what their tasks left in [`HOST_STATE`] and
    /// the cgroups removed, the mounts below its directory detached, and
    /// its directory removed. Idempotent; drop calls it.
    ///
    /// # Errors
    /// A message listing what could not be cleaned up (all of it was tried).
    pub fn stop(&mut self) -> Result<(), String> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut problems = Vec::new();
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                self.delete_tasks();
            }
            terminate(&mut child);
        }
        let shims = self.shim_pids();
        let victims = with_descendants(&shims);
        for pid in victims
            .iter()
            .filter_map(|&pid| libc::pid_t::try_from(pid).ok())
        {
            // SAFETY: kill has no memory-safety preconditions; the pids are
            // this containerd's shims and their descendants, just listed.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if !wait_gone(&victims, KILL_TIMEOUT) {
            problems.push(format!("processes {victims:?} survived SIGKILL"));
        }
        let cgroup_roots = cgroup_roots();
        self.remove_task_leftovers(&cgroup_roots);
        if let Err(e) = unmount_below(&self.dir) {
            problems.push(e);
        }
        // Empty unless another test's containers are in them.
        for root in &cgroup_roots {
            let _ = fs::remove_dir(root.join(NAMESPACE));
        }
        let _ = fs::remove_dir(Path::new(HOST_STATE).join("runc").join(NAMESPACE));
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            problems.push(format!("rm -r {}: {e}", self.dir.display()));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// Deletes (killing them first) the tasks and containers left in our
    /// namespace, within [`TASK_CLEANUP_TIMEOUT`] overall.
    fn delete_tasks(&self) {
        let deadline = Instant::now() + TASK_CLEANUP_TIMEOUT;
        let left = || deadline.saturating_duration_since(Instant::now());
        let ids = |kind: &str| -> Vec<String> {
            self.ctr_with_input(&[kind, "ls", "-q"], b"", left())
                .stdout
                .lines()
                .map(str::to_string)
                .collect()
        };
        for id in ids("tasks") {
            self.ctr_with_input(&["tasks", "rm", "-f", &id], b"", left());
        }
        for id in ids("containers") {
            self.ctr_with_input(&["containers", "rm", &id], b"", left());
        }
    }

    /// Removes what the tasks of killed shims leave outside our directory,
    /// which their shims and ctr would have removed: the task's cgroups,
    /// and in containerd's compiled-in [`HOST_STATE`] (whatever our config
    /// says) the shim's socket (named in the bundle's `address`), runc's
    /// state and ctr's FIFOs.
    fn remove_task_leftovers(&self, cgroup_roots: &[PathBuf]) {
        let Ok(bundles) = fs::read_dir(self.tasks_dir()) else {
            return;
        };
        for bundle in bundles.flatten() {
            if let Ok(address) = fs::read_to_string(bundle.path().join("address")) {
                let socket = Path::new(address.trim().trim_start_matches("unix://"));
                if fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket()) {
                    let _ = fs::remove_file(socket);
                }
            }
            let id = bundle.file_name();
            let _ =
                fs::remove_dir_all(Path::new(HOST_STATE).join("runc").join(NAMESPACE).join(&id));
            for root in cgroup_roots {
                let _ = fs::remove_dir(root.join(NAMESPACE).join(&id));
            }
            if let Some(id) = id.to_str() {
                remove_fifo_dirs(id);
            }
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.stopped {
            eprintln!("containerd's log (tail):\n{}", self.log_tail(60));
        }
        if let Err(e) = self.stop() {
            eprintln!("containerd teardown: {e}");
        }
    }
}

/// Why containerd tests cannot run here: not root, or a missing tool
/// (containerd, ctr, tar, sha256sum, busybox, and `extra_tools`).
pub fn skip_reason(extra_tools: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("containerd and its shims need root".into());
    }
    if !Path::new(BUSYBOX).is_file() {
        return Some(format!(
            "{BUSYBOX} is missing (apt-get install busybox-static)"
        ));
    }
    ["containerd", "ctr", "tar", "sha256sum"]
        .iter()
        .chain(extra_tools)
        .find(|tool| find_in_path(tool).is_none())
        .map(|tool| format!("{tool} is not on PATH (apt-get install containerd runc)"))
}

/// Whether `test` can run containerd (with `extra_tools`); if not, prints
/// `SKIP` and why, and returns false.
///
/// # Panics
/// If it cannot and VMPOD_REQUIRE_AGENT is set (./test.sh installs the
/// prerequisites, so there a skip would hide a failure).
pub fn containerd_or_skip(test: &str, extra_tools: &[&str]) -> bool {
    match skip_reason(extra_tools) {
        None => true,
        Some(reason) if std::env::var_os("VMPOD_REQUIRE_AGENT").is_some() => {
            panic!("{test}: cannot run: {reason}")
        }
        Some(reason) => {
            eprintln!("SKIP {test}: {reason}");
            false
        }
    }
}

/// The mount points at or below `path`, from /proc/self/mountinfo (which
/// names them canonically: pass a canonical path).
pub fn mounts_below(path: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|point| PathBuf::from(unescape_mountinfo(point)))
        .filter(|point| point.starts_with(path))
        .collect()
}

/// How many mounts are at or below `path`.
pub fn count_mounts_below(path: &Path) -> usize {
    mounts_below(path).len()
}

/// The pids of live (not zombie) processes called `name`: by the file name
/// of their argv[0], or by their comm (which the kernel cuts at 15 bytes).
pub fn processes_named(name: &str) -> Vec<u32> {
    live_processes()
        .into_iter()
        .filter(|p| {
            p.argv
                .first()
                .is_some_and(|argv0| basename(argv0) == name.as_bytes())
                || p.comm == name
        })
        .map(|p| p.pid)
        .collect()
}

/// The Unix sockets at or below `dir` (symlinks not followed), sorted.
pub fn unix_sockets_below(dir: &Path) -> Vec<PathBuf> {
    let mut sockets = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.file_type().is_socket() {
            sockets.push(path);
        } else if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&path) {
                pending.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    sockets.sort();
    sockets
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

/// SIGTERM, then SIGKILL after [`TERM_TIMEOUT`]; reaps the child.
fn terminate(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // unreaped child's, so it cannot name another process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let start = Instant::now();
    while start.elapsed() < TERM_TIMEOUT {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The tree of [`Containerd::import_busybox`]'s layer.
fn busybox_tree(rootfs: &Path) -> Result<(), String> {
    for sub in ["bin", "etc", "tmp", "proc", "sys", "dev"] {
        let dir = rootfs.join(sub);
        fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    }
    let tmp = rootfs.join("tmp");
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o1777))
        .map_err(|e| format!("chmod {}: {e}", tmp.display()))?;
    fs::copy(BUSYBOX, rootfs.join("bin/busybox"))
        .map_err(|e| format!("cannot copy {BUSYBOX}: {e}"))?;
    let list = run_tool(Command::new(BUSYBOX).arg("--list"))?;
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
            .map_err(|e| format!("cannot link applet {applet}: {e}"))?;
    }
    write_file(
        &rootfs.join("etc/passwd"),
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    write_file(&rootfs.join("etc/group"), b"root:x:0:\nnogroup:x:65534:\n")
}

/// Moves `file` into the blob directory under its digest; returns the
/// digest (`sha256:...`) and size.
fn add_blob(blobs: &Path, file: &Path) -> Result<(String, u64), String> {
    let size = fs::metadata(file)
        .map_err(|e| format!("stat {}: {e}", file.display()))?
        .len();
    let sum = run_tool(Command::new("sha256sum").arg(file))?;
    let hex = sum
        .split_whitespace()
        .next()
        .filter(|hex| hex.len() == 64)
        .ok_or_else(|| format!("sha256sum printed {sum:?}"))?;
    fs::rename(file, blobs.join(hex)).map_err(|e| format!("cannot move the blob: {e}"))?;
    Ok((format!("sha256:{hex}"), size))
}

/// [`add_blob`] for a JSON document, written compactly through `work`.
fn add_json_blob(
    blobs: &Path,
    work: &Path,
    value: &serde_json::Value,
) -> Result<(String, u64), String> {
    let file = work.join("blob.json");
    write_file(&file, value.to_string().as_bytes())?;
    add_blob(blobs, &file)
}

fn write_file(path: &Path, contents: &[u8]) -> Result<(), String> {
    fs::write(path, contents).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Runs a helper tool to success; returns its standard output.
fn run_tool(cmd: &mut Command) -> Result<String, String> {
    let name = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{name} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The OCI name of the host's architecture, which busybox is built for.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn find_in_path(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(tool))
        .find(|path| path.is_file())
}

/// A process of /proc that is not a zombie.
struct Process {
    pid: u32,
    ppid: u32,
    comm: String,
    argv: Vec<Vec<u8>>,
}

/// The live processes; zombies do not count (on hosts whose PID 1 does not
/// reap, exited shims stay as zombies).
fn live_processes() -> Vec<Process> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...", comm possibly holding ") ".
            let (head, tail) = stat.rsplit_once(") ")?;
            let comm = head.split_once(" (")?.1.to_string();
            let mut fields = tail.split(' ');
            if matches!(fields.next()?, "Z" | "X") {
                return None;
            }
            let ppid = fields.next()?.parse().ok()?;
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let argv = cmdline
                .split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            Some(Process {
                pid,
                ppid,
                comm,
                argv,
            })
        })
        .collect()
}

fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// `roots` and all their live descendants.
fn with_descendants(roots: &[u32]) -> Vec<u32> {
    let processes = live_processes();
    let mut all = roots.to_vec();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            processes
                .iter()
                .filter(|p| p.ppid == parent && !all.contains(&p.pid))
                .map(|p| p.pid)
                .collect::<Vec<_>>(),
        );
        i += 1;
    }
    all
}

/// Whether all of `pids` are gone (or zombies) within `timeout`.
fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let start = Instant::now();
    loop {
        let live = live_processes();
        if !live.iter().any(|p| pids.contains(&p.pid)) {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Detaches every mount at or below `dir`, deepest first, until none is
/// left (mounts can be stacked).
fn unmount_below(dir: &Path) -> Result<(), String> {
    for _ in 0..8 {
        let mut points = mounts_below(dir);
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in points {
            let Ok(c_point) = CString::new(point.as_os_str().as_bytes()) else {
                continue;
            };
            // SAFETY: c_point is a NUL-terminated path that outlives the call.
            unsafe { libc::umount2(c_point.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let left = mounts_below(dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(format!("still mounted: {left:?}"))
    }
}

/// The mount points of the cgroup hierarchies (one per controller on a
/// cgroup v1 host, plus the unified one on a hybrid host).
fn cgroup_roots() -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if !matches!(right.split(' ').next(), Some("cgroup" | "cgroup2")) {
                return None;
            }
            left.split(' ')
                .nth(4)
                .map(|point| PathBuf::from(unescape_mountinfo(point)))
        })
        .collect()
}

/// Removes ctr's FIFO directories for container `id` (ctr makes one per
/// process, holding `<id>-stdin`, `-stdout`, `-stderr`, and removes it
/// only when it sees the process end).
fn remove_fifo_dirs(id: &str) {
    let Ok(dirs) = fs::read_dir(Path::new(HOST_STATE).join("fifo")) else {
        return;
    };
    let ours = |name: &std::ffi::OsStr| {
        name.to_str().is_some_and(|name| {
            ["-stdin", "-stdout", "-stderr"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix) == Some(id))
        })
    };
    for dir in dirs.flatten() {
        let Ok(entries) = fs::read_dir(dir.path()) else {
            continue;
        };
        let names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
        if !names.is_empty() && names.iter().all(|name| ours(name)) {
            let _ = fs::remove_dir_all(dir.path());
        }
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                u8::try_from(value).ok()
            });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/plain\0"), r"/plain\0");
        assert_eq!(unescape_mountinfo(r"/a\+12"), r"/a\+12");
    }

    #[test]
    fn config_names_our_paths() {
        let containerd = Containerd {
            dir: PathBuf::from("/tmp/vmpod-containerd-x"),
            address: PathBuf::from("/tmp/vmpod-containerd-x/sock/containerd.sock"),
            child: None,
            stopped: true,
        };
        let config = containerd.config(false).unwrap();
        assert!(config.contains("root = \"/tmp/vmpod-containerd-x/root\""));
        assert!(config.contains("address = \"/tmp/vmpod-containerd-x/sock/containerd.sock.ttrpc\""));
        assert!(config.contains("\"io.containerd.grpc.v1.cri\""));
    }
}
