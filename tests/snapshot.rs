// SPDX-License-Identifier: Apache-2.0
//! `vmpod-vm` snapshots with the real guest kernel: the test init boots
//! once and waits (`vmpod_hold`) before it mounts its share; the test
//! pauses it through the API, snapshots it, restores a second VM from the
//! snapshot with its own vsock socket, share and console, and resumes the
//! first. Both then run side by side: each reads the disk, mounts its own
//! share, talks vsock with its own host socket, and reboots cleanly. The
//! restored VM never boots: its console starts where the snapshot was
//! taken. Damaged and mismatched snapshots are refused in one line. One
//! boot.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vmpod_integration_tests::guest_checks::{
    init_line, vsock_host_side, TempDir, GUEST_VSOCK_PORT, HOST_VSOCK_PORT,
};
use vmpod_integration_tests::{guest_or_skip, run_with_timeout, vm_api, vmpod_vm_binary};

/// A boot to the test init's hold, on a host that emulates guest CPL0.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The test init waits on this vsock port for the host's release.
const HOLD_PORT: u32 = 4000;
/// The first line of the test disk.
const DISK_TEXT: &str = "vmpod snapshot test disk";

/// One VM's own back ends and files.
struct VmFiles {
    name: &'static str,
    share: PathBuf,
    vsock: PathBuf,
    api: PathBuf,
    console: PathBuf,
    log: PathBuf,
}

impl VmFiles {
    fn new(work: &Path, name: &'static str) -> Self {
        let share = work.join(format!("share-{name}"));
        std::fs::create_dir_all(&share).unwrap();
        std::fs::write(share.join("from-host.txt"), format!("share of {name}\n")).unwrap();
        VmFiles {
            name,
            share,
            vsock: work.join(format!("{name}.vsock")),
            api: work.join(format!("{name}.api")),
            console: work.join(format!("{name}.console")),
            log: work.join(format!("{name}.log")),
        }
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The launch settings both VMs share.
struct Launch {
    kernel: PathBuf,
    initrd: PathBuf,
    disk: PathBuf,
    cmdline: String,
}

impl Launch {
    /// The flags of `vm`; a flag of `extra` replaces the same flag's value
    /// (`--memory 512` for the usual 256), other flags are added.
    fn args(&self, vm: &VmFiles, extra: &[&str]) -> Vec<String> {
        let mut flags: Vec<(String, String)> = vec![
            ("--kernel".into(), self.kernel.display().to_string()),
            ("--initrd".into(), self.initrd.display().to_string()),
            ("--memory".into(), "256".into()),
            ("--cmdline".into(), self.cmdline.clone()),
            (
                "--disk".into(),
                format!("path={},readonly", self.disk.display()),
            ),
            (
                "--fs".into(),
                format!("tag=share,dir={}", vm.share.display()),
            ),
            (
                "--vsock".into(),
                format!("cid=3,socket={}", vm.vsock.display()),
            ),
            ("--serial".into(), format!("file:{}", vm.console.display())),
            ("--api".into(), format!("unix:{}", vm.api.display())),
        ];
        for pair in extra.chunks(2) {
            let (flag, value) = (
                pair[0].to_string(),
                pair.get(1).map_or("", |v| v).to_string(),
            );
            match flags.iter_mut().find(|(f, _)| *f == flag) {
                Some(existing) => existing.1 = value,
                None => flags.push((flag, value)),
            }
        }
        let mut args: Vec<String> = flags.into_iter().flat_map(|(f, v)| [f, v]).collect();
        args.push("--rng".into());
        args
    }

    fn spawn(&self, vm: &VmFiles, extra: &[&str]) -> Child {
        Command::new(vmpod_vm_binary().unwrap())
            .args(self.args(vm, extra))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&vm.log).unwrap())
            .spawn()
            .expect("start vmpod-vm")
    }
}

/// Kills the VM on drop, so a failing test leaves no process; a failing
/// test also prints the VM's log (a VMM that died under a request answers
/// nothing, and only its log says why).
struct Running(Child, PathBuf);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.1).unwrap_or_default();
            eprintln!("log of the VM {}:\n{log}", self.1.display());
        }
    }
}

