// SPDX-License-Identifier: Apache-2.0
//! `vmpod-vm`'s seccomp filters against the real kernel: every thread of a
//! running VM runs under its own filter (`/proc/<pid>/task/*/status`), a
//! real Linux guest with devices boots under the built-in filters, and a
//! filter that lacks a call a thread makes stops the VM with one line and
//! exit status 3.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{elf_kernel, kvm_available, path_str, run_vmpod_vm, Program, TestDir};
use vmm::seccomp::{violation_message, ThreadLabel, DEFAULT_FILTERS_JSON};
use vmpod_integration_tests::{guest_or_skip, write_root_tree};

const TIMEOUT: Duration = Duration::from_secs(60);
/// A Linux boot on a host that emulates guest CPL0.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// `jmp $`: a guest that runs until it is killed.
const SPIN: [u8; 2] = [0xeb, 0xfe];

/// One thread's name and the seccomp lines of its status.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ThreadStatus {
    name: String,
    seccomp: String,
    filters: Option<String>,
    no_new_privs: String,
}

fn status_field(status: &str, key: &str) -> Option<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
}

/// The status of every thread of process `pid`.
fn thread_statuses(pid: u32) -> Vec<ThreadStatus> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut threads: Vec<ThreadStatus> = tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .map(|status| ThreadStatus {
            name: status_field(&status, "Name:").unwrap_or_default(),
            seccomp: status_field(&status, "Seccomp:").unwrap_or_default(),
            filters: status_field(&status, "Seccomp_filters:"),
            no_new_privs: status_field(&status, "NoNewPrivs:").unwrap_or_default(),
        })
        .collect();
    threads.sort_by(|a, b| a.name.cmp(&b.name));
    threads
}

/// vmpod-vm with `args`, its output in `dir`; killed on drop.
struct RunningVm(Child);

impl RunningVm {
    fn spawn(dir: &TestDir, bin: &Path, args: &[&str]) -> Self {
        let out = std::fs::File::create(dir.path().join("stdout")).unwrap();
        let err = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn vmpod-vm");
        RunningVm(child)
    }

