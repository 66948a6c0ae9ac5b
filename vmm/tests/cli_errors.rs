// SPDX-License-Identifier: Apache-2.0
//! Every way `vmpod-vm`'s input can be wrong ends it with one line naming
//! the problem and exit status 2; host problems with status 1.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{elf_kernel, kvm_available, path_str, run_command, run_vmpod_vm, Program, TestDir};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs vmpod-vm with `args` and checks it failed with `code` and exactly
/// one error line containing each of `needles`.
fn assert_fails(args: &[&str], code: i32, needles: &[&str]) {
    let out = run_vmpod_vm(args, TIMEOUT);
    assert_eq!(out.status, Some(code), "{args:?}: {out:?}");
    let errors = common::error_lines(&out);
    assert_eq!(errors.len(), 1, "{args:?}: {out:?}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{args:?}: missing {needle:?} in {out:?}"
        );
    }
    assert_eq!(out.stdout, "", "{args:?}");
}

fn good_kernel(dir: &TestDir) -> std::path::PathBuf {
    dir.write(
        "kernel.elf",
        &elf_kernel(&Program::new().print_and_reset("x"), false),
    )
}

#[test]
fn test_no_kernel() {
    assert_fails(&[], 2, &["No kernel given"]);
}

#[test]
fn test_bad_flag_values() {
    assert_fails(&["--kernel", "/k", "--vcpus", "two"], 2, &["--vcpus"]);
    assert_fails(&["--kernel", "/k", "--memory=-5"], 2, &["--memory"]);
    assert_fails(
        &["--kernel", "/k", "--serial", "tty"],
        2,
        &["tty", "stdout, none or file:PATH"],
    );
    assert_fails(&["--kernel", "/k", "--cpu-template", "fast"], 2, &["fast"]);
    assert_fails(&["--kernel", "/k", "--bogus"], 2, &["--bogus"]);
}

#[test]
fn test_console_limit_too_small() {
    assert_fails(
        &["--kernel", "/k", "--console-max-bytes", "100"],
        2,
        &["console-max-bytes 100", "at least 4096"],
    );
    assert_fails(
        &["--kernel", "/k", "--console-max-bytes", "lots"],
        2,
        &["--console-max-bytes"],
    );
}

#[test]
fn test_vcpu_count_out_of_range() {
    assert_fails(&["--kernel", "/k", "--vcpus", "0"], 2, &["vCPU count 0"]);
    assert_fails(
        &["--kernel", "/k", "--vcpus", "33"],
        2,
        &["vCPU count 33", "between 1 and 32"],
    );
}

#[test]
fn test_memory_out_of_range() {
    assert_fails(
        &["--kernel", "/k", "--memory", "8"],
        2,
        &["8 MiB is too small"],
    );
    assert_fails(
        &["--kernel", "/k", "--memory", "1000000000"],
        2,
        &["more than the host"],
    );
}

#[test]
fn test_bad_config_files() {
    let dir = TestDir::new("badconfig");
    let unknown = dir.write("unknown.toml", b"kernel = \"/k\"\nmemroy = 64\n");
    assert_fails(
        &["--config", path_str(&unknown)],
        2,
        &["unknown.toml", "memroy"],
    );
    let wrong_type = dir.write("type.toml", b"kernel = \"/k\"\nvcpus = \"many\"\n");
    assert_fails(
        &["--config", path_str(&wrong_type)],
        2,
        &["type.toml", "invalid type"],
    );
    let not_toml = dir.write("garbage.toml", b"kernel = [\n");
    assert_fails(&["--config", path_str(&not_toml)], 2, &["garbage.toml"]);
    let range = dir.write("range.toml", b"kernel = \"/k\"\nvcpus = 0\n");
    assert_fails(&["--config", path_str(&range)], 2, &["vCPU count 0"]);
    assert_fails(
        &["--config", "/nonexistent/vmpod.toml"],
        2,
        &["Cannot read the config file /nonexistent/vmpod.toml"],
    );
}

// The checks below load files, which happens once /dev/kvm is open.

#[test]
fn test_missing_and_unreadable_kernel() {
    if !kvm_available("test_missing_and_unreadable_kernel") {
        return;
    }
    assert_fails(
        &["--kernel", "/nonexistent/vmlinux"],
        2,
        &[
            "Cannot read the kernel /nonexistent/vmlinux",
            "No such file",
        ],
    );
    let dir = TestDir::new("kerneldir");
    // A directory opens but cannot be read (root reads any regular file).
    assert_fails(
        &["--kernel", path_str(dir.path())],
        2,
        &["Cannot read the kernel"],
    );
}