impl Running {
    /// Waits for the VM's end; its exit status.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

fn wait_for_line(vm: &VmFiles, child: &mut Running, line: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !vm.console().contains(line) {
        if let Some(status) = child.0.try_wait().unwrap() {
            panic!(
                "{} ended ({status}) before {line:?}:\n{}\n{}",
                vm.name,
                vm.console(),
                vm.log()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{} printed no {line:?} in {timeout:?}:\n{}\n{}",
            vm.name,
            vm.console(),
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Lets the test init go on past its hold; what it answered.
fn release(vm: &VmFiles) -> String {
    let stream = vmpod_sys::unix_socket::connect(&vm.vsock).expect("vsock socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    (&stream)
        .write_all(format!("CONNECT {HOLD_PORT}\n").as_bytes())
        .unwrap();
    let mut ok = String::new();
    reader.read_line(&mut ok).unwrap();
    assert!(ok.starts_with("OK "), "{}: {ok:?}", vm.name);
    (&stream)
        .write_all(format!("go {}\n", vm.name).as_bytes())
        .unwrap();
    let mut answer = String::new();
    reader.read_line(&mut answer).unwrap();
    answer.trim().to_string()
}

fn check_released_vm(vm: &VmFiles, child: &mut Running, results: &mpsc::Receiver<String>) {
    let status = child.wait(BOOT_TIMEOUT);
    let console = vm.console();
    eprintln!(
        "--- {} ({status:?}) console:\n{console}\n--- log:\n{}",
        vm.name,
        vm.log()
    );
    assert_eq!(status, Some(0), "{} did not end cleanly", vm.name);
    assert_eq!(init_line(&console, "released"), format!("go {}", vm.name));
    // virtio-blk: the disk reads after the restore.
    assert_eq!(init_line(&console, "disk-read"), DISK_TEXT);
    // virtio-fs: each VM mounted its own share.
    assert_eq!(
        init_line(&console, "fs"),
        format!("read \"share of {}\" wrote from-guest.txt", vm.name)
    );
    assert!(vm.share.join("from-guest.txt").exists(), "{}", vm.name);
    // virtio-vsock: both ways, through this VM's own host socket.
    let vsock = init_line(&console, "vsock");
    assert!(
        vsock.contains("host said \"hello guest from the host\""),
        "{vsock}"
    );
    let host_saw: Vec<String> = results.try_iter().collect();
    assert_eq!(host_saw.len(), 2, "{}: {host_saw:?}", vm.name);
    assert!(!vm.api.exists(), "{}: API socket left behind", vm.name);
}

/// A copy of the snapshot `from` in `to` whose state file `damage`
/// changes; the memory file is a hard link.
fn damaged_copy(from: &Path, to: &Path, damage: impl FnOnce(&mut Vec<u8>)) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::hard_link(from.join("memory"), to.join("memory")).unwrap();
    let mut state = std::fs::read(from.join("vmstate")).unwrap();
    damage(&mut state);
    std::fs::write(to.join("vmstate"), state).unwrap();
}

/// A copy of the snapshot `from` in `to` whose state `edit` changes,
/// written with a valid header and checksum (the state file's layout is
/// vmm/src/snapshot/format.rs): only the identity check can refuse it.
fn edited_copy(from: &Path, to: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    use sha2::{Digest, Sha256};
    damaged_copy(from, to, |file| {
        let mut state: serde_json::Value = serde_json::from_slice(&file[52..]).unwrap();
        edit(&mut state);
        let payload = serde_json::to_vec(&state).unwrap();
        file.truncate(12);
        file.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        file.extend_from_slice(&Sha256::digest(&payload));
        file.extend_from_slice(&payload);
    });
}

/// Restores with `extra` flags; must fail with status 2 and one error
/// line containing `expected`, leaving no console, API socket or vsock
/// socket.
fn assert_refused(
    launch: &Launch,
    work: &Path,
    name: &'static str,
    extra: &[&str],
    expected: &str,
) {
    let vm = VmFiles::new(work, name);
    let mut cmd = Command::new(vmpod_vm_binary().unwrap());
    cmd.args(launch.args(&vm, extra));
    let out = run_with_timeout(&mut cmd, Duration::from_secs(60));
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("vmpod-vm: error:"))
        .collect();
    assert_eq!(out.status, Some(2), "{name}: {out:?}");
    assert_eq!(errors.len(), 1, "{name}: {out:?}");
    assert!(errors[0].contains(expected), "{name}: {}", errors[0]);
    for left in [&vm.console, &vm.api, &vm.vsock] {
        assert!(!left.exists(), "{name}: {} left behind", left.display());
    }
}

/// A change to a state file.
type Damage = fn(&mut Vec<u8>);

fn check_bad_snapshots(launch: &Launch, work: &Path, snapshot: &Path, template: &str) {
    let restore_from = |dir: &Path| dir.display().to_string();
    let bad = work.join("bad");
    let cases: [(&str, Damage, &str); 4] = [
        ("truncated", |s| s.truncate(s.len() - 100), "truncated"),
        (
            "corrupt",
            |s| *s.last_mut().unwrap() ^= 0x20,
            "SHA-256 mismatch",
        ),
        ("version", |s| s[8] = 99, "format version 99"),
        ("magic", |s| s[0] = b'X', "not a vmpod snapshot"),
    ];
    for (name, damage, expected) in cases {
        let dir = bad.join(name);
        damaged_copy(snapshot, &dir, damage);
        assert_refused(
            launch,
            work,
            "refused",
            &["--restore", &restore_from(&dir)],
            expected,
        );
    }
    let short = bad.join("short-memory");
    damaged_copy(snapshot, &short, |_| {});
    std::fs::remove_file(short.join("memory")).unwrap();
    File::create(short.join("memory"))
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    assert_refused(
        launch,
        work,
        "refused",
        &["--restore", &restore_from(&short)],
        "memory file",
    );
    let snap = restore_from(snapshot);
    let other_template = if template == "host" {
        "emulated-supervisor"
    } else {
        "host"
    };
    let mismatches: [(&[&str], &str); 4] = [
        (&["--memory", "512"], "memory MiB 256, this VM has 512"),
        (&["--vcpus", "2"], "vCPUs 1, this VM has 2"),
        (&["--cpu-template", other_template], "CPU template"),
        (&["--cmdline", "console=ttyS0"], "kernel command line"),
    ];
    for (flags, expected) in mismatches {
        let mut extra = vec!["--restore", snap.as_str()];
        extra.extend_from_slice(flags);
        assert_refused(launch, work, "refused", &extra, expected);
    }
    let other_initrd = work.join("other-initrd.cpio");
    let mut bytes = std::fs::read(&launch.initrd).unwrap();
    bytes.extend_from_slice(&[0; 512]);
    std::fs::write(&other_initrd, bytes).unwrap();
    let other = Launch {
        initrd: other_initrd,
        kernel: launch.kernel.clone(),
        disk: launch.disk.clone(),
        cmdline: launch.cmdline.clone(),
    };
    assert_refused(
        &other,
        work,
        "refused",
        &["--restore", &snap],
        "initrd sha256",
    );
    let other_kernel = Launch {
        kernel: other.kernel.with_file_name("bzImage"),
        initrd: launch.initrd.clone(),
        disk: launch.disk.clone(),
        cmdline: launch.cmdline.clone(),
    };
    assert_refused(
        &other_kernel,
        work,
        "refused",
        &["--restore", &snap],
        "kernel sha256",
    );
    let other_version = bad.join("other-version");
    edited_copy(snapshot, &other_version, |state| {
        state["identity"]["vmpod_version"] = "0.0.1".into();
    });
    assert_refused(
        launch,
        work,
        "refused",
        &["--restore", &restore_from(&other_version)],
        "the snapshot was taken with vmpod \"0.0.1\"",
    );
    let missing = restore_from(&work.join("no-such-snapshot"));
    assert_refused(launch, work, "refused", &["--restore", &missing], "vmstate");
}

#[test]
fn test_snapshot_restore_side_by_side_and_bad_snapshots() {
    let Some(guest) = guest_or_skip("test_snapshot_restore_side_by_side_and_bad_snapshots") else {
        return;
    };
    let work = TempDir::new("snapshot");
    let disk = work.0.join("disk.img");
    let mut image = format!("{DISK_TEXT}\n").into_bytes();
    image.resize(1 << 20, 0);
    std::fs::write(&disk, image).unwrap();
    let launch = Launch {
        kernel: guest.vmlinux.clone(),
        initrd: guest.test_initrd.clone(),
        disk,
        cmdline: format!(
            "console=ttyS0 reboot=k panic=1 vmpod_hold={HOLD_PORT} vmpod_disk_read=1 \
             vmpod_fs=share vmpod_vsock={GUEST_VSOCK_PORT},{HOST_VSOCK_PORT}"
        ),
    };
    let original = VmFiles::new(&work.0, "original");
    let restored = VmFiles::new(&work.0, "restored");
    let snapshot = work.0.join("snapshot");

    let mut first = Running(launch.spawn(&original, &[]), original.log.clone());
    wait_for_line(
        &original,
        &mut first,
        "vmpod-test-init: holding",
        BOOT_TIMEOUT,
    );
    assert_eq!(vm_api::state(&original.api), "Running");
    let snapshot_body = |dir: &Path| serde_json::json!({ "snapshot_dir": dir }).to_string();
    let refused = vm_api::call(
        &original.api,
        "PUT",
        "/snapshot/create",
        &snapshot_body(&snapshot),
    )
    .unwrap();
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.body.contains("pause it before a snapshot"),
        "{refused:?}"
    );
    vm_api::pause(&original.api);
    assert_eq!(vm_api::state(&original.api), "Paused");
    let unwritable = vm_api::call(
        &original.api,
        "PUT",
        "/snapshot/create",
        &snapshot_body(Path::new("/proc/vmpod-snapshot")),
    )
    .unwrap();
    assert_eq!(unwritable.status, 400, "{unwritable:?}");
    assert!(
        unwritable
            .body
            .contains("Cannot write the snapshot file /proc/vmpod-snapshot"),
        "{unwritable:?}"
    );
    let taken = Instant::now();
    vm_api::snapshot(&original.api, &snapshot);
    eprintln!("snapshot taken in {:?}", taken.elapsed());
    assert!(snapshot.join("vmstate").exists() && snapshot.join("memory").exists());

    let launched = Instant::now();
    let mut second = Running(
        launch.spawn(&restored, &["--restore", &snapshot.display().to_string()]),
        restored.log.clone(),
    );
    assert!(
        vm_api::wait_for(&restored.api, Duration::from_secs(60)),
        "the restored VM did not start: {}",
        restored.log()
    );
    // The socket is bound before the VM is built; the answer comes once
    // the restored vCPUs run.
    assert_eq!(vm_api::state(&restored.api), "Running");
    eprintln!("restored VM running {:?} after launch", launched.elapsed());
    vm_api::resume(&original.api);
    assert_eq!(vm_api::state(&original.api), "Running");

    let (first_tx, first_rx) = mpsc::channel();
    let (second_tx, second_rx) = mpsc::channel();
    vsock_host_side(&original.vsock, first_tx, BOOT_TIMEOUT);
    vsock_host_side(&restored.vsock, second_tx, BOOT_TIMEOUT);
    assert_eq!(release(&restored), "released");
    assert_eq!(release(&original), "released");

    let template = original
        .log()
        .split("CPU template ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default()
        .to_string();
    check_bad_snapshots(&launch, &work.0, &snapshot, &template);

    check_released_vm(&restored, &mut second, &second_rx);
    check_released_vm(&original, &mut first, &first_rx);
    // The restored VM did not boot: its console begins after the hold.
    assert!(original.console().contains("vmpod-test-init: started"));
    assert!(
        !restored.console().contains("vmpod-test-init: started"),
        "the restored VM booted"
    );
}
