// SPDX-License-Identifier: Apache-2.0
//! `vmpod install`, `uninstall` and `check` against temporary roots: a
//! containerd 1.6 config with comments, a containerd 2.x config, no config
//! at all, an admin's own files in the way; a re-install changes nothing,
//! and uninstall gives back the tree as it was, byte for byte.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{assert_ok, Fixture, BINARIES, V2_CONFIG, V3_CONFIG};

const BACKUP: &str = "/var/lib/vmpod/installer/backup/etc/containerd/config.toml";

fn mode(fixture: &Fixture, node: &str) -> u32 {
    fs::metadata(fixture.path(node))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The installed files are the artifacts, with their modes, and the shim's
/// config points at them.
fn assert_installed(fixture: &Fixture) {
    for name in BINARIES {
        let node = format!("/usr/local/bin/{name}");
        assert_eq!(fixture.read(&node), format!("\x7fELF stand-in for {name}"));
        assert_eq!(mode(fixture, &node), 0o755, "{node}");
    }
    assert_eq!(
        fixture.read("/usr/local/share/vmpod/vmlinux"),
        "\x7fELF stand-in for vmlinux"
    );
    assert_eq!(
        mode(fixture, "/usr/local/share/vmpod/vmpod-agent-initrd.cpio"),
        0o644
    );
    let config: toml::Table = toml::from_str(&fixture.read("/etc/vmpod/config.toml")).unwrap();
    assert_eq!(
        config["kernel"].as_str(),
        Some("/usr/local/share/vmpod/vmlinux")
    );
    assert_eq!(
        config["initrd"].as_str(),
        Some("/usr/local/share/vmpod/vmpod-agent-initrd.cpio")
    );
    assert_eq!(config["vmm"].as_str(), Some("/usr/local/bin/vmpod-vm"));
    assert_eq!(
        config["jailer"].as_str(),
        Some("/usr/local/bin/vmpod-jailer")
    );
}

/// The runtime table `table` registers vmpod for the CRI plugin.
fn assert_runtime(table: &toml::Value) {
    assert_eq!(
        table["runtime_type"].as_str(),
        Some("io.containerd.vmpod.v2")
    );
    let annotations: Vec<&str> = table["pod_annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(annotations, ["io.vmpod.vm.vcpus", "io.vmpod.vm.memory"]);
    assert_eq!(
        table["privileged_without_host_devices"].as_bool(),
        Some(true)
    );
}

#[test]
fn test_containerd_1_6_config_edited_idempotently_and_restored() {
    let fixture = Fixture::new("v2");
    fixture.write("/etc/containerd/config.toml", V2_CONFIG, 0o640);
    let before = fixture.snapshot();

    let out = fixture.install(&[]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("(config version 2)"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("replaced /etc/containerd/config.toml"),
        "{}",
        stdout(&out)
    );
    assert_installed(&fixture);
    let text = fixture.read("/etc/containerd/config.toml");
    // Comments and layout kept: the admin's text is all there, in order.
    assert!(
        text.starts_with(V2_CONFIG.split("[plugins]").next().unwrap()),
        "{text}"
    );
    for line in V2_CONFIG.lines() {
        assert!(text.contains(line), "{line:?} lost: {text}");
    }
    let config: toml::Value = toml::from_str(&text).unwrap();
    let runtimes = &config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
    assert_runtime(&runtimes["vmpod"]);
    assert_eq!(
        runtimes["runc"]["runtime_type"].as_str(),
        Some("io.containerd.runc.v2")
    );
    assert_eq!(mode(&fixture, "/etc/containerd/config.toml"), 0o640);
    assert_eq!(fixture.read(BACKUP), V2_CONFIG);
    assert_eq!(mode(&fixture, BACKUP), 0o640);

    // Again: not a byte changes, and the backup is still the admin's file.
    let installed = fixture.snapshot();
    assert_ok(&fixture.install(&[]));
    assert_eq!(fixture.snapshot(), installed);

    let out = fixture.uninstall();
    assert_ok(&out);
    assert!(
        stdout(&out).contains("restored /etc/containerd/config.toml"),
        "{}",
        stdout(&out)
    );
    assert_eq!(fixture.snapshot(), before);
    let out = fixture.uninstall();
    assert_ok(&out);
    assert!(
        stdout(&out).contains("nothing to uninstall"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn test_containerd_2_config_imports_a_drop_in() {
    let fixture = Fixture::new("v3");
    fixture.write("/etc/containerd/config.toml", V3_CONFIG, 0o644);
    let before = fixture.snapshot();
    let out = fixture.install(&[]);
    assert_ok(&out);
    assert!(
        stdout(&out).contains("(config version 3)"),
        "{}",
        stdout(&out)
    );
    assert_installed(&fixture);
    assert_eq!(
        fixture.read("/etc/containerd/config.toml"),
        V3_CONFIG.replace(
            r#"imports = ["/etc/containerd/runtimes/*.toml"]"#,
            r#"imports = ["/etc/containerd/runtimes/*.toml", "/etc/containerd/conf.d/vmpod.toml"]"#
        )
    );
    let drop_in: toml::Value =
        toml::from_str(&fixture.read("/etc/containerd/conf.d/vmpod.toml")).unwrap();
    assert_eq!(drop_in["version"].as_integer(), Some(3));
    assert_runtime(
        &drop_in["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["vmpod"],
    );
    let installed = fixture.snapshot();
    assert_ok(&fixture.install(&[]));
    assert_eq!(fixture.snapshot(), installed);
    assert_ok(&fixture.uninstall());
    assert_eq!(fixture.snapshot(), before);
}

#[test]
fn test_no_containerd_config_gets_a_minimal_one_removed_at_uninstall() {
    let fixture = Fixture::new("none");
    let out = fixture.install(&[]);
    assert_ok(&out);
    assert_installed(&fixture);
    let text = fixture.read("/etc/containerd/config.toml");
    assert!(
        text.starts_with("# containerd's config, written by `vmpod install`"),
        "{text}"
    );
    let config: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(config["version"].as_integer(), Some(2));
    assert_runtime(
        &config["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["vmpod"],
    );
    assert!(!fixture.path(BACKUP).exists());
    assert_ok(&fixture.uninstall());
    assert!(
        fixture.snapshot().is_empty(),
        "{:?}",
        fixture.snapshot().keys()
    );
}

#[test]
fn test_an_admins_files_are_replaced_and_given_back() {
    let fixture = Fixture::new("admin");
    fixture.write("/usr/local/bin/vmpod-vm", "an older vmpod-vm", 0o700);
    fixture.write(
        "/etc/vmpod/config.toml",
        "# mine\nkernel = \"/old/vmlinux\"\nmemory = 512\n",
        0o600,
    );
    fixture.write("/usr/local/bin/other-tool", "not vmpod's", 0o755);
    std::os::unix::fs::symlink("/opt/jailer", fixture.path("/usr/local/bin/vmpod-jailer")).unwrap();
    let before = fixture.snapshot();
    let out = fixture.install(&[]);
    assert_ok(&out);
    for node in [
        "/usr/local/bin/vmpod-vm",
        "/usr/local/bin/vmpod-jailer",
        "/etc/vmpod/config.toml",
    ] {
        assert!(
            stdout(&out).contains(&format!("replaced {node}\n")),
            "{node}: {}",
            stdout(&out)
        );
    }
    assert_installed(&fixture);
    let config = fixture.read("/etc/vmpod/config.toml");
    assert!(config.starts_with("# mine\n"), "{config}");
    assert!(config.contains("memory = 512\n"), "{config}");
    assert_eq!(mode(&fixture, "/etc/vmpod/config.toml"), 0o600);
    assert_ok(&fixture.uninstall());
    assert_eq!(fixture.snapshot(), before);
}

#[test]
fn test_uninstall_keeps_a_directory_that_holds_someone_elses_file() {
    let fixture = Fixture::new("keep");
    assert_ok(&fixture.install(&[]));
    fixture.write("/etc/vmpod/notes", "an admin's", 0o644);
    let out = fixture.uninstall();
    assert_ok(&out);
    assert!(
        stdout(&out).contains("kept /etc/vmpod "),
        "{}",
        stdout(&out)
    );
    let left: Vec<_> = fixture.snapshot().into_keys().collect();
    assert_eq!(
        left,
        [
            Path::new("etc"),
            Path::new("etc/vmpod"),
            Path::new("etc/vmpod/notes")
        ]
    );
}

/// check's lines: one per check, `ok` or `missing`, and a failing status
/// while anything is missing.
#[test]
fn test_check_reports_one_line_per_check() {
    let fixture = Fixture::new("check");
    let root = fixture.root();
    let root = root.to_str().unwrap();
    let out = fixture.vmpod(&["check", "--root", root]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    for line in text.lines() {
        assert!(
            line.starts_with("ok      ") || line.starts_with("missing "),
            "{line}"
        );
    }
    let line = |what: &str| {
        let text = text.clone();
        text.lines()
            .find(|line| line[8..].starts_with(what))
            .unwrap_or_else(|| panic!("no {what} line: {text}"))
            .to_owned()
    };
    assert!(line("/dev/kvm:").starts_with("missing "), "{text}");
    assert!(line("/dev/net/tun:").starts_with("missing "), "{text}");
    assert!(
        line("/dev/vhost-vsock: not needed").starts_with("ok "),
        "{text}"
    );
    assert!(line("kernel: openat2:").starts_with("ok "), "{text}");
    assert!(line("kernel: mount API:").starts_with("ok "), "{text}");
    assert!(line("cgroups:").starts_with("missing "), "{text}");
    assert!(
        line("containerd: containerd is not in").starts_with("missing "),
        "{text}"
    );
    assert!(
        line("/usr/local/bin/vmpod-vm:").starts_with("missing "),
        "{text}"
    );
    assert!(
        line("containerd runtime vmpod:").starts_with("missing "),
        "{text}"
    );

    assert_ok(&fixture.install(&[]));
    let out = fixture.vmpod(&["check", "--root", root]);
    let text = stdout(&out);
    for name in BINARIES {
        assert!(
            text.contains(&format!("ok      /usr/local/bin/{name}: installed\n")),
            "{text}"
        );
    }
    assert!(
        text.contains("ok      /etc/vmpod/config.toml: installed\n"),
        "{text}"
    );
    assert!(
        text.contains("ok      containerd runtime vmpod: registered in /etc/containerd/config.toml (version 2)\n"),
        "{text}"
    );
}

/// The running host, as the node: its devices and containerd, where it has them.
#[test]
fn test_check_of_this_host() {
    let fixture = Fixture::new("host");
    let text = stdout(&fixture.vmpod(&["check"]));
    let kvm_usable = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let expected = if kvm_usable {
        "ok      /dev/kvm: usable (KVM API 12)"
    } else {
        "missing /dev/kvm:"
    };
    assert!(text.contains(expected), "{text}");
    let containerd = std::process::Command::new("containerd")
        .arg("--version")
        .output();
    match containerd {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout);
            let version = version.split_whitespace().nth(2).unwrap();
            let version = version.trim_start_matches('v').split('~').next().unwrap();
            assert!(
                text.contains(&format!("ok      containerd: {version} at ")),
                "{text}"
            );
        }
        _ => assert!(text.contains("missing containerd:"), "{text}"),
    }
    assert!(text.contains("ok      cgroups: "), "{text}");
}

/// containerd's config edited after install (another runtime added):
/// uninstall takes only vmpod out and keeps the edit.
#[test]
fn test_a_config_changed_since_install_keeps_the_change() {
    let fixture = Fixture::new("changed");
    fixture.write("/etc/containerd/config.toml", V2_CONFIG, 0o640);
    assert_ok(&fixture.install(&[]));
    let other = "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.other]\n  runtime_type = \"io.containerd.other.v2\"\n";
    let installed = fixture.read("/etc/containerd/config.toml");
    fixture.write(
        "/etc/containerd/config.toml",
        &format!("{installed}{other}"),
        0o640,
    );
    let out = fixture.uninstall();
    assert_ok(&out);
    assert!(
        stdout(&out)
            .contains("removed vmpod from /etc/containerd/config.toml (changed since install"),
        "{}",
        stdout(&out)
    );
    let text = fixture.read("/etc/containerd/config.toml");
    assert!(text.ends_with(other), "{text}");
    assert!(!text.contains("runtimes.vmpod"), "{text}");
    for line in V2_CONFIG.lines() {
        assert!(text.contains(line), "{line:?} lost: {text}");
    }
    assert_eq!(mode(&fixture, "/etc/containerd/config.toml"), 0o640);
    let left: Vec<_> = fixture.snapshot().into_keys().collect();
    assert_eq!(
        left,
        [
            Path::new("etc"),
            Path::new("etc/containerd"),
            Path::new("etc/containerd/config.toml")
        ]
    );
}

/// containerd's config edited between two installs: the second install
/// keeps the edit, and so does uninstall.
#[test]
fn test_a_config_changed_between_installs_keeps_the_change() {
    let fixture = Fixture::new("changed-reinstall");
    fixture.write("/etc/containerd/config.toml", V2_CONFIG, 0o644);
    assert_ok(&fixture.install(&[]));
    let other = "\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.other]\n  runtime_type = \"io.containerd.other.v2\"\n";
    let installed = fixture.read("/etc/containerd/config.toml");
    fixture.write(
        "/etc/containerd/config.toml",
        &format!("{installed}{other}"),
        0o644,
    );
    assert_ok(&fixture.install(&[]));
    assert!(fixture
        .read("/var/lib/vmpod/installer/record.toml")
        .contains("edited = true"));
    let out = fixture.uninstall();
    assert_ok(&out);
    assert!(
        stdout(&out).contains("removed vmpod from /etc/containerd/config.toml"),
        "{}",
        stdout(&out)
    );
    let text = fixture.read("/etc/containerd/config.toml");
    assert!(text.contains("runtimes.other]"), "{text}");
    assert!(!text.contains("runtimes.vmpod"), "{text}");
}
