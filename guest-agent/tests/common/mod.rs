// SPDX-License-Identifier: Apache-2.0
//! A `vmpod-agent` running on the host as root for the tests: its own
//! mount namespace (so nothing it mounts outlives it) and network
//! namespace (so its interfaces and routes are its own), a Unix socket, a
//! state directory, a cgroup v2 directory, and a busybox root file system
//! (Debian's busybox-static) for its containers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmpod_agent_api::messages::Mount;
use vmpod_agent_api::{AgentClient, ProcessId, SandboxConfig};

/// The static busybox the tests' root file systems are made of.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into the test root file system.
const APPLETS: [&str; 25] = [
    "sh", "echo", "cat", "sleep", "hostname", "id", "ls", "true", "false", "mount", "ps", "grep",
    "head", "tty", "stat", "touch", "readlink", "kill", "wc", "dd", "yes", "env", "pwd", "test",
    "mknod",
];

/// Why the agent tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the agent builds containers: needs root".into());
    }
    if !Path::new(BUSYBOX).exists() {
        return Some(format!(
            "{BUSYBOX} is missing (apt-get install busybox-static)"
        ));
    }
    if cgroup2_mount().is_none() {
        return Some("no cgroup2 hierarchy is mounted".into());
    }
    None
}

/// Returns the agent (with extra command-line arguments, if given), or
/// prints why the test skips. Set VMPOD_REQUIRE_AGENT=1 to turn a skip
/// into a failure (test.sh does).
#[macro_export]
macro_rules! agent_or_skip {
    ($name:expr) => {
        agent_or_skip!($name, &[])
    };
    ($name:expr, $args:expr) => {
        match common::skip_reason() {
            Some(reason) if std::env::var_os("VMPOD_REQUIRE_AGENT").is_some() => {
                panic!("{}: cannot run: {reason}", $name)
            }
            Some(reason) => {
                eprintln!("SKIP {}: {reason}", $name);
                return;
            }
            None => common::HostAgent::start_with($name, $args).await,
        }
    };
}

/// The cgroup v2 mount point (`/sys/fs/cgroup` on a unified host,
/// `/sys/fs/cgroup/unified` on a hybrid one).
pub fn cgroup2_mount() -> Option<PathBuf> {
    vmpod_sys::mountinfo::mounts()
        .ok()?
        .into_iter()
        .find(|mount| mount.fs_type == "cgroup2")
        .map(|mount| mount.point)
}

/// An agent on the host and a client connected to it.
pub struct HostAgent {
    /// The client.
    pub client: AgentClient,
    /// The test's directory (removed on drop).
    pub dir: PathBuf,
    /// The agent's state directory.
    pub state_dir: PathBuf,
    /// The agent's cgroup root.
    pub cgroup_root: PathBuf,
    child: Child,
}

impl HostAgent {
    /// Starts an agent for test `name` with `args` added to its command
    /// line, and connects to it.
    pub async fn start_with(name: &str, args: &[&str]) -> HostAgent {
        let dir = std::env::temp_dir().join(format!("vmpod-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state_dir = dir.join("state");
        let socket = dir.join("agent.sock");
        let cgroup_root = cgroup2_mount()
            .unwrap()
            .join(format!("vmpod-test-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup_root).unwrap();
        let child = Command::new("unshare")
            .args(["--mount", "--net", "--propagation", "private", "--"])
            .arg(env!("CARGO_BIN_EXE_vmpod-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--cgroup-root")
            .arg(&cgroup_root)
            .args(args)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .spawn()
            .expect("start vmpod-agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            if let Ok(client) = AgentClient::connect_unix(&socket).await {
                if client.check().await.unwrap_or(false) {
                    break client;
                }
            }
            assert!(Instant::now() < deadline, "the agent did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        HostAgent {
            client,
            dir,
            state_dir,
            cgroup_root,
            child,
        }
    }

    /// Sends SIGTERM and returns how the agent ended, within 10 s.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The agent's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }

    /// The agent's PID (unshare execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `ip ARGS` in the agent's network namespace; its output.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.pid().to_string())
            .arg("-n")
            .arg("ip")
            .args(args)
            .output()
            .expect("run nsenter ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Mounts in the agent's namespace below `path`.
    pub fn mounts_below(&self, path: &Path) -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid()))
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                line.split_whitespace()
                    .nth(4)
                    .is_some_and(|point| Path::new(point).starts_with(path))
            })
            .map(str::to_owned)
            .collect()
    }

    /// Creates the sandbox `pod` with `hostname`.
    pub async fn sandbox(&self, hostname: &str) {
        self.client
            .create_sandbox(&SandboxConfig {
                id: "pod".into(),
                hostname: hostname.into(),
                ..SandboxConfig::default()
            })
            .await
            .unwrap();
    }

    /// A busybox root file system directory named `name`.
    pub fn rootfs(&self, name: &str) -> PathBuf {
        let root = self.dir.join(name);
        for dir in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
        for applet in APPLETS {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        .unwrap();
        root
    }

    /// Creates container `id` running `args` on a bind of `rootfs`.
    pub async fn create(
        &self,
        id: &str,
        spec: &Value,
        rootfs: &Path,
    ) -> Result<(), vmpod_agent_api::ClientError> {
        self.client
            .create_container(id, serde_json::to_vec(spec).unwrap(), bind_mount(rootfs))
            .await
    }

    /// Reads stdout (or stderr) of `process` to its end.
    pub async fn read_all(&self, process: &ProcessId, stderr: bool) -> String {
        let mut out = Vec::new();
        loop {
            let chunk = if stderr {
                self.client.read_stderr(process, 65536).await.unwrap()
            } else {
                self.client.read_stdout(process, 65536).await.unwrap()
            };
            if chunk.is_empty() {
                return String::from_utf8_lossy(&out).into_owned();
            }
            out.extend_from_slice(&chunk);
        }
    }

    /// Reads stdout of `process` up to the end of a line; its end before
    /// that fails the test.
    pub async fn read_line(&self, process: &ProcessId) -> String {
        let mut out = Vec::new();
        while !out.ends_with(b"\n") {
            let chunk = self.client.read_stdout(process, 4096).await.unwrap();
            assert!(!chunk.is_empty(), "no output: {out:?}");
            out.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Runs a container to its end: (exit status, stdout, stderr).
    pub async fn run(&self, id: &str, spec: &Value, rootfs: &Path) -> (i32, String, String) {
        self.create(id, spec, rootfs).await.unwrap();
        self.client.start_container(id).await.unwrap();
        let init = ProcessId::init(id);
        let (stdout, stderr) =
            tokio::join!(self.read_all(&init, false), self.read_all(&init, true));
        let exit = self.client.wait_process(&init).await.unwrap();
        (exit.exit_status, stdout, stderr)
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_cgroups(&self.cgroup_root);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes a cgroup tree, deepest first.
fn remove_cgroups(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroups(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// A rootfs mount binding `dir`.
pub fn bind_mount(dir: &Path) -> Mount {
    let mut mount = Mount::new();
    mount.source = dir.display().to_string();
    mount.fstype = "bind".into();
    mount
}

/// The spec `runc spec` writes, with `args` and `hostname`.
pub fn spec(args: &[&str], hostname: &str) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}
