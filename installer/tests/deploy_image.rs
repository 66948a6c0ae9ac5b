// SPDX-License-Identifier: Apache-2.0
//! deploy/: the manifests are the Kubernetes objects they claim to be, and
//! the DaemonSet's image — built by deploy/build-image.sh from this build's
//! binaries and the guest artifacts — is a valid OCI image layout whose
//! entrypoint, run in the unpacked image with a temporary root as its
//! `/host`, installs vmpod there and on SIGTERM uninstalls it, leaving the
//! root as it was.

// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{assert_ok, guest_artifacts, repo, skip, stripped_binaries, Fixture, V2_CONFIG};
use serde_json::Value;
use vmpod_installer::files::sha256;

/// How long the entrypoint gets to install, and to uninstall.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// The manifests as JSON, through Debian's python3 and its yaml module
/// (python3-yaml, which scripts/setup.sh installs).
fn manifests() -> Result<Vec<Value>, String> {
    let script = "import json, sys, yaml\n\
        docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f))]\n\
        print(json.dumps(docs))";
    let deploy = repo().join("deploy");
    let out = Command::new("/usr/bin/python3")
        .args(["-c", script])
        .arg(deploy.join("runtimeclass.yaml"))
        .arg(deploy.join("daemonset.yaml"))
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 yaml: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn test_manifests_are_a_runtime_class_and_a_daemonset() {
    let docs = match manifests() {
        Ok(docs) => docs,
        Err(why) => return skip("test_manifests_are_a_runtime_class_and_a_daemonset", why),
    };
    let [class, daemonset] = &docs[..] else {
        panic!("two documents expected: {docs:?}")
    };
    assert_eq!(class["apiVersion"], "node.k8s.io/v1");
    assert_eq!(class["kind"], "RuntimeClass");
    assert_eq!(class["metadata"]["name"], "vmpod");
    assert_eq!(class["handler"], vmpod_installer::containerd::HANDLER);
    // bench/README.md: 10.5 MiB (shim + vmpod-vm) + 256 MiB of guest RAM.
    assert_eq!(class["overhead"]["podFixed"]["memory"], "267Mi");
    assert_eq!(
        class["scheduling"]["nodeSelector"]["vmpod.io/runtime"],
        "true"
    );

    assert_eq!(daemonset["apiVersion"], "apps/v1");
    assert_eq!(daemonset["kind"], "DaemonSet");
    let labels = &daemonset["spec"]["selector"]["matchLabels"];
    let pod = &daemonset["spec"]["template"];
    assert_eq!(&pod["metadata"]["labels"], labels);
    let spec = &pod["spec"];
    assert_eq!(spec["nodeSelector"]["vmpod.io/runtime"], "true");
    let container = &spec["containers"][0];
    assert_eq!(container["image"], "localhost/vmpod-deploy:latest");
    assert_eq!(container["securityContext"]["privileged"], true);
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/host");
    assert_eq!(
        container["volumeMounts"][0]["name"],
        spec["volumes"][0]["name"]
    );
    assert_eq!(spec["volumes"][0]["hostPath"]["path"], "/");
    let env: Vec<(&str, &str)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e["value"].as_str().unwrap()))
        .collect();
    assert!(env.contains(&("VMPOD_HOST_ROOT", "/host")), "{env:?}");
    assert!(
        env.contains(&("VMPOD_RESTART_CONTAINERD", "true")),
        "{env:?}"
    );
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

/// Checks the OCI image layout unpacked at `oci` and returns the path of
/// its one layer's blob: every blob is named by its digest, the descriptors'
/// sizes hold, and the config's diff_id is the uncompressed layer's digest.
fn check_layout(oci: &Path) -> PathBuf {
    assert_eq!(
        read_json(&oci.join("oci-layout"))["imageLayoutVersion"],
        "1.0.0"
    );
    for blob in fs::read_dir(oci.join("blobs/sha256")).unwrap() {
        let blob = blob.unwrap().path();
        let name = blob.file_name().unwrap().to_str().unwrap().to_owned();
        assert_eq!(sha256(&fs::read(&blob).unwrap()), name, "blob {blob:?}");
    }
    let blob = |descriptor: &Value| {
        let digest = descriptor["digest"].as_str().unwrap();
        let path = oci
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap());
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            descriptor["size"].as_u64().unwrap(),
            "{digest}"
        );
        path
    };
    let index = read_json(&oci.join("index.json"));
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        "localhost/vmpod-deploy:latest"
    );
    let manifest = read_json(&blob(entry));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let config = read_json(&blob(&manifest["config"]));
    assert_eq!(
        config["config"]["Entrypoint"][0],
        "/opt/vmpod/entrypoint.sh"
    );
    let layer = blob(&manifest["layers"][0]);
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let tar = Command::new("gzip")
        .arg("-dc")
        .arg(&layer)
        .output()
        .unwrap();
    assert_ok(&tar);
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        format!("sha256:{}", sha256(&tar.stdout))
    );
    layer
}