#[test]
fn test_unrecognised_kernel() {
    if !kvm_available("test_unrecognised_kernel") {
        return;
    }
    let dir = TestDir::new("badkernels");
    let junk = dir.write("junk", &[0x42; 4096]);
    assert_fails(
        &["--kernel", path_str(&junk)],
        2,
        &["Unrecognised kernel image", "ELF vmlinux or a bzImage"],
    );
    let empty = dir.write("empty", &[]);
    assert_fails(
        &["--kernel", path_str(&empty)],
        2,
        &["Unrecognised kernel image"],
    );
    // A rejected launch creates no console file.
    let console = dir.path().join("console");
    assert_fails(
        &[
            "--kernel",
            path_str(&junk),
            "--serial",
            &format!("file:{}", path_str(&console)),
        ],
        2,
        &["Unrecognised kernel image"],
    );
    assert!(!console.exists(), "{} left behind", console.display());
    let mut truncated_elf = elf_kernel(&[0x90; 16], false);
    truncated_elf.truncate(40);
    let truncated = dir.write("truncated", &truncated_elf);
    assert_fails(
        &["--kernel", path_str(&truncated)],
        2,
        &["Unrecognised kernel image"],
    );
}

#[test]
fn test_initrd_missing_or_too_large() {
    if !kvm_available("test_initrd_missing_or_too_large") {
        return;
    }
    let dir = TestDir::new("initrd");
    let kernel = good_kernel(&dir);
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--initrd",
            "/nonexistent/initrd",
        ],
        2,
        &["Cannot read the initrd /nonexistent/initrd"],
    );
    let big = dir.path().join("big.cpio");
    let file = std::fs::File::create(&big).unwrap();
    file.set_len(40 << 20).unwrap();
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--initrd",
            path_str(&big),
            "--memory",
            "32",
        ],
        2,
        &["does not fit in guest memory"],
    );
}

#[test]
fn test_cmdline_too_long() {
    if !kvm_available("test_cmdline_too_long") {
        return;
    }
    let dir = TestDir::new("cmdline");
    let kernel = good_kernel(&dir);
    let long = "x".repeat(3000);
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--cpu-template",
            "host",
            "--cmdline",
            &long,
        ],
        2,
        &["command line is too long", "3000 bytes", "2047"],
    );
}

#[test]
fn test_serial_file_in_missing_directory() {
    if !kvm_available("test_serial_file_in_missing_directory") {
        return;
    }
    let dir = TestDir::new("serialfile");
    let kernel = good_kernel(&dir);
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--serial",
            "file:/nonexistent/dir/console",
        ],
        2,
        &["serial output file /nonexistent/dir/console"],
    );
}

/// Runs vmpod-vm in a private mount namespace where `setup` (a shell
/// snippet) has changed /dev/kvm first.
fn run_without_kvm(setup: &str, kernel: &str) -> common::Outcome {
    let script = format!("{setup} && exec \"$0\" --kernel \"$1\"");
    run_command(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(env!("CARGO_BIN_EXE_vmpod-vm"))
            .arg(kernel),
        TIMEOUT,
    )
}

#[test]
fn test_missing_or_unusable_dev_kvm() {
    let dir = TestDir::new("nokvm");
    let kernel = good_kernel(&dir);
    let probe = run_command(Command::new("unshare").args(["--mount", "true"]), TIMEOUT);
    if probe.status != Some(0) {
        eprintln!(
            "skipped test_missing_or_unusable_dev_kvm: cannot create a mount namespace: {}",
            probe.stderr.trim()
        );
        return;
    }
    let missing = run_without_kvm("mount -t tmpfs none /dev", path_str(&kernel));
    assert_eq!(missing.status, Some(1), "{missing:?}");
    assert_eq!(common::error_lines(&missing).len(), 1, "{missing:?}");
    assert!(
        missing.stderr.contains("Cannot open /dev/kvm"),
        "{missing:?}"
    );

    let unusable = run_without_kvm("mount --bind /dev/null /dev/kvm", path_str(&kernel));
    assert_eq!(unusable.status, Some(1), "{unusable:?}");
    assert_eq!(common::error_lines(&unusable).len(), 1, "{unusable:?}");
    assert!(
        unusable.stderr.contains("/dev/kvm is not a KVM device"),
        "{unusable:?}"
    );
}

