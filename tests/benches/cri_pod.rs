// SPDX-License-Identifier: Apache-2.0
//! A pod through containerd 1.6's CRI plugin as the kubelet starts one:
//! RunPodSandbox, then CreateContainer and StartContainer of `true`, until
//! ContainerStatus reports it exited. Handler `vmpod` side by side with
//! `runc` on the same containerd, image and CNI, in the same run: medians
//! and the ratio; and, for one running vmpod pod, the host memory it costs
//! (the shim's and `vmpod-vm`'s resident memory, the guest RAM the guest
//! touched included), the figure `deploy/runtimeclass.yaml`'s
//! `overhead.podFixed` stands for. Figures, not a test: run it through
//! `bench/cri-pod.sh`.

use std::time::{Duration, Instant};

use k8s_cri::v1::{
    ContainerState, ContainerStatusRequest, CreateContainerRequest, DnsConfig,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use vmpod_integration_tests::bench::{median, rss_kib, runs};
use vmpod_integration_tests::containerd::{processes_named, BUSYBOX_IMAGE};
use vmpod_integration_tests::cri::pod::{container_config, sandbox_config};
use vmpod_integration_tests::cri::{cri_or_skip, CriHarness, RUNC_HANDLER, VMPOD_HANDLER};

/// How long one pod may take to run `true` (a cold pod VM boot included).
const DEADLINE: Duration = Duration::from_secs(400);

/// The resident memory of every vmpod shim and `vmpod-vm` now, KiB.
fn vmpod_rss_kib() -> u64 {
    ["containerd-shim-vmpod-v2", "vmpod-vm"]
        .iter()
        .flat_map(|name| processes_named(name))
        .map(rss_kib)
        .sum()
}

/// One pod's timings (sandbox ready, container exited) and, when asked,
/// the vmpod processes' memory while it ran.
struct PodRun {
    sandbox: Duration,
    total: Duration,
    rss_kib: u64,
}

/// Makes a pod with `handler`, runs `true` in it until it exited, then
/// removes the pod (not timed).
fn one_pod(harness: &CriHarness, handler: &str, run: usize) -> Result<PodRun, String> {
    let name = format!("bench-{handler}-{run}");
    let log_dir = harness.log_dir(&name)?;
    let config = sandbox_config(&name, &name, &log_dir, DnsConfig::default());
    let client = harness.client();
    let failed = |what: &str| {
        let what = what.to_owned();
        move |status: tonic::Status| format!("{what}: {}", status.message())
    };
    let started = Instant::now();
    let request = RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: handler.to_string(),
    };
    let pod = client
        .runtime(|mut c| async move { c.run_pod_sandbox(request).await })
        .map_err(failed("RunPodSandbox"))?
        .pod_sandbox_id;
    let sandbox = started.elapsed();
    let request = CreateContainerRequest {
        pod_sandbox_id: pod.clone(),
        config: Some(container_config("true", BUSYBOX_IMAGE, &["true"])),
        sandbox_config: Some(config),
    };
    let container = client
        .runtime(|mut c| async move { c.create_container(request).await })
        .map_err(failed("CreateContainer"))?
        .container_id;
    let request = StartContainerRequest {
        container_id: container.clone(),
    };
    client
        .runtime(|mut c| async move { c.start_container(request).await })
        .map_err(failed("StartContainer"))?;
    loop {
        let request = ContainerStatusRequest {
            container_id: container.clone(),
            verbose: false,
        };
        let state = client
            .runtime(|mut c| async move { c.container_status(request).await })
            .map_err(failed("ContainerStatus"))?
            .status
            .map_or(0, |status| status.state);
        if state == ContainerState::ContainerExited as i32 {
            break;
        }
        if started.elapsed() > DEADLINE {
            return Err(format!("{name}: `true` did not exit within {DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let total = started.elapsed();
    let rss_kib = if handler == VMPOD_HANDLER {
        vmpod_rss_kib()
    } else {
        0
    };
    let request = StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    };
    client
        .runtime(|mut c| async move { c.stop_pod_sandbox(request).await })
        .map_err(failed("StopPodSandbox"))?;
    let request = RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    };
    client
        .runtime(|mut c| async move { c.remove_pod_sandbox(request).await })
        .map_err(failed("RemovePodSandbox"))?;
    Ok(PodRun {
        sandbox,
        total,
        rss_kib,
    })
}

fn main() {
    if !cri_or_skip("cri_pod bench", true) {
        return;
    }
    let harness = match CriHarness::start("bench", true, "") {
        Ok(harness) => harness,
        Err(err) => {
            eprintln!("cri_pod bench: {err}");
            std::process::exit(2);
        }
    };
    let mut medians = Vec::new();
    for (handler, n) in [
        (RUNC_HANDLER, runs("VMPOD_BENCH_RUNC_RUNS", 5)),
        (VMPOD_HANDLER, runs("VMPOD_BENCH_VMPOD_RUNS", 3)),
    ] {
        let (mut sandbox, mut total, mut rss) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..n {
            match one_pod(&harness, handler, run) {
                Ok(pod) => {
                    println!(
                        "{handler} run {run}: RunPodSandbox {:.3} s, to `true`'s exit {:.3} s",
                        pod.sandbox.as_secs_f64(),
                        pod.total.as_secs_f64()
                    );
                    sandbox.push(pod.sandbox.as_secs_f64());
                    total.push(pod.total.as_secs_f64());
                    rss.push(pod.rss_kib as f64);
                }
                Err(err) => {
                    eprintln!("cri_pod bench: {handler} run {run}: {err}");
                    std::process::exit(1);
                }
            }
        }
        let (sandbox, total) = (median(&mut sandbox), median(&mut total));
        println!(
            "{handler}: median of {n}: RunPodSandbox {sandbox:.3} s, to `true`'s exit {total:.3} s"
        );
        if handler == VMPOD_HANDLER {
            println!(
                "{handler}: host memory of a running pod (shim + vmpod-vm RSS, touched guest RAM \
                 included): median {:.1} MiB",
                median(&mut rss) / 1024.0
            );
        }
        medians.push(total);
    }
    if let [runc, vmpod] = medians[..] {
        println!("vmpod / runc, to `true`'s exit: {:.1}×", vmpod / runc);
    }
}
