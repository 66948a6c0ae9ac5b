// SPDX-License-Identifier: Apache-2.0
//! The installer tests' fixture: a temporary root and a directory of
//! artifacts, the `vmpod` binary under test, and a snapshot of a tree
//! (every path with its kind, mode and bytes) to compare before and after.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The executables install puts in /usr/local/bin.
pub const BINARIES: [&str; 4] = [
    "containerd-shim-vmpod-v2",
    "vmpod-vm",
    "vmpod-jailer",
    "vmpod",
];

/// A containerd 1.6 config with comments, as an admin might keep it.
pub const V2_CONFIG: &str = r#"# containerd 1.6: the admin's config.
version = 2
root = "/var/lib/containerd"   # the default

[plugins]
  # CNI as Debian ships it.
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
"#;

/// A containerd 2.x config.
pub const V3_CONFIG: &str = r#"# containerd 2.x
version = 3
imports = ["/etc/containerd/runtimes/*.toml"]

[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"
"#;

/// A temporary root and artifacts, removed on drop.
#[derive(Debug)]
pub struct Fixture {
    pub dir: PathBuf,
}

impl Fixture {
    /// A fresh fixture for test `name`: an empty root, and artifacts that
    /// stand in for the real ones (ELF and cpio magic and their own name:
    /// the installer copies them as opaque files; the DaemonSet image test
    /// installs the real ones).
    pub fn new(name: &str) -> Fixture {
        let dir =
            std::env::temp_dir().join(format!("vmpod-installer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("root")).unwrap();
        fs::create_dir_all(dir.join("artifacts")).unwrap();
        let fixture = Fixture { dir };
        for name in BINARIES.iter().chain(&["vmlinux"]) {
            fixture.artifact(name, format!("\x7fELF stand-in for {name}").as_bytes());
        }
        fixture.artifact(
            "vmpod-agent-initrd.cpio",
            b"070701 stand-in for the agent initrd",
        );
        fixture
    }

    /// Writes artifact `name`.
    pub fn artifact(&self, name: &str, contents: &[u8]) {
        fs::write(self.artifacts().join(name), contents).unwrap();
    }

    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn artifacts(&self) -> PathBuf {
        self.dir.join("artifacts")
    }

    /// The node path `node` beneath the root.
    pub fn path(&self, node: &str) -> PathBuf {
        self.root().join(node.trim_start_matches('/'))
    }

    /// Writes the node file `node` beneath the root, with its directories.
    pub fn write(&self, node: &str, contents: &str, mode: u32) {
        let path = self.path(node);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    pub fn read(&self, node: &str) -> String {
        fs::read_to_string(self.path(node)).unwrap_or_else(|e| panic!("{node}: {e}"))
    }

    /// `vmpod ARGS`.
    pub fn vmpod(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vmpod"))
            .args(args)
            .output()
            .unwrap()
    }

    /// `vmpod install --root ROOT --from ARTIFACTS EXTRA`.
    pub fn install(&self, extra: &[&str]) -> Output {
        let root = self.root();
        let from = self.artifacts();
        let mut args = vec![
            "install",
            "--root",
            root.to_str().unwrap(),
            "--from",
            from.to_str().unwrap(),
        ];
        args.extend(extra);
        self.vmpod(&args)
    }

    /// `vmpod uninstall --root ROOT`.
    pub fn uninstall(&self) -> Output {
        self.vmpod(&["uninstall", "--root", self.root().to_str().unwrap()])
    }

    pub fn snapshot(&self) -> Snapshot {
        snapshot(&self.root())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A tree: each path below the root with its kind and mode, and a file's
/// bytes or a symlink's target.
pub type Snapshot = BTreeMap<PathBuf, (u32, Vec<u8>)>;

pub fn snapshot(root: &Path) -> Snapshot {
    let mut tree = Snapshot::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let contents = if meta.is_dir() {
                stack.push(path.clone());
                Vec::new()
            } else if meta.file_type().is_symlink() {
                fs::read_link(&path)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                fs::read(&path).unwrap()
            };
            tree.insert(
                path.strip_prefix(root).unwrap().to_path_buf(),
                (meta.mode(), contents),
            );
        }
    }
    tree
}

/// Asserts `output` succeeded, showing its stderr if not.
pub fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "status {:?}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Asserts `output` failed with status `code` and one line of stderr that
/// contains `expected`; returns the line.
pub fn assert_one_line_failure(output: &Output, code: i32, expected: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line: {stderr}");
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in: {stderr}"
    );
    stderr
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `Err(why)` for a prerequisite the host lacks: a skip, or a failure where
/// `./test.sh` builds everything (`VMPOD_REQUIRE_GUEST=1`).
pub fn skip(test: &str, why: String) {
    if std::env::var_os("VMPOD_REQUIRE_GUEST").is_some_and(|v| v == "1") {
        panic!("{test}: {why}");
    }
    eprintln!("skipped {test}: {why}");
}

/// The guest kernel and agent initrd, as `./test.sh` names them or where
/// setup.sh leaves them.
pub fn guest_artifacts() -> Result<(PathBuf, PathBuf), String> {
    let kernel_dir = std::env::var_os("VMPOD_KERNEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vmpod/guest-kernel/current"));
    let initrd = std::env::var_os("VMPOD_AGENT_INITRD")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/vmpod-agent-initrd.cpio"));
    for path in [kernel_dir.join("vmlinux"), initrd.clone()] {
        if !path.is_file() {
            return Err(format!(
                "{} is not built (scripts/setup.sh)",
                path.display()
            ));
        }
    }
    Ok((kernel_dir, initrd))
}

/// This build's binaries, stripped into `dir` (debug builds are large).
pub fn stripped_binaries(dir: &Path) -> Result<(), String> {
    let profile = Path::new(env!("CARGO_BIN_EXE_vmpod")).parent().unwrap();
    fs::create_dir_all(dir).unwrap();
    for name in BINARIES {
        let built = profile.join(name);
        if !built.is_file() {
            return Err(format!(
                "{} is not built (cargo build --workspace)",
                built.display()
            ));
        }
        let out = Command::new("strip")
            .arg("-o")
            .arg(dir.join(name))
            .arg(&built)
            .output()
            .map_err(|e| format!("strip: {e}"))?;
        assert_ok(&out);
    }
    Ok(())
}
