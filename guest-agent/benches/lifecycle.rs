// SPDX-License-Identifier: Apache-2.0
//! Create + start + wait of `/bin/true` through vmpod-agent on this host,
//! side by side in one run with runc and crun on the same bundle (Debian's
//! packages): median and 90th percentile in ms, and the ratios to crun.
//! Needs root; `bench/agent-lifecycle.sh` installs the peers and runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmpod_agent_api::messages::Mount;
use vmpod_agent_api::{AgentClient, ProcessId, SandboxConfig};

/// Runs per runtime (after one warm-up each).
const RUNS: usize = 30;

fn busybox_bundle(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for sub in ["bin", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(sub)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin/true"));
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/true"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]
            },
            "noNewPrivileges": true
        },
        "root": {"path": rootfs.display().to_string(), "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    rootfs
}

fn summary(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(times[times.len() / 2]), ms(times[times.len() * 9 / 10]))
}

/// `RUNTIME run` (create + start + wait) timed, `RUNTIME delete` not.
fn oci_runtime(runtime: &str, bundle: &Path) -> Option<Vec<Duration>> {
    let ok = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let root = bundle.join(format!("{runtime}-state"));
    let mut times = Vec::new();
    for i in 0..=RUNS {
        let id = format!("bench-{i}");
        let start = Instant::now();
        if !ok(Command::new(runtime)
            .arg("--root")
            .arg(&root)
            .args(["run", "-b"])
            .arg(bundle)
            .arg(&id))
        {
            eprintln!("{runtime} run failed; skipping {runtime}");
            return None;
        }
        let elapsed = start.elapsed();
        ok(Command::new(runtime)
            .arg("--root")
            .arg(&root)
            .args(["delete", "-f", &id]));
        if i > 0 {
            times.push(elapsed);
        }
    }
    Some(times)
}

async fn agent(dir: &Path, rootfs: &Path) -> Vec<Duration> {
    let socket = dir.join("agent.sock");
    let cgroup_root = vmpod_sys::mountinfo::mounts()
        .unwrap()
        .into_iter()
        .find(|mount| mount.fs_type == "cgroup2")
        .expect("a cgroup2 mount")
        .point
        .join("vmpod-bench");
    std::fs::create_dir_all(&cgroup_root).unwrap();
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(env!("CARGO_BIN_EXE_vmpod-agent"))
        .arg("--listen")
        .arg(format!("unix:{}", socket.display()))
        .arg("--state-dir")
        .arg(dir.join("agent-state"))
        .arg("--cgroup-root")
        .arg(&cgroup_root)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start vmpod-agent");
    let client = loop {
        if let Ok(client) = AgentClient::connect_unix(&socket).await {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    client
        .create_sandbox(&SandboxConfig {
            id: "bench".into(),
            ..SandboxConfig::default()
        })
        .await
        .unwrap();
    let spec = std::fs::read(dir.join("config.json")).unwrap();
    let mut mount = Mount::new();
    mount.source = rootfs.display().to_string();
    mount.fstype = "bind".into();
    let mut times = Vec::new();
    for i in 0..=RUNS {
        let id = format!("bench-{i}");
        let start = Instant::now();
        client
            .create_container(&id, spec.clone(), mount.clone())
            .await
            .unwrap();
        client.start_container(&id).await.unwrap();
        let exit = client.wait_process(&ProcessId::init(&id)).await.unwrap();
        let elapsed = start.elapsed();
        assert_eq!(exit.exit_status, 0);
        client.remove_container(&id, false).await.unwrap();
        if i > 0 {
            times.push(elapsed);
        }
    }
    client.destroy_sandbox().await.unwrap();
    // SAFETY: kill takes plain integers.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(cgroup_root.join("vmpod-bench"));
    let _ = std::fs::remove_dir(&cgroup_root);
    times
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/bin/busybox").exists() {
        eprintln!("lifecycle bench: needs root and /bin/busybox (bench/agent-lifecycle.sh)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vmpod-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = busybox_bundle(&dir);
    let mut rows = vec![("vmpod-agent", Some(agent(&dir, &rootfs).await))];
    rows.push(("runc", oci_runtime("runc", &dir)));
    // crun (1.8) refuses a hybrid cgroup host whose v2 hierarchy has any
    // controller; without that hierarchy in view it uses the v1 ones, as
    // runc does. Last, since this changes the bench's own mount namespace.
    let hidden = hide_cgroup2_hierarchy();
    rows.push(("crun", oci_runtime("crun", &dir)));
    let crun = rows
        .iter()
        .find(|(name, _)| *name == "crun")
        .and_then(|(_, t)| t.clone())
        .map(summary);
    println!("create + start + wait of /bin/true, {RUNS} runs each (same bundle, same host)");
    println!(
        "{:<12} {:>10} {:>10} {:>14}",
        "runtime", "median ms", "p90 ms", "median / crun"
    );
    for (name, times) in rows {
        match times {
            Some(times) => {
                let (median, p90) = summary(times);
                let ratio = crun.map_or("n/a".to_owned(), |(c, _)| format!("{:.2}", median / c));
                println!("{name:<12} {median:>10.2} {p90:>10.2} {ratio:>14}");
            }
            None => println!("{name:<12} {:>10} {:>10} {:>14}", "-", "-", "not installed"),
        }
    }
    if let Some(path) = hidden {
        println!("(crun ran with {path} unmounted in its mount namespace: hybrid host)");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// On a hybrid cgroup host, unmounts the v2 hierarchy in a mount namespace
/// of this process's own, and returns where it was.
fn hide_cgroup2_hierarchy() -> Option<String> {
    let point = vmpod_sys::mountinfo::mounts()
        .ok()?
        .into_iter()
        .find(|mount| mount.fs_type == "cgroup2" && mount.point != Path::new("/sys/fs/cgroup"))?
        .point;
    let path = point.to_str()?.to_owned();
    let c_path = std::ffi::CString::new(path.clone()).ok()?;
    // SAFETY: unshare and mount/umount2 with NUL-terminated paths; this
    // only changes the bench process's own mount namespace.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0
            || libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            || libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) != 0
        {
            return None;
        }
    }
    Some(path)
}
