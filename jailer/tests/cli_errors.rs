// SPDX-License-Identifier: Apache-2.0
//! Every bad flag of `vmpod-jailer` ends it with status 2 and one error line
//! naming the problem, before it makes anything: no root directory, no id
//! lease, no cgroup.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory of this test process, removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vmpod-jailer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the jailer with `args` and checks it failed with status 2 and one
/// error line containing `needle`.
fn assert_fails(args: &[&str], needle: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmpod-jailer"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("vmpod-jailer: error:") || l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{args:?}: {stderr}");
    assert!(
        errors[0].contains(needle),
        "{args:?}: {needle:?} not in {stderr}"
    );
    assert!(out.stdout.is_empty(), "{args:?}");
}

#[test]
fn test_bad_flags_fail_in_one_line_and_make_nothing() {
    let scratch = Scratch::new("flags");
    let dir = |name: &str| scratch.0.join(name).display().to_string();
    let exe = std::env::current_exe().unwrap().display().to_string();
    let (root, locks) = (dir("root"), dir("ids"));
    // The flags of a good command line, `extra` replacing or adding flags.
    let good = |extra: &[&str], tail: &[&str]| -> Vec<String> {
        let base = [
            ("--exec-file", exe.as_str()),
            ("--root", root.as_str()),
            ("--ids", "5000-5009"),
            ("--lock-dir", locks.as_str()),
            ("--address-space", "1024"),
        ];
        let mut args: Vec<String> = base
            .iter()
            .filter(|(flag, _)| !extra.contains(flag))
            .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(tail.iter().map(|s| s.to_string()));
        args
    };
    let vm = ["--kernel", "/kernel"];
    let cases: Vec<(Vec<String>, &str)> = vec![
        (good(&["--ids", "0-9"], &vm), "\"0-9\" is not FIRST-LAST"),
        (
            good(&["--ids", "9-1"], &vm),
            "the last id is below the first",
        ),
        (
            good(&["--cgroup", "relative/path"], &vm),
            "neither an absolute",
        ),
        (good(&["--cgroup", "/a/../b"], &vm), ". or .."),
        (
            good(&["--ro-bind", "/nonexistent-k:/kernel"], &vm),
            "--ro-bind /nonexistent-k",
        ),
        (
            good(&["--bind", "/tmp:/dev/x"], &vm),
            "/dev and /proc are the jailer's",
        ),
        (
            good(&["--bind", "/tmp:/a", "--bind", "/tmp:/a"], &vm),
            "/a is bound twice",
        ),
        (
            good(&["--netns", "/nonexistent-ns"], &vm),
            "--netns /nonexistent-ns",
        ),
        (
            good(&["--tap", "a/b"], &vm),
            "--tap \"a/b\": not an interface name",
        ),
        (good(&["--open-files", "3"], &vm), "--open-files"),
        (good(&["--address-space", "1"], &vm), "--address-space"),
        (good(&[], &[]), "no vmpod-vm arguments after --"),
        (good(&["--bogus"], &vm), "--bogus"),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_fails(&args, needle);
        assert!(!Path::new(&root).exists(), "{args:?} made the root");
        assert!(
            !Path::new(&locks).exists(),
            "{args:?} made the lock directory"
        );
    }
    assert_fails(&["--root", &root], "--exec-file");
    assert_fails(
        &good(&[], &vm)
            .iter()
            .map(|a| a.replace(&exe, "/nonexistent-vmm"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "--exec-file /nonexistent-vmm",
    );
}