#[test]
fn test_bad_device_flags() {
    let k = ["--kernel", "/k"];
    let long_name = format!("cid=3,socket=/run/{}", "s".repeat(72));
    let cases: [(&[&str], &[&str]); 11] = [
        (&["--disk", "path=a,size=1"], &["--disk", "'size'"]),
        (&["--net", "tap=t,mtu=9"], &["Invalid MTU '9'"]),
        (
            &["--net", "tap=t,netns=pod"],
            &["Invalid network namespace 'pod'"],
        ),
        (&["--disk", "readonly"], &["'path=' is required"]),
        (&["--net", "tap=a/b"], &["Invalid tap name 'a/b'"]),
        (
            &["--net", "tap=t,mac=01:02:03:04:05:06"],
            &["Invalid MAC address"],
        ),
        (&["--vsock", "cid=2,socket=/s"], &["Invalid vsock CID '2'"]),
        (&["--vsock", "cid=3"], &["'socket=' is required"]),
        (
            &["--vsock", &long_name],
            &["names no file of at most 71 bytes"],
        ),
        (&["--fs", "tag=,dir=/d"], &["'tag=' is required"]),
        (&["--fs", "tag=t,dir=/d,rw"], &["--fs", "'rw'"]),
    ];
    for (flags, needles) in cases {
        let args: Vec<&str> = k.iter().chain(flags).copied().collect();
        assert_fails(&args, 2, needles);
    }
}

#[test]
fn test_bad_device_tables_in_config_file() {
    let dir = TestDir::new("devconfig");
    let cases = [
        (
            "[[fs]]\ntag = \"t\"\ndir = \"/a\"\n[[fs]]\ntag = \"t\"\ndir = \"/b\"\n",
            "'t' is used twice",
        ),
        ("[vsock]\ncid = 3\n", "missing field `socket`"),
        (
            "[[net]]\ntap = \"t\"\nqueues = 2\n",
            "unknown field `queues`",
        ),
    ];
    for (i, (text, needle)) in cases.into_iter().enumerate() {
        let file = dir.write(&format!("c{i}.toml"), text.as_bytes());
        assert_fails(
            &["--kernel", "/k", "--config", path_str(&file)],
            2,
            &[needle],
        );
    }
}

#[test]
fn test_missing_disk_image() {
    if !kvm_available("test_missing_disk_image") {
        return;
    }
    let dir = TestDir::new("nodisk");
    let kernel = good_kernel(&dir);
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--disk",
            "path=/nonexistent/disk.img",
        ],
        2,
        &["Cannot open the disk image /nonexistent/disk.img"],
    );
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--disk",
            &format!("path={}", path_str(dir.path())),
        ],
        2,
        &["Cannot open the disk image", "Is a directory"],
    );
}

#[test]
fn test_missing_tap() {
    if !kvm_available("test_missing_tap") {
        return;
    }
    let dir = TestDir::new("notap");
    let kernel = good_kernel(&dir);
    assert_fails(
        &["--kernel", path_str(&kernel), "--net", "tap=vmpodnotap9"],
        2,
        &["The tap vmpodnotap9 does not exist", "',create'"],
    );
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--net",
            "tap=vmpodnotap9,netns=/nonexistent/netns",
        ],
        2,
        &["Cannot enter the network namespace /nonexistent/netns for the tap vmpodnotap9"],
    );
}

#[test]
fn test_missing_shared_directory() {
    if !kvm_available("test_missing_shared_directory") {
        return;
    }
    let dir = TestDir::new("noshare");
    let kernel = good_kernel(&dir);
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--fs",
            "tag=t,dir=/nonexistent/share",
        ],
        2,
        &["The shared directory /nonexistent/share does not exist"],
    );
}