    /// Polls the threads until `done` holds for them, the process ends or
    /// `timeout` passes; returns the last statuses seen.
    fn threads_until(
        &mut self,
        timeout: Duration,
        done: impl Fn(&[ThreadStatus]) -> bool,
    ) -> Vec<ThreadStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let threads = thread_statuses(self.0.id());
            let ended = matches!(self.0.try_wait(), Ok(Some(_)));
            if done(&threads) || ended || Instant::now() > deadline {
                return threads;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to end by itself; its exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("vmpod-vm did not end within {timeout:?}");
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The names of vmpod-vm's own threads, leaving out the workers KVM adds
/// to the process (`kvm-nx-lpage-recovery`, `kvm-pit/<pid>`), which run
/// kernel code only (their status is still checked).
fn names(threads: &[ThreadStatus]) -> Vec<&str> {
    threads
        .iter()
        .map(|t| t.name.as_str())
        .filter(|name| !name.starts_with("kvm-"))
        .collect()
}

/// The threads of a VM with two vCPUs and a device.
const THREADS: [&str; 4] = ["vcpu0", "vcpu1", "vmpod-devices", "vmpod-vm"];

#[test]
fn test_every_thread_runs_under_its_own_filter() {
    if !kvm_available("test_every_thread_runs_under_its_own_filter") {
        return;
    }
    let dir = TestDir::new("seccomp-threads");
    let kernel = dir.write("kernel.elf", &elf_kernel(&SPIN, false));
    let bin = Path::new(env!("CARGO_BIN_EXE_vmpod-vm"));
    let args = [
        "--kernel",
        path_str(&kernel),
        "--memory",
        "64",
        "--vcpus",
        "2",
        "--rng",
        "--serial",
        "none",
    ];
    let mut vm = RunningVm::spawn(&dir, bin, &args);
    let filtered = |threads: &[ThreadStatus]| {
        names(threads) == THREADS && threads.iter().all(|t| t.seccomp == "2")
    };
    let threads = vm.threads_until(TIMEOUT, filtered);
    assert!(filtered(&threads), "{threads:?}");
    for thread in &threads {
        assert_eq!(thread.no_new_privs, "1", "{thread:?}");
        // Each thread has exactly its own filter, none inherited.
        if let Some(count) = &thread.filters {
            assert_eq!(count, "1", "{thread:?}");
        }
    }
    drop(vm);

    // --no-seccomp: the same threads, unfiltered.
    let mut args = args.to_vec();
    args.push("--no-seccomp");
    let mut vm = RunningVm::spawn(&dir, bin, &args);
    let threads = vm.threads_until(TIMEOUT, |threads| names(threads) == THREADS);
    assert_eq!(names(&threads), THREADS, "{threads:?}");
    assert!(threads.iter().all(|t| t.seccomp == "0"), "{threads:?}");
    assert!(threads.iter().all(|t| t.no_new_privs == "1"), "{threads:?}");
}

/// The built-in JSON with `syscall` taken out of `thread`'s filter.
fn filters_without(dir: &TestDir, thread: &str, syscall: &str) -> std::path::PathBuf {
    let mut json: serde_json::Value = serde_json::from_str(DEFAULT_FILTERS_JSON).unwrap();
    let rules = json[thread]["filter"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|rule| rule["syscall"] != syscall);
    assert!(rules.len() < before, "{thread} does not allow {syscall}");
    dir.write(
        &format!("without-{syscall}.json"),
        json.to_string().as_bytes(),
    )
}

#[test]
fn test_disallowed_call_stops_the_vm_with_one_line() {
    if !kvm_available("test_disallowed_call_stops_the_vm_with_one_line") {
        return;
    }
    let dir = TestDir::new("seccomp-violation");
    let code = Program::new().print_and_reset("never printed\n");
    let kernel = dir.write("kernel.elf", &elf_kernel(&code, false));
    // The vCPU's first KVM_RUN, the device thread's first epoll_wait.
    let cases = [
        ("vcpu", "ioctl", ThreadLabel::vcpu(0), 16),
        ("devices", "epoll_wait", ThreadLabel::DEVICES, 232),
    ];
    for (thread, syscall, label, nr) in cases {
        let filters = filters_without(&dir, thread, syscall);
        let out = run_vmpod_vm(
            &[
                "--kernel",
                path_str(&kernel),
                "--memory",
                "64",
                "--rng",
                "--seccomp-filter",
                path_str(&filters),
            ],
            TIMEOUT,
        );
        assert_eq!(out.status, Some(3), "{out:?}");
        let errors = common::error_lines(&out);
        assert_eq!(errors.len(), 1, "{out:?}");
        let expected = violation_message(label, nr);
        assert_eq!(format!("{}\n", errors[0]), expected, "{out:?}");
        assert!(
            errors[0].contains(&format!(
                "the {label} thread made system call {nr} ({syscall})"
            )),
            "{out:?}"
        );
        assert_eq!(out.stdout, "", "the guest ran: {out:?}");
    }
}

/// A Linux guest with a virtio-fs share, virtio-rng and vsock boots, uses
/// them, and powers off under the built-in filters, every thread filtered
/// while it runs.
#[test]
fn test_linux_guest_with_devices_runs_under_the_filters() {
    let Some(guest) = guest_or_skip("test_linux_guest_with_devices_runs_under_the_filters") else {
        return;
    };
    let dir = TestDir::new("seccomp-linux");
    let share = dir.path().join("share");
    write_root_tree(&share, &guest.test_init).unwrap();
    let socket = dir.path().join("v.sock");
    let bin = Path::new(env!("CARGO_BIN_EXE_vmpod-vm"));
    let args = [
        "--kernel".to_string(),
        guest.vmlinux.display().to_string(),
        "--initrd".into(),
        guest.test_initrd.display().to_string(),
        "--memory".into(),
        "256".into(),
        "--cmdline".into(),
        "console=ttyS0 reboot=k panic=1 vmpod_fs=shared poweroff".into(),
        "--fs".into(),
        format!("tag=shared,dir={}", share.display()),
        "--vsock".into(),
        format!("cid=3,socket={}", socket.display()),
        "--rng".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vm = RunningVm::spawn(&dir, bin, &args);
    let expected = ["vcpu0", "vmpod-devices", "vmpod-vm"];
    let threads = vm.threads_until(BOOT_TIMEOUT, |threads| {
        names(threads) == expected && threads.iter().all(|t| t.seccomp == "2")
    });
    assert_eq!(names(&threads), expected, "{threads:?}");
    assert!(threads.iter().all(|t| t.seccomp == "2"), "{threads:?}");
    let status = vm.wait(BOOT_TIMEOUT);
    let console = std::fs::read_to_string(dir.path().join("stdout")).unwrap();
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert_eq!(status, Some(0), "console:\n{console}\nlog:\n{log}");
    assert!(
        console.contains("vmpod-test-init: fs=read \"written by the host\""),
        "console:\n{console}"
    );
    assert!(
        console.contains("vmpod-test-init: hwrng=virtio_rng.0 "),
        "console:\n{console}"
    );
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest.txt")).unwrap(),
        "written by the vmpod guest\n"
    );
}

/// A guest that prints more than its console file may hold: the file keeps
/// the newest output within its limit, and the vCPU thread that writes it
/// (and drops the older half, several times) does so under its filter.
#[test]
fn test_bounded_console_file_under_the_vcpu_filter() {
    if !kvm_available("test_bounded_console_file_under_the_vcpu_filter") {
        return;
    }
    let dir = TestDir::new("seccomp-console");
    let message: String = (0..1500)
        .map(|n| format!("console line {n:05}\n"))
        .collect();
    let kernel = dir.write(
        "kernel.elf",
        &elf_kernel(&Program::new().print_and_reset(&message), false),
    );
    let console = dir.path().join("console.log");
    let serial = format!("file:{}", console.display());
    let out = run_vmpod_vm(
        &[
            "--kernel",
            path_str(&kernel),
            "--memory",
            "64",
            "--serial",
            &serial,
            "--console-max-bytes",
            "4096",
        ],
        TIMEOUT,
    );
    assert_eq!(out.status, Some(0), "{out:?}");
    let kept = std::fs::read_to_string(&console).unwrap();
    assert!(kept.len() <= 4096, "{} bytes kept", kept.len());
    assert!(kept.len() >= 2048, "{} bytes kept", kept.len());
    assert!(kept.ends_with("console line 01499\n"), "{kept:?}");
    assert!(kept.starts_with("console line "), "{kept:?}");
}
