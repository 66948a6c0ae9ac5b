// SPDX-License-Identifier: Apache-2.0
//! Boots our guest kernel with the test initrd through `vmpod-vm`, and
//! checks on the console that the kernel came up through the VMM's devices,
//! that the static test init ran, and that its reboot or power-off ended
//! the VM with status 0. Ten seconds to a minute per boot on hosts that
//! emulate guest CPL0.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use vmpod_integration_tests::{guest_or_skip, run_with_timeout, vmpod_vm_binary, Outcome};

/// A boot on an emulating host takes about a minute; leave room for a
/// loaded CI machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// A bzImage first decompresses itself at guest CPL0: minutes where that
/// is emulated (LZ4, about 8 MiB of output, about 1 µs per instruction).
const BZIMAGE_TIMEOUT: Duration = Duration::from_secs(900);
/// How long to wait for a second vCPU before calling SMP broken here.
const SMP_TIMEOUT: Duration = Duration::from_secs(240);

/// How the test init ends the guest.
#[derive(Clone, Copy)]
enum Ending {
    /// `reboot(RB_AUTOBOOT)`: with `reboot=k`, an i8042 reset.
    Reboot,
    /// `reboot(RB_POWER_OFF)`: without ACPI, our guest kernel's last-resort
    /// handler (guest-kernel patch 0004) pulses the i8042 reset line.
    PowerOff,
}

impl Ending {
    /// The kernel command line that makes the test init end this way.
    fn cmdline(self) -> &'static str {
        match self {
            Self::Reboot => "console=ttyS0 reboot=k panic=1",
            Self::PowerOff => "console=ttyS0 reboot=k panic=1 poweroff",
        }
    }

    /// The test init's last line before it ends the guest this way.
    fn init_line(self) -> &'static str {
        match self {
            Self::Reboot => "vmpod-test-init: rebooting",
            Self::PowerOff => "vmpod-test-init: powering off",
        }
    }
}

/// Boots `kernel` with `initrd`; `devices` are extra vmpod-vm flags.
fn boot(
    kernel: &Path,
    initrd: &Path,
    vcpus: u8,
    ending: Ending,
    devices: &[&str],
    timeout: Duration,
) -> Outcome {
    let bin = vmpod_vm_binary().unwrap();
    run_with_timeout(
        Command::new(bin)
            .arg("--kernel")
            .arg(kernel)
            .arg("--initrd")
            .arg(initrd)
            .args(["--cmdline", ending.cmdline()])
            .args(["--vcpus", &vcpus.to_string(), "--memory", "128"])
            .args(devices),
        timeout,
    )
    .tap_print()
}

trait TapPrint {
    fn tap_print(self) -> Self;
}

impl TapPrint for Outcome {
    /// Shows the console in the test log, for whoever reads a failure.
    fn tap_print(self) -> Self {
        eprintln!(
            "--- vmpod-vm ({:?}, {:.1} s, timed out: {}) console:\n{}\n--- log:\n{}",
            self.status,
            self.elapsed.as_secs_f64(),
            self.timed_out,
            self.stdout,
            self.stderr
        );
        self
    }
}

fn assert_booted_through_vmpod(out: &Outcome, vcpus: u8, ending: Ending) {
    assert!(!out.timed_out, "the guest did not finish in time");
    let console = &out.stdout;
    // The kernel came up and talked through our 16550 on COM1.
    assert!(console.contains("Linux version 6.1"), "no kernel banner");
    assert!(
        console.contains("ttyS0 at I/O 0x3f8 (irq = 4"),
        "COM1 not found at 0x3f8/IRQ 4"
    );
    // It read our MP table and E820 map.
    assert!(
        console.contains("BIOS-e820: [mem 0x0000000000100000-"),
        "no E820 map"
    );
    // The test init ran in user space and saw the vCPUs we gave it.
    assert!(
        console.contains("vmpod-test-init: started"),
        "init did not start"
    );
    assert!(
        console.contains("vmpod-test-init: boot-timer written"),
        "init could not reach the boot timer"
    );
    assert!(
        console.contains(&format!("vmpod-test-init: cpus={vcpus}")),
        "init saw the wrong number of CPUs"
    );
    assert_container_support(console);
    assert!(
        console.contains(ending.init_line()),
        "init did not end the guest"
    );
    // The VMM saw the boot timer and the i8042 reset, and exited cleanly.
    assert!(out.stderr.contains("guest boot completed"));
    assert!(out
        .stderr
        .contains("guest requested a reset through the i8042"));
    assert_eq!(out.status, Some(0));
}

/// The words of the test init's `vmpod-test-init: <key>=...` line.
fn init_report<'a>(console: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("vmpod-test-init: {key}=");
    let line = console
        .lines()
        .find_map(|l| l.trim_end().strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("init printed no {key}= line"));
    line.split_whitespace().collect()
}

