// SPDX-License-Identifier: Apache-2.0
//! `ctr run --rm` of `/bin/true` through the real containerd: vmpod's shim
//! (a pod VM per run) side by side with containerd's default runc shim, in
//! the same run and on the same image. Prints medians, the ratio, the share
//! of a vmpod run spent booting the guest until its agent served, and the
//! resident memory of the shim and of `vmpod-vm` (without guest RAM) for one
//! running pod. Figures, not a test: run it through `bench/ctr-run.sh`.

use std::path::Path;
use std::time::{Duration, Instant};

use vmpod_integration_tests::containerd::{Containerd, RUNTIME};
use vmpod_integration_tests::host_faults::{pod_console, ConsoleWatch, Retries};

/// Runs per runtime (vmpod's cost about a minute each on emulating hosts).
fn runs(variable: &str, default: usize) -> usize {
    std::env::var(variable)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    }
}

/// `VmRSS` of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident KiB of `pid` outside its guest RAM mapping (the anonymous
/// mapping of exactly `guest_kib`).
fn rss_without_guest_kib(pid: u32, guest_kib: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut guest = 0;
    let mut size = 0;
    let mut anonymous = false;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields
            .first()
            .is_some_and(|first| first.contains('-') && !first.ends_with(':'))
        {
            anonymous = fields.len() == 5;
        } else if fields.first() == Some(&"Size:") {
            size = fields[1].parse().unwrap_or(0);
        } else if fields.first() == Some(&"Rss:") {
            let rss: u64 = fields[1].parse().unwrap_or(0);
            total += rss;
            if anonymous && size == guest_kib {
                guest += rss;
            }
        }
    }
    total - guest
}

/// The seconds the shim logged from launch until the agent of `pod` served.
fn boot_seconds(log: &Path, pod: &str) -> Option<f64> {
    let log = std::fs::read_to_string(log).ok()?;
    log.lines()
        .filter(|line| line.contains("agent serving") && line.contains(&format!("pod=\"{pod}\"")))
        .find_map(|line| {
            line.split("seconds=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

fn main() {
    let work = std::env::temp_dir().join(format!("vmpod-bench-ctr-{}", std::process::id()));
    let memory_mib = 256;
    let mut containerd =
        Containerd::with_vmpod_shim(&work, &format!("memory = {memory_mib}\n"), true)
            .expect("containerd (run bench/ctr-run.sh)");
    let image = containerd.import_busybox().expect("busybox image");

    // Runs the host fault left out, said and summed up at the end.
    let faults = Retries::new("bench ctr_run");
    let pods = work.join("pods");
    // A run's seconds, or None when its guest process died of the host
    // fault (status 139 and a fault line on its pod's console, followed
    // while the pod lives: `--rm` removes it).
    let timed = |containerd: &Containerd, runtime: &str, id: &str| {
        let console = ConsoleWatch::start(&pod_console(&pods, id));
        let started = Instant::now();
        let out = containerd.ctr(&["run", "--rm", "--runtime", runtime, &image, id, "true"]);
        let seconds = started.elapsed().as_secs_f64();
        if let Some(fault) = console.fault(out.status.code()) {
            faults.again(&format!("ctr run --rm {id}"), &fault);
            return None;
        }
        assert!(
            out.status.success(),
            "{id}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Some(seconds)
    };
    let runc_runs = runs("VMPOD_BENCH_RUNC_RUNS", 10);
    let vmpod_runs = runs("VMPOD_BENCH_VMPOD_RUNS", 3);
    let mut runc: Vec<f64> = (0..runc_runs)
        .map(|i| {
            timed(
                &containerd,
                "io.containerd.runc.v2",
                &format!("bench-runc-{i}"),
            )
            .expect("a runc run")
        })
        .collect();
    let mut vmpod = Vec::new();
    let mut boots = Vec::new();
    for i in 0..2 * vmpod_runs + 2 {
        if vmpod.len() == vmpod_runs {
            break;
        }
        let id = format!("bench-vmpod-{i}");
        if let Some(seconds) = timed(&containerd, RUNTIME, &id) {
            vmpod.push(seconds);
            boots.extend(boot_seconds(&containerd.log_path(), &id));
        }
    }
    assert!(
        !vmpod.is_empty(),
        "every vmpod run ended in the host's GP fault"
    );

    // One pod kept running, for its shim's and VMM's memory.
    let out = containerd.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &image,
        "bench-rss",
        "sleep",
        "600",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_secs(2));
    let shim_pid = *containerd.shim_pids().first().expect("the pod's shim");
    let vmm_pid = vmpod_integration_tests::containerd::processes_named("vmpod-vm")
        .into_iter()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                String::from_utf8_lossy(&cmdline).contains(&work.display().to_string())
            })
        })
        .expect("the pod's vmpod-vm");
    let shim_kib = rss_kib(shim_pid);
    let vmm_kib = rss_without_guest_kib(vmm_pid, memory_mib * 1024);
    let _ = containerd.ctr(&["task", "kill", "-s", "SIGKILL", "bench-rss"]);
    std::thread::sleep(Duration::from_secs(2));
    let _ = containerd.ctr(&["task", "rm", "bench-rss"]);
    let _ = containerd.ctr(&["container", "rm", "bench-rss"]);
    containerd.stop().expect("stop containerd");
    let _ = std::fs::remove_dir_all(&work);

    let runc_median = median(&mut runc);
    let vmpod_median = median(&mut vmpod);
    let boot_median = if boots.is_empty() {
        f64::NAN
    } else {
        median(&mut boots)
    };
    println!("ctr run --rm <busybox> true, same containerd 1.6, same image, one run:");
    println!("| runtime | runs | median s | ratio to runc |");
    println!("| --- | --- | --- | --- |");
    println!("| io.containerd.runc.v2 | {runc_runs} | {runc_median:.3} | 1.00 |");
    println!(
        "| io.containerd.vmpod.v2 | {} | {vmpod_median:.3} | {:.1} |",
        vmpod.len(),
        vmpod_median / runc_median
    );
    println!(
        "vmpod: guest boot until the agent served: median {boot_median:.1} s = {:.0} % of a run",
        100.0 * boot_median / vmpod_median
    );
    println!(
        "one running pod: shim RSS {:.1} MiB + vmpod-vm RSS without its {memory_mib} MiB guest RAM {:.1} MiB = {:.1} MiB (target <= 10 MiB)",
        shim_kib as f64 / 1024.0,
        vmm_kib as f64 / 1024.0,
        (shim_kib + vmm_kib) as f64 / 1024.0
    );
}
