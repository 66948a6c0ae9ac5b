// SPDX-License-Identifier: Apache-2.0
//! The test image: Debian's static busybox as a single-layer OCI image,
//! built and imported without network.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

use super::{write_file, Containerd, BUSYBOX, BUSYBOX_IMAGE, NAMESPACE};

impl Containerd {
    /// Builds a single-layer OCI image of Debian's static busybox (one
    /// symlink per applet in /bin, root and nobody in /etc/passwd), without
    /// network, imports it and returns its reference, [`BUSYBOX_IMAGE`].
    ///
    /// # Errors
    /// A message naming the step that failed.
    pub fn import_busybox(&self) -> Result<String, String> {
        self.import_busybox_as(NAMESPACE, BUSYBOX_IMAGE, &["sh"])
    }

    /// [`Containerd::import_busybox`] into containerd namespace
    /// `namespace` as image `name`, whose command is `cmd` (CRI's images
    /// live in `k8s.io`, and its pause image is busybox waiting for a
    /// signal); returns `name`.
    ///
    /// # Errors
    /// A message naming the step that failed.
    pub fn import_busybox_as(
        &self,
        namespace: &str,
        name: &str,
        cmd: &[&str],
    ) -> Result<String, String> {
        let work = self.dir.join("busybox-image");
        let archive = busybox_archive(&work, name, cmd)?;
        self.import_image(&archive, namespace, name)?;
        fs::remove_dir_all(&work).map_err(|e| format!("rm -r {}: {e}", work.display()))?;
        Ok(name.to_string())
    }

    /// Imports the image archive at `archive` into `namespace` and checks
    /// that it is there as `name`.
    fn import_image(&self, archive: &Path, namespace: &str, name: &str) -> Result<(), String> {
        let archive_arg = archive
            .to_str()
            .ok_or_else(|| format!("{} is not UTF-8", archive.display()))?;
        let platform = format!("linux/{}", oci_arch());
        let import = self.ctr_in(
            namespace,
            &["images", "import", "--platform", &platform, archive_arg],
        );
        if !import.status.success() {
            return Err(format!(
                "ctr images import failed ({}): {}",
                import.status,
                String::from_utf8_lossy(&import.stderr)
            ));
        }
        let list = self.ctr_in(namespace, &["images", "ls", "-q"]);
        let names = String::from_utf8_lossy(&list.stdout);
        if !names.lines().any(|listed| listed == name) {
            return Err(format!("{name} is not among the images: {names}"));
        }
        Ok(())
    }
}

/// Builds [`Containerd::import_busybox`]'s image, named `name` with
/// command `cmd`, as an OCI archive in `work` (made afresh), for a
/// containerd this crate does not start; returns the archive's path.
///
/// # Errors
/// A message naming the step that failed.
pub fn busybox_archive(work: &Path, name: &str, cmd: &[&str]) -> Result<PathBuf, String> {
    let _ = fs::remove_dir_all(work);
    let layout = work.join("oci");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(|e| format!("mkdir {}: {e}", blobs.display()))?;
    let layer = busybox_layer(work, &blobs)?;
    let manifest = busybox_manifest(work, &blobs, &layer, cmd)?;
    write_index(&layout, &manifest, name)?;
    let archive = work.join("image.tar");
    run_tool(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&archive)
            .args(["oci-layout", "index.json", "blobs"]),
    )?;
    Ok(archive)
}

/// A blob of the image: its digest (`sha256:...`) and size.
struct Blob {
    digest: String,
    size: u64,
}

/// The image's one layer, [`busybox_tree`] as a tar in `blobs`.
fn busybox_layer(work: &Path, blobs: &Path) -> Result<Blob, String> {
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
    add_blob(blobs, &layer)
}

/// The image's config (command `cmd`) and manifest for `layer`, in
/// `blobs`; returns the manifest.
fn busybox_manifest(work: &Path, blobs: &Path, layer: &Blob, cmd: &[&str]) -> Result<Blob, String> {
    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]}
    });
    let config = add_json_blob(blobs, work, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.digest,
            "size": config.size
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer.digest,
            "size": layer.size
        }]
    });
    add_json_blob(blobs, work, &manifest)
}

/// The OCI layout's `index.json`, naming `manifest` `name`, and its
/// `oci-layout`.
fn write_index(layout: &Path, manifest: &Blob, name: &str) -> Result<(), String> {
    // ctr names an image after io.containerd.image.name; with only the
    // OCI ref name ("test") it would be "import-<date>:test".
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest.digest,
            "size": manifest.size,
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": "test"
            }
        }]
    });
    write_file(&layout.join("index.json"), index.to_string().as_bytes())?;
    write_file(
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
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

/// Moves `file` into the blob directory under its digest.
fn add_blob(blobs: &Path, file: &Path) -> Result<Blob, String> {
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
    Ok(Blob {
        digest: format!("sha256:{hex}"),
        size,
    })
}

/// [`add_blob`] for a JSON document, written compactly through `work`.
fn add_json_blob(blobs: &Path, work: &Path, value: &serde_json::Value) -> Result<Blob, String> {
    let file = work.join("blob.json");
    write_file(&file, value.to_string().as_bytes())?;
    add_blob(blobs, &file)
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
