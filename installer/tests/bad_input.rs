// SPDX-License-Identifier: Apache-2.0
//! Every way `vmpod install`'s input can be wrong: one line naming the
//! problem, a failing status, and the root exactly as it was — including
//! failures in the middle of writing, which undo what was written; and
//! `vmpod prepare-template`'s, refused before anything is made.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::fs;
use std::process::Command;

use common::{assert_ok, assert_one_line_failure, Fixture, V2_CONFIG};

/// Install fails with status 1 and one line containing `expected`, and
/// the root is as it was.
fn assert_refused(fixture: &Fixture, extra: &[&str], expected: &str) {
    let before = fixture.snapshot();
    let line = assert_one_line_failure(&fixture.install(extra), 1, expected);
    assert!(line.starts_with("vmpod: install: "), "{line}");
    assert_eq!(fixture.snapshot(), before, "after: {line}");
}

#[test]
fn test_containerd_configs_it_cannot_edit() {
    let cases = [
        (
            "version = 4\n",
            "containerd config /etc/containerd/config.toml: version 4 is not supported",
        ),
        (
            "version = 2\n[plugins\n",
            "containerd config /etc/containerd/config.toml line 2:",
        ),
        (
            "disabled_plugins = [\"cri\"]\n",
            "has no `version` (a version 1 config)",
        ),
        (
            "version = 3\nimports = \"/etc/x.toml\"\n",
            "imports is not an array of strings",
        ),
        ("version = 2\nplugins = [1]\n", "plugins is not a table"),
    ];
    for (text, expected) in cases {
        let fixture = Fixture::new("bad-containerd");
        fixture.write("/etc/containerd/config.toml", text, 0o644);
        assert_refused(&fixture, &[], expected);
    }
}

#[test]
fn test_a_shim_config_that_is_not_toml() {
    let fixture = Fixture::new("bad-shim-config");
    fixture.write("/etc/vmpod/config.toml", "kernel = = 1\n", 0o644);
    assert_refused(&fixture, &[], "vmpod config /etc/vmpod/config.toml line 1:");
}

#[test]
fn test_missing_and_wrong_artifacts() {
    let fixture = Fixture::new("no-kernel");
    fs::remove_file(fixture.artifacts().join("vmlinux")).unwrap();
    assert_refused(&fixture, &[], "artifact vmlinux is in none of: ");
    let fixture = Fixture::new("bad-initrd");
    fixture.artifact("vmpod-agent-initrd.cpio", b"\x1f\x8b gzip");
    assert_refused(&fixture, &[], "is not an uncompressed newc cpio archive");
    let fixture = Fixture::new("bad-binary");
    fixture.artifact("vmpod-vm", b"#!/bin/sh\n");
    assert_refused(&fixture, &[], "vmpod-vm is not an ELF executable");
    let fixture = Fixture::new("no-from");
    let empty = fixture.dir.join("empty");
    fs::create_dir(&empty).unwrap();
    let before = fixture.snapshot();
    let root = fixture.root();
    let out = fixture.vmpod(&[
        "install",
        "--root",
        root.to_str().unwrap(),
        "--from",
        empty.to_str().unwrap(),
    ]);
    assert_one_line_failure(&out, 1, "artifact containerd-shim-vmpod-v2 is in none of: ");
    assert_eq!(fixture.snapshot(), before);
}

#[test]
fn test_roots_that_cannot_be_installed_into() {
    let fixture = Fixture::new("bad-root");
    let from = fixture.artifacts();
    let from = from.to_str().unwrap();
    let missing = fixture.dir.join("missing");
    let out = fixture.vmpod(&[
        "install",
        "--root",
        missing.to_str().unwrap(),
        "--from",
        from,
    ]);
    assert_one_line_failure(&out, 1, "missing: No such file or directory");
    assert!(!missing.exists());
    let file = fixture.dir.join("file");
    fs::write(&file, "").unwrap();
    let out = fixture.vmpod(&["install", "--root", file.to_str().unwrap(), "--from", from]);
    assert_one_line_failure(&out, 1, "file: not a directory");
    // --restart-containerd on a root without systemctl: refused before writing.
    assert_refused(
        &fixture,
        &["--restart-containerd"],
        "cannot restart containerd: systemctl is not in",
    );
}

/// A write that fails after others succeeded: the binaries are written
/// before the kernel, whose directory is a file here.
#[test]
fn test_a_failure_midway_undoes_every_write() {
    let fixture = Fixture::new("midway");
    fixture.write("/etc/containerd/config.toml", V2_CONFIG, 0o644);
    fixture.write(
        "/usr/local/share/vmpod",
        "a file where the directory goes",
        0o644,
    );
    assert_refused(
        &fixture,
        &[],
        "nothing installed: cannot make the directory",
    );
}

/// A re-install that fails midway puts back the first install's files.
#[test]
fn test_a_failed_reinstall_leaves_the_first_install() {
    let fixture = Fixture::new("reinstall");
    fixture.write("/etc/containerd/config.toml", V2_CONFIG, 0o644);
    assert_ok(&fixture.install(&[]));
    let kernel = fixture.path("/usr/local/share/vmpod/vmlinux");
    fs::remove_file(&kernel).unwrap();
    fs::create_dir(&kernel).unwrap();
    fixture.artifact("vmpod-vm", b"\x7fELF a newer vmpod-vm");
    assert_refused(
        &fixture,
        &[],
        "nothing installed: cannot replace (not a file)",
    );
    assert_eq!(
        fixture.read("/usr/local/bin/vmpod-vm"),
        "\x7fELF stand-in for vmpod-vm"
    );
}

