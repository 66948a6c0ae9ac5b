// SPDX-License-Identifier: Apache-2.0
//! The pod's vsock device flooded: the pod boots a hostile guest kernel
//! (`vsock_flood.S`) in place of vmpod's, which keeps the vsock transmit
//! queue full of 64 KiB packets for ever, as a compromised guest kernel
//! can (a container cannot: it has no AF_VSOCK and no access to the
//! rings). While it floods, the host checks that `vmpod-vm`'s memory stays
//! bounded, that its event loop still serves the host side of the device
//! (a host connection is answered within the device's handshake timeout),
//! and that the flood goes on; then that the pod fails with the agent
//! timeout in one line and leaves nothing behind.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmpod_integration_tests::containerd::{NAMESPACE, RUNTIME};

use crate::fixture::{fixture, text, Fixture};

/// The flooding pod (and its only container).
const POD: &str = "vh-flood";
/// The shim's `agent-timeout` for the pod: the flood runs this long.
const AGENT_TIMEOUT_SECONDS: u64 = 60;
/// How long the host watches the flood.
const FLOOD_WATCH: Duration = Duration::from_secs(25);
/// How much `vmpod-vm`'s resident memory may grow during the flood: a few
/// packets' worth (64 KiB each) and the allocator's slack, far below what
/// holding a queue's worth of packets would take (256 × 64 KiB = 16 MiB).
const RSS_GROWTH_BOUND_KIB: u64 = 8 * 1024;
/// The device closes a host connection the guest does not answer after
/// 2 s (`CONNECT_TIMEOUT`); this allows for a loaded host.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(15);
/// The line the hostile kernel prints once the flood runs.
const STARTED: &str = "vsock flood: started\n";
/// Packets per '.' the hostile kernel prints.
const PACKETS_PER_DOT: usize = 4096;

/// Assembles and links `vsock_flood.S` into an ELF64 kernel in `dir`.
fn build_flood_kernel(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("hostile_guest/vsock_flood.S");
    let object = dir.join("vsock_flood.o");
    let kernel = dir.join("vsock_flood.elf");
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd:?} (binutils): {e}"));
        assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
    };
    run(Command::new("as")
        .arg("--64")
        .arg("-o")
        .arg(&object)
        .arg(&source));
    run(Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "-Ttext=0x100000",
            "-z",
            "max-page-size=0x1000",
        ])
        .arg("--build-id=none")
        .arg("-o")
        .arg(&kernel)
        .arg(&object));
    kernel
}

/// A `/proc/PID/status` field in KiB (`None` once the process is gone).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The console after the flood started; `None` before.
fn flood_output(console: &Path) -> Option<String> {
    let bytes = std::fs::read(console).ok()?;
    let console = text(&bytes);
    console
        .find(STARTED)
        .map(|at| console[at + STARTED.len()..].to_string())
}

/// Blocks of [`PACKETS_PER_DOT`] packets the device took so far: the
/// kernel prints a '.' for each.
fn blocks_taken(console: &Path) -> usize {
    flood_output(console).map_or(0, |out| out.matches('.').count())
}

/// Connects to the pod's vsock socket as a host process would and asks
/// for guest port 1024; returns how long the device took to close it (the
/// guest never answers).
fn host_connection_closed_after(socket: &Path) -> Duration {
    let started = Instant::now();
    let mut stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.set_read_timeout(Some(HANDSHAKE_DEADLINE)).unwrap();
    stream.write_all(b"CONNECT 1024\n").unwrap();
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) => assert!(
            reply.is_empty(),
            "the device answered {:?} for a guest that never accepts",
            text(&reply)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the device did not close the host connection within {HANDSHAKE_DEADLINE:?}: {e}"
        ),
    }
    started.elapsed()
}

/// `ctr run --rm` of the pod, in the background.
fn spawn_pod(f: &Fixture) -> Child {
    f.containerd
        .ctr_command(&["run", "--rm", "--runtime", RUNTIME, &f.image, POD, "true"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr run")
}

/// Waits for `ctr run` to end, within `timeout`.
fn wait_for(child: Child, timeout: Duration) -> Output {
    let deadline = Instant::now() + timeout;
    let mut child = child;
    while child.try_wait().expect("wait for ctr").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ctr run did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    child.wait_with_output().expect("ctr run's output")
}

#[test]
fn test_a_vsock_flood_from_the_guest_keeps_the_vmm_bounded_and_serving() {
    let test = "hostile_vsock";
    let _machine = crate::one_attack_at_a_time();
    let build = std::env::temp_dir().join(format!("vmpod-{test}-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&build).unwrap();
    let kernel = build_flood_kernel(&build);
    let config = format!(
        "kernel = {:?}\nagent-timeout = {AGENT_TIMEOUT_SECONDS}\n",
        kernel.display().to_string()
    );
    let Some(f) = fixture(test, &config) else {
        let _ = std::fs::remove_dir_all(&build);
        return;
    };
    let pod_dir = f.pods.join(NAMESPACE).join(POD);
    let console = f.console(POD);
    let ctr = spawn_pod(&f);

    let deadline = Instant::now() + Duration::from_secs(AGENT_TIMEOUT_SECONDS);
    while flood_output(&console).is_none() {
        assert!(
            Instant::now() < deadline,
            "the hostile kernel did not start its flood; console: {:?}\n{}",
            std::fs::read(&console).map(|b| text(&b)),
            f.containerd.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let watch_started = Instant::now();
    let vmms = f.vmm_pids();
    let [vmm] = vmms[..] else {
        panic!("want the pod's one vmpod-vm, found {vmms:?}");
    };
    let rss_at_start = status_kib(vmm, "VmRSS:").expect("VmRSS of vmpod-vm");
    let blocks_at_start = blocks_taken(&console);

    let closed_after = host_connection_closed_after(&pod_dir.join("run/vsock.sock"));
    eprintln!("{test}: a host connection was closed after {closed_after:?} during the flood");

    let mut peak = rss_at_start;
    while watch_started.elapsed() < FLOOD_WATCH {
        let rss = status_kib(vmm, "VmRSS:").expect("vmpod-vm ended during the flood");
        peak = peak.max(rss);
        std::thread::sleep(Duration::from_millis(100));
    }
    let packets = (blocks_taken(&console) - blocks_at_start) * PACKETS_PER_DOT;
    eprintln!(
        "{test}: in {FLOOD_WATCH:?} the device took {packets} packets of 64 KiB; \
         vmpod-vm's RSS {rss_at_start} KiB at the start, peak {peak} KiB"
    );
    assert!(
        packets > 0,
        "the device took fewer than {PACKETS_PER_DOT} packets in {FLOOD_WATCH:?}: it stopped \
         serving the flooded queue"
    );
    assert!(
        peak <= rss_at_start + RSS_GROWTH_BOUND_KIB,
        "vmpod-vm grew from {rss_at_start} KiB to a peak of {peak} KiB under the flood"
    );

    let out = wait_for(ctr, Duration::from_secs(AGENT_TIMEOUT_SECONDS + 120));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "ctr run succeeded: {stderr}");
    assert!(
        stderr.contains(&format!(
            "the agent did not serve within {AGENT_TIMEOUT_SECONDS} s (agent-timeout)"
        )) && stderr.contains("vsock flood: started"),
        "ctr run's error: {stderr}"
    );
    let _ = f.ctr(&["container", "rm", POD]);
    f.assert_nothing_left("after the flooding pod failed");
    let _ = std::fs::remove_dir_all(&build);
}
