// SPDX-License-Identifier: Apache-2.0
//! `ctr run --rm` of `/bin/true` through the real containerd: vmpod's shim
//! (a pod VM per run) side by side with containerd's default runc shim, in
//! the same run and on the same image. vmpod runs twice over: booting every
//! pod VM cold (`templates = false`), and with templates, where the first
//! run boots cold and leaves the template the later runs restore. Prints
//! medians, the ratios, the share of a run spent until the agent served,
//! and the resident memory of the shim and of `vmpod-vm` (without guest
//! RAM) for one running pod. Figures, not a test: run it through
//! `bench/ctr-run.sh`.

use std::path::Path;
use std::time::{Duration, Instant};

use vmpod_integration_tests::bench::{median, rss_kib, runs};
use vmpod_integration_tests::containerd::{Containerd, RUNTIME};
use vmpod_integration_tests::host_faults::{pod_console, ConsoleWatch, Retries};

/// The descendants of `pid`, nearest first.
fn descendants(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        all.extend(
            std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|child| child.parse::<u32>().ok()),
        );
        i += 1;
    }
    all.split_off(1)
}

/// Resident KiB of `pid` outside its guest RAM mapping: the mapping of
/// exactly `guest_kib`, anonymous after a cold boot, of the template's
/// memory file after a restore.
fn rss_without_guest_kib(pid: u32, guest_kib: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut guest = 0;
    let mut size = 0;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.first() == Some(&"Size:") {
            size = fields[1].parse().unwrap_or(0);
        } else if fields.first() == Some(&"Rss:") {
            let rss: u64 = fields[1].parse().unwrap_or(0);
            total += rss;
            if size == guest_kib {
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

/// One bench run's containerd, image and pods, and the runs it lost to the
/// host fault.
struct Bench {
    containerd: Containerd,
    image: String,
    pods: std::path::PathBuf,
    faults: Retries,
    /// The shim's configuration file, read by every new shim.
    config: std::path::PathBuf,
    /// Its contents as the bench started.
    base_config: String,
}

impl Bench {
    /// A run's seconds, or None when its guest process died of the host
    /// fault (status 139 and a fault line on its pod's console, followed
    /// while the pod lives: `--rm` removes it).
    fn timed(&self, runtime: &str, id: &str) -> Option<f64> {
        let console = ConsoleWatch::start(&pod_console(&self.pods, id));
        let started = Instant::now();
        let out =
            self.containerd
                .ctr(&["run", "--rm", "--runtime", runtime, &self.image, id, "true"]);
        let seconds = started.elapsed().as_secs_f64();
        if let Some(fault) = console.fault(out.status.code()) {
            self.faults.again(&format!("ctr run --rm {id}"), &fault);
            return None;
        }
        assert!(
            out.status.success(),
            "{id}: {:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Some(seconds)
    }

    /// Sets the shim's configuration for the pods started from now on:
    /// the bench's with `extra` lines.
    fn configure(&self, extra: &str) {
        std::fs::write(&self.config, format!("{}{extra}", self.base_config))
            .expect("write the shim's configuration");
    }

    /// `runs` vmpod runs' seconds and their boot seconds (ids
    /// `bench-NAME-i`), trying at most twice as many plus two so that runs
    /// lost to the host fault are made up for.
    fn vmpod_runs(&self, name: &str, runs: usize) -> (Vec<f64>, Vec<f64>) {
        let mut vmpod = Vec::new();
        let mut boots = Vec::new();
        for i in 0..2 * runs + 2 {
            if vmpod.len() == runs {
                break;
            }
            let id = format!("bench-{name}-{i}");
            if let Some(seconds) = self.timed(RUNTIME, &id) {
                vmpod.push(seconds);
                boots.extend(boot_seconds(&self.containerd.log_path(), &id));
            }
        }
        assert!(
            !vmpod.is_empty(),
            "every vmpod run ended in the host's GP fault"
        );
        (vmpod, boots)
    }

    /// The RSS in KiB of one running pod's shim and of its `vmpod-vm`
    /// without its guest RAM.
    fn running_pod_rss_kib(&self, memory_mib: u64) -> (u64, u64) {
        let out = self.containerd.ctr(&[
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            &self.image,
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
        let shim_pid = *self.containerd.shim_pids().first().expect("the pod's shim");
        // The shim's descendant: its child, or its jailer's grandchild.
        let vmm_pid = descendants(shim_pid)
            .into_iter()
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim_end() == "vmpod-vm")
            })
            .expect("the pod's vmpod-vm");
        let shim_kib = rss_kib(shim_pid);
        let vmm_kib = rss_without_guest_kib(vmm_pid, memory_mib * 1024);
        let _ = self
            .containerd
            .ctr(&["task", "kill", "-s", "SIGKILL", "bench-rss"]);
        std::thread::sleep(Duration::from_secs(2));
        let _ = self.containerd.ctr(&["task", "rm", "bench-rss"]);
        let _ = self.containerd.ctr(&["container", "rm", "bench-rss"]);
        (shim_kib, vmm_kib)
    }
}

/// One series of runs: seconds per run and, for vmpod, seconds until the
/// agent served.
struct Series {
    name: &'static str,
    runs: Vec<f64>,
    boots: Vec<f64>,
}

impl Series {
    fn median(&mut self) -> f64 {
        median(&mut self.runs)
    }

    fn boot_median(&mut self) -> f64 {
        if self.boots.is_empty() {
            f64::NAN
        } else {
            median(&mut self.boots)
        }
    }
}

/// Prints the figures side by side, as ratios to runc and to vmpod's cold
/// boots.
fn print_figures(series: &mut [Series], (shim_kib, vmm_kib): (u64, u64), memory_mib: u64) {
    let runc = series[0].median();
    let cold = series[1].median();
    println!("ctr run --rm <busybox> true, same containerd 1.6, same image, one run:");
    println!("| runtime | runs | median s | until the agent served, median s | ratio to runc | ratio to cold boot |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for one in series.iter_mut() {
        let median = one.median();
        let boot = one.boot_median();
        println!(
            "| {} | {} | {median:.3} | {} | {:.1} | {} |",
            one.name,
            one.runs.len(),
            if boot.is_nan() {
                String::new()
            } else {
                format!("{boot:.1}")
            },
            median / runc,
            if one.boots.is_empty() {
                String::new()
            } else {
                format!("{:.3}", median / cold)
            },
        );
    }
    println!(
        "one running pod: shim RSS {:.1} MiB + vmpod-vm RSS without its {memory_mib} MiB guest RAM {:.1} MiB = {:.1} MiB (target <= 10 MiB)",
        shim_kib as f64 / 1024.0,
        vmm_kib as f64 / 1024.0,
        (shim_kib + vmm_kib) as f64 / 1024.0
    );
}

fn main() {
    let work = std::env::temp_dir().join(format!("vmpod-bench-ctr-{}", std::process::id()));
    let memory_mib = 256;
    // More shim config lines, e.g. `unconfined = true` (bench/confinement.sh).
    let extra = std::env::var("VMPOD_BENCH_CONFIG").unwrap_or_default();
    let containerd =
        Containerd::with_vmpod_shim(&work, &format!("memory = {memory_mib}\n{extra}\n"), true)
            .expect("containerd (run bench/ctr-run.sh)");
    let image = containerd.import_busybox().expect("busybox image");
    let config = work.join("config.toml");
    let base_config = std::fs::read_to_string(&config).expect("the shim's configuration");
    // Runs the host fault left out, said and summed up at the end.
    let bench = Bench {
        containerd,
        image,
        pods: work.join("pods"),
        faults: Retries::new("bench ctr_run"),
        config,
        base_config,
    };
    let runc: Vec<f64> = (0..runs("VMPOD_BENCH_RUNC_RUNS", 10))
        .map(|i| {
            bench
                .timed("io.containerd.runc.v2", &format!("bench-runc-{i}"))
                .expect("a runc run")
        })
        .collect();
    let vmpod_runs = runs("VMPOD_BENCH_VMPOD_RUNS", 3);
    bench.configure("templates = false\n");
    let (cold, cold_boots) = bench.vmpod_runs("cold", vmpod_runs);
    bench.configure("");
    let (first, first_boots) = bench.vmpod_runs("first", 1);
    let (restored, restored_boots) = bench.vmpod_runs("restored", vmpod_runs);
    let rss = bench.running_pod_rss_kib(memory_mib);
    // The fault summary is printed when `_faults` drops, after the figures.
    let Bench {
        mut containerd,
        faults: _faults,
        ..
    } = bench;
    containerd.stop().expect("stop containerd");
    let _ = std::fs::remove_dir_all(&work);
    let mut series = [
        Series {
            name: "io.containerd.runc.v2",
            runs: runc,
            boots: Vec::new(),
        },
        Series {
            name: "vmpod, templates off (cold boot)",
            runs: cold,
            boots: cold_boots,
        },
        Series {
            name: "vmpod, first pod: cold boot + snapshot into the template",
            runs: first,
            boots: first_boots,
        },
        Series {
            name: "vmpod, restored from the template",
            runs: restored,
            boots: restored_boots,
        },
    ];
    print_figures(&mut series, rss, memory_mib);
}