/// A read-only root (a read-only bind mount in a mount namespace of the
/// command's own, so nothing outlives it).
#[test]
fn test_a_read_only_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped test_a_read_only_root: needs root for a read-only bind mount");
        return;
    }
    let fixture = Fixture::new("read-only");
    let root = fixture.root();
    let root = root.to_str().unwrap();
    let from = fixture.artifacts();
    let script = format!(
        "mount --bind {root} {root} && mount -o remount,bind,ro {root} && exec {} install --root {root} --from {}",
        env!("CARGO_BIN_EXE_vmpod"),
        from.display()
    );
    let before = fixture.snapshot();
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_one_line_failure(&out, 1, "Read-only file system");
    assert_eq!(fixture.snapshot(), before);
}

#[test]
fn test_bad_flags_and_a_bad_record() {
    let fixture = Fixture::new("flags");
    for (args, named) in [
        (&["install", "--colour"][..], "--colour"),
        (&["install", "--root"], "--root"),
        (&["uninstall", "extra"], "extra"),
        (&["check", "--from", "/x"], "--from"),
        (&["frobnicate"], "frobnicate"),
    ] {
        let out = fixture.vmpod(args);
        let line = assert_one_line_failure(&out, 2, "vmpod: error: ");
        assert!(line.contains(named), "{args:?}: {line}");
    }
    assert!(fixture.snapshot().is_empty());
    fixture.write(
        "/var/lib/vmpod/installer/record.toml",
        "[[file]]\npath = 1\n",
        0o600,
    );
    let root = fixture.root();
    let out = fixture.vmpod(&["uninstall", "--root", root.to_str().unwrap()]);
    assert_one_line_failure(&out, 1, "vmpod: uninstall: install record ");
    assert_refused(&fixture, &[], "install record ");
    // Uninstalling with a restart on a root without systemctl: refused
    // before anything is uninstalled.
    let fixture = Fixture::new("uninstall-restart");
    assert_ok(&fixture.install(&[]));
    let installed = fixture.snapshot();
    let root = fixture.root();
    let out = fixture.vmpod(&[
        "uninstall",
        "--root",
        root.to_str().unwrap(),
        "--restart-containerd",
    ]);
    assert_one_line_failure(
        &out,
        1,
        "vmpod: uninstall: cannot restart containerd: systemctl is not in",
    );
    assert_eq!(fixture.snapshot(), installed);
}

/// `vmpod prepare-template`'s bad input: flags (status 2), and configs it
/// cannot make a template with (status 1); each one line, before anything
/// is made (no state directory, no template directory).
#[test]
fn test_prepare_template_bad_input() {
    let fixture = Fixture::new("prepare");
    for (args, named) in [
        (
            &["prepare-template", "--interfaces", "17"][..],
            "--interfaces",
        ),
        (&["prepare-template", "--interfaces", "-1"], "-1"),
        (&["prepare-template", "--interfaces", "one"], "--interfaces"),
        (&["prepare-template", "--config"], "--config"),
        (&["prepare-template", "--root", "/"], "--root"),
        (&["prepare-template", "extra"], "extra"),
    ] {
        let out = fixture.vmpod(args);
        let line = assert_one_line_failure(&out, 2, "vmpod: error: ");
        assert!(line.contains(named), "{args:?}: {line}");
    }
    // --prepare-template only on this node's root: refused before install.
    assert_refused(
        &fixture,
        &["--prepare-template"],
        "--prepare-template needs --root /",
    );
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let out = fixture.vmpod(&["prepare-template"]);
        assert_one_line_failure(&out, 1, "vmpod: prepare-template: needs root");
        eprintln!("skipped the config cases of test_prepare_template_bad_input: needs root");
        return;
    }
    let state = fixture.dir.join("state");
    let exe = std::env::current_exe().unwrap();
    let files = format!(
        "kernel = {exe:?}\ninitrd = {exe:?}\nvmm = {exe:?}\nunconfined = true\nstate-dir = {:?}\n",
        state.display().to_string()
    );
    let config = fixture.dir.join("config.toml");
    let config_arg = config.to_str().unwrap();
    for (text, expected) in [
        (
            format!("{files}templates = false\n"),
            "vmpod: prepare-template: templates are off (templates = false in the config)",
        ),
        (
            format!("{files}template-max = 0\n"),
            "template-max: 0 is not within 1..=1024",
        ),
        (
            format!("{files}colour = 1\n"),
            "line 6: unknown field `colour`",
        ),
        (
            files.replace("kernel = \"", "kernel = \"/nonexistent"),
            "kernel: /nonexistent",
        ),
    ] {
        fs::write(&config, &text).unwrap();
        let out = fixture.vmpod(&["prepare-template", "--config", config_arg]);
        assert_one_line_failure(&out, 1, expected);
        assert!(!state.exists(), "{text}: the state directory was made");
    }
    let missing = fixture.dir.join("missing.toml");
    let out = fixture.vmpod(&["prepare-template", "--config", missing.to_str().unwrap()]);
    assert_one_line_failure(
        &out,
        1,
        &format!(
            "vmpod: prepare-template: config {}: No such file",
            missing.display()
        ),
    );
    assert!(!state.exists());
}