#[test]
fn test_unusable_vsock_socket_path() {
    if !kvm_available("test_unusable_vsock_socket_path") {
        return;
    }
    let dir = TestDir::new("novsock");
    let kernel = good_kernel(&dir);
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--vsock",
            "cid=3,socket=/nonexistent/dir/v.sock",
        ],
        2,
        &["Cannot listen on the vsock socket /nonexistent/dir/v.sock"],
    );
    // A file that is not a socket is left alone.
    let file = dir.write("not-a-socket", b"keep me");
    assert_fails(
        &[
            "--kernel",
            path_str(&kernel),
            "--vsock",
            &format!("cid=3,socket={}", path_str(&file)),
        ],
        2,
        &["exists and is not a socket"],
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[test]
fn test_bad_seccomp_filter_files() {
    let dir = TestDir::new("seccompfilter");
    assert_fails(
        &["--kernel", "/k", "--seccomp-filter", "/nonexistent/f.json"],
        2,
        &[
            "Cannot read the seccomp filter file /nonexistent/f.json",
            "No such file",
        ],
    );
    let not_json = dir.write("garbage.json", b"{ main");
    assert_fails(
        &["--kernel", "/k", "--seccomp-filter", path_str(&not_json)],
        2,
        &["Invalid seccomp filter file", "garbage.json"],
    );
    let allow =
        r#"{"mismatch_action": "trap", "match_action": "allow", "filter": [{"syscall": "read"}]}"#;
    let no_vcpu = dir.write(
        "novcpu.json",
        format!(r#"{{"main": {allow}, "devices": {allow}}}"#).as_bytes(),
    );
    assert_fails(
        &["--kernel", "/k", "--seccomp-filter", path_str(&no_vcpu)],
        2,
        &["novcpu.json has no filter for the 'vcpu' thread"],
    );
    let bad_name = dir.write(
        "badname.json",
        br#"{"main": {"mismatch_action": "trap", "match_action": "allow",
             "filter": [{"syscall": "no_such_call"}]}}"#,
    );
    assert_fails(
        &["--kernel", "/k", "--seccomp-filter", path_str(&bad_name)],
        2,
        &["badname.json", "Invalid syscall name: no_such_call"],
    );
    assert_fails(
        &[
            "--kernel",
            "/k",
            "--seccomp-filter",
            path_str(&no_vcpu),
            "--no-seccomp",
        ],
        2,
        &["--no-seccomp", "cannot be used with"],
    );
}

#[test]
fn test_bad_api_socket() {
    let dir = TestDir::new("api");
    let kernel = good_kernel(&dir);
    let kernel = path_str(&kernel);
    assert_fails(
        &["--kernel", kernel, "--api", "tcp:127.0.0.1:80"],
        2,
        &["Invalid --api \"tcp:127.0.0.1:80\": expected unix:PATH"],
    );
    assert_fails(
        &["--kernel", kernel, "--api", "unix:"],
        2,
        &["Invalid --api"],
    );
    // Something in the way is left alone.
    let taken = dir.write("taken.sock", b"not a socket");
    assert_fails(
        &[
            "--kernel",
            kernel,
            "--api",
            &format!("unix:{}", path_str(&taken)),
        ],
        2,
        &["The API socket", "already exists"],
    );
    assert_eq!(std::fs::read(&taken).unwrap(), b"not a socket");
    let missing_dir = dir.path().join("no/such/dir/api.sock");
    assert_fails(
        &[
            "--kernel",
            kernel,
            "--api",
            &format!("unix:{}", path_str(&missing_dir)),
        ],
        2,
        &["Cannot bind the API socket"],
    );
    // A launch refused after the socket was bound removes it.
    let socket = dir.path().join("api.sock");
    assert_fails(
        &[
            "--kernel",
            path_str(&dir.path().join("no-kernel")),
            "--api",
            &format!("unix:{}", path_str(&socket)),
        ],
        2,
        &["Cannot read the kernel"],
    );
    assert!(!socket.exists(), "API socket left behind");
}

#[test]
fn test_restore_of_a_missing_or_damaged_snapshot() {
    let dir = TestDir::new("restore");
    let kernel = good_kernel(&dir);
    let kernel = path_str(&kernel);
    let missing = dir.path().join("none");
    assert_fails(
        &["--kernel", kernel, "--restore", path_str(&missing)],
        2,
        &["Cannot read the snapshot file", "vmstate"],
    );
    let snapshot = dir.path().join("snap");
    std::fs::create_dir(&snapshot).unwrap();
    std::fs::write(snapshot.join("vmstate"), b"VMPODSNP").unwrap();
    let console = dir.path().join("console");
    assert_fails(
        &[
            "--kernel",
            kernel,
            "--restore",
            path_str(&snapshot),
            "--serial",
            &format!("file:{}", path_str(&console)),
        ],
        2,
        &["Invalid snapshot", "truncated"],
    );
    assert!(!console.exists(), "console file left behind");
}