/// What `guest-kernel/vmpod.config` promises container workloads, as the
/// running guest kernel reports it to the test init.
fn assert_container_support(console: &str) {
    let filesystems = init_report(console, "filesystems");
    for fs in [
        "ext4", "overlay", "tmpfs", "devtmpfs", "proc", "sysfs", "fuse", "virtiofs", "cgroup2",
    ] {
        assert!(filesystems.contains(&fs), "guest kernel lacks {fs}");
    }
    let controllers = init_report(console, "cgroup-controllers");
    for controller in ["cpuset", "cpu", "io", "memory", "pids"] {
        assert!(
            controllers.contains(&controller),
            "guest kernel lacks the {controller} cgroup controller"
        );
    }
    assert_eq!(
        init_report(console, "cgroup-freeze"),
        ["yes"],
        "no cgroup v2 freezer"
    );
    let namespaces = init_report(console, "namespaces");
    for ns in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
        assert!(
            namespaces.contains(&ns),
            "guest kernel lacks {ns} namespaces"
        );
    }
}

/// PVH entry of the ELF vmlinux, one vCPU, with the virtio devices, ended
/// by a guest reboot.
#[test]
fn test_linux_boots_vmlinux_pvh_with_devices_and_reboots() {
    let Some(guest) = guest_or_skip("test_linux_boots_vmlinux_pvh_with_devices_and_reboots") else {
        return;
    };
    let out = boot(
        &guest.vmlinux,
        &guest.test_initrd,
        1,
        Ending::Reboot,
        &["--rng"],
        BOOT_TIMEOUT,
    );
    assert_booted_through_vmpod(&out, 1, Ending::Reboot);
    assert!(
        out.stdout.contains(
            "virtio-mmio: Registering device virtio-mmio.0 at 0xc0001000-0xc0001fff, IRQ 5."
        ),
        "virtio-rng not announced in its slot"
    );
    // 32 bytes from the guest's /dev/hwrng, served by our virtio-rng.
    let hwrng = init_report(&out.stdout, "hwrng");
    assert_eq!(hwrng.first(), Some(&"virtio_rng.0"), "{hwrng:?}");
    let bytes = hwrng.get(1).copied().unwrap_or_default();
    assert_eq!(bytes.len(), 64, "{hwrng:?}");
    assert!(bytes.chars().any(|c| c != '0'), "all zero: {bytes}");
}

/// The 64-bit boot protocol through the bzImage, one vCPU, ended by a guest
/// power-off (one boot checks both: boots are expensive here).
#[test]
fn test_linux_boots_bzimage_to_init_and_powers_off() {
    let Some(guest) = guest_or_skip("test_linux_boots_bzimage_to_init_and_powers_off") else {
        return;
    };
    let out = boot(
        &guest.bzimage,
        &guest.test_initrd,
        1,
        Ending::PowerOff,
        &[],
        BZIMAGE_TIMEOUT,
    );
    assert_booted_through_vmpod(&out, 1, Ending::PowerOff);
    // No device flags, no virtio devices.
    assert!(!out.stdout.contains("virtio-mmio: Registering device"));
    assert!(
        out.stdout
            .contains("vmpod-test-init: hwrng: No such device"),
        "a hardware RNG without --rng"
    );
}

/// Two vCPUs: the second one is started by the guest through INIT/SIPI.
/// Hosts that emulate guest CPL0 cannot bring it up (see
/// `docs/kvm-hosts.md`); there the test says so and skips.
#[test]
fn test_linux_boots_with_two_vcpus() {
    let Some(guest) = guest_or_skip("test_linux_boots_with_two_vcpus") else {
        return;
    };
    if host_emulates_supervisor_mode() {
        eprintln!(
            "skipped test_linux_boots_with_two_vcpus: this host emulates guest CPL0 \
             (vmpod-vm picked the emulated-supervisor CPU template), and on such hosts a \
             second vCPU never comes out of INIT/SIPI; the test runs on hardware-virtualised hosts"
        );
        return;
    }
    let out = boot(
        &guest.vmlinux,
        &guest.test_initrd,
        2,
        Ending::Reboot,
        &[],
        SMP_TIMEOUT,
    );
    assert_booted_through_vmpod(&out, 2, Ending::Reboot);
}

/// Asks vmpod-vm which CPU template `auto` picks here, with a guest that
/// ends at once.
fn host_emulates_supervisor_mode() -> bool {
    let bin = vmpod_vm_binary().unwrap();
    let dir = std::env::temp_dir().join(format!("vmpod-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // A bzImage-less, initrd-less run that fails at kernel loading still
    // runs the probe first; a non-kernel file keeps it short.
    let not_a_kernel = dir.join("not-a-kernel");
    std::fs::write(&not_a_kernel, b"not a kernel").unwrap();
    let out = run_with_timeout(
        Command::new(bin).arg("--kernel").arg(&not_a_kernel),
        Duration::from_secs(30),
    );
    let _ = std::fs::remove_dir_all(&dir);
    out.stderr
        .contains("using CPU template emulated-supervisor")
}