/// The running entrypoint, killed if the test ends before it does.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Waits until `log` holds `marker`, failing if `child` ends first.
fn wait_for(log: &Path, marker: &str, child: &mut std::process::Child) {
    let start = Instant::now();
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if text.contains(marker) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the entrypoint ended ({status}) before {marker:?}: {text}");
        }
        assert!(
            start.elapsed() < STEP_TIMEOUT,
            "no {marker:?} within {STEP_TIMEOUT:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn test_image_entrypoint_installs_and_uninstalls_on_sigterm() {
    let test = "test_image_entrypoint_installs_and_uninstalls_on_sigterm";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip(test, "needs root (a mount namespace and chroot)".into());
    }
    let (kernel_dir, initrd) = match guest_artifacts() {
        Ok(found) => found,
        Err(why) => return skip(test, why),
    };
    let fixture = Fixture::new("image");
    if let Err(why) = stripped_binaries(&fixture.dir.join("bin")) {
        return skip(test, why);
    }
    let archive = fixture.dir.join("vmpod-deploy.tar");
    let out = Command::new(repo().join("deploy/build-image.sh"))
        .arg(&archive)
        .env("VMPOD_BIN_DIR", fixture.dir.join("bin"))
        .env("VMPOD_KERNEL_DIR", &kernel_dir)
        .env("VMPOD_AGENT_INITRD", &initrd)
        .output()
        .unwrap();
    assert_ok(&out);

    let oci = fixture.dir.join("oci");
    fs::create_dir(&oci).unwrap();
    assert_ok(
        &Command::new("tar")
            .arg("-xf")
            .arg(&archive)
            .arg("-C")
            .arg(&oci)
            .output()
            .unwrap(),
    );
    let layer = check_layout(&oci);
    let image = fixture.dir.join("image");
    fs::create_dir(&image).unwrap();
    assert_ok(
        &Command::new("tar")
            .arg("-xzf")
            .arg(&layer)
            .arg("-C")
            .arg(&image)
            .output()
            .unwrap(),
    );

    fixture.write("/etc/containerd/config.toml", V2_CONFIG, 0o644);
    let before = fixture.snapshot();
    let log = fixture.dir.join("entrypoint.log");
    // As a container runtime would: the host's /dev (the entrypoint's
    // background sleep reads /dev/null), and the root at /host.
    fs::create_dir(image.join("dev")).unwrap();
    let script = format!(
        "mount --rbind /dev '{image}/dev' && mount --bind '{}' '{image}/host' && exec chroot '{image}' /opt/vmpod/entrypoint.sh",
        fixture.root().display(),
        image = image.display(),
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", "/opt/vmpod/bin:/bin:/usr/sbin:/usr/bin:/sbin")
        .env("VMPOD_HOST_ROOT", "/host")
        .env("VMPOD_RESTART_CONTAINERD", "false")
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut running = Running(child);
    let child = &mut running.0;
    wait_for(&log, "vmpod-deploy: installed", child);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("ok      /usr/local/bin/vmpod: installed"),
        "{text}"
    );
    assert!(
        text.contains("ok      containerd runtime vmpod: registered"),
        "{text}"
    );
    assert_eq!(
        fs::read(fixture.path("/usr/local/bin/vmpod")).unwrap(),
        fs::read(image.join("opt/vmpod/bin/vmpod")).unwrap()
    );
    assert_eq!(
        fs::read(fixture.path("/usr/local/share/vmpod/vmlinux")).unwrap(),
        fs::read(kernel_dir.join("vmlinux")).unwrap()
    );
    assert!(fixture
        .read("/etc/containerd/config.toml")
        .contains("runtimes.vmpod]"));

    // SAFETY: a signal to our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > STEP_TIMEOUT {
            panic!(
                "no exit within {STEP_TIMEOUT:?} of SIGTERM: {}",
                fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}: {text}");
    assert!(text.contains("vmpod-deploy: uninstalling"), "{text}");
    assert!(
        text.contains("restored /etc/containerd/config.toml"),
        "{text}"
    );
    assert_eq!(fixture.snapshot(), before, "{text}");
}
