// SPDX-License-Identifier: Apache-2.0
//! The pod-life checks of a running pod's streams and resources: Exec and
//! Attach through containerd's streaming server (with and without a
//! terminal), UpdateContainerResources seen from inside the container, and
//! a container the kernel OOM-kills reported `OOMKilled`. Each returns
//! what failed instead of panicking, so that the pod life goes on to its
//! teardown checks.

use std::time::{Duration, Instant};

use k8s_cri::v1::{
    AttachRequest, ContainerState, ExecRequest, LinuxContainerConfig, LinuxContainerResources,
    RemoveContainerRequest, UpdateContainerResourcesRequest,
};
use vmpod_integration_tests::containerd::BUSYBOX_IMAGE;
use vmpod_integration_tests::cri::pod::container_config;
use vmpod_integration_tests::cri::stream::Stream;
use vmpod_integration_tests::cri::VMPOD_HANDLER;

use crate::calls::{fail, Pod, GUEST_DEADLINE};

/// An Exec without a terminal: a line on each stream, exit code 4.
const PLAIN_EXEC: &str = "echo to-out; echo to-err >&2; exit 4";
/// Its exit code.
const PLAIN_EXIT: i32 = 4;
/// The terminal size the tty Exec asks for.
const COLUMNS: u16 = 111;
/// Its rows.
const ROWS: u16 = 33;
/// How often the tty Exec asks `stty size` before the resize must show.
const STTY_TRIES: usize = 5;
/// The exit code the attached shell is told to end with.
const ATTACH_EXIT: i32 = 3;
/// The memory limit of the OOM container: the least runc's own start in
/// the container's cgroup is known to fit (Docker's minimum), as every
/// page past what it needs costs an emulated guest ~40 ms to fault in.
const OOM_LIMIT: i64 = 6 << 20;
/// The OOM container's command: a second's wait, then one read of 16 MiB
/// from /dev/zero into one buffer, which faults its pages in from the
/// kernel past the limit. (A shell doubling a string had ~2 MiB charged
/// after 120 s in an emulated guest: its many small reallocations are
/// system calls.) The wait is for runc's shim on a cgroup v1 host: it
/// watches a container's `memory.oom_control` only once Start has
/// returned, so a kill before that is never reported `OOMKilled`.
const OOM_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "sleep 1; exec dd if=/dev/zero of=/dev/null bs=16777216 count=1",
];
/// What a container's cgroup v2 says of its memory, CPU and processes
/// (for a report).
const READ_MEMORY_EVENTS: &str = "read -r line </proc/self/cgroup; dir=/sys/fs/cgroup${line#0::}; \
                                  for f in memory.max memory.current memory.events \
                                  cgroup.procs cgroup.freeze cpu.stat; do echo \"$f:\"; \
                                  while read -r l; do echo \"$l\"; done <$dir/$f; done; \
                                  while read -r p; do read -r s </proc/$p/stat; \
                                  echo \"$s\"; done <$dir/cgroup.procs";
/// How long after its exit the OOM container's reason may take to show
/// (containerd sets it on the TaskOOM event, which may follow the exit).
const OOM_REASON_DEADLINE: Duration = Duration::from_secs(20);
/// The limits UpdateContainerResources gives `main`.
const UPDATED_MEMORY: i64 = 96 << 20;
/// Its CPU quota (µs per period): half a CPU.
const UPDATED_QUOTA: i64 = 50_000;
/// Its CPU period (µs).
const UPDATED_PERIOD: i64 = 100_000;
/// A CPU quota the kernel refuses (cgroup v2 wants at least 1000 µs).
const BAD_QUOTA: i64 = 500;
/// A memory limit no pod VM of the test's size can give.
const HUGE_MEMORY: i64 = 1 << 40;
/// Prints the container's own memory limit, CPU quota and period, with
/// shell builtins only: cgroup v2's `memory.max` and `cpu.max` (its
/// cgroup's path from /proc/self/cgroup, `/` in a cgroup namespace), as
/// in the guest; or cgroup v1's files, which runc mounts as the
/// container's own on a v1 host.
const READ_LIMITS: &str = "if [ -e /sys/fs/cgroup/cgroup.controllers ]; then \
                             read -r line </proc/self/cgroup; dir=/sys/fs/cgroup${line#0::}; \
                             read -r mem <$dir/memory.max; read -r cpu <$dir/cpu.max; \
                           else \
                             read -r mem </sys/fs/cgroup/memory/memory.limit_in_bytes; \
                             read -r quota </sys/fs/cgroup/cpu/cpu.cfs_quota_us; \
                             read -r period </sys/fs/cgroup/cpu/cpu.cfs_period_us; \
                             cpu=\"$quota $period\"; \
                           fi; echo \"$mem $cpu\"";

/// Exec without and with a terminal and UpdateContainerResources in the
/// running container `main`, then Attach to a container with a terminal
/// and a container OOM-killed; returns the failed checks.
pub fn check_streams(pod: &Pod, main: &str, handler: &str) -> Vec<String> {
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut check = |result: Result<(), String>, what: &str| {
        if let Err(e) = result {
            let failure = format!("{what}: {e}");
            eprintln!("FAILED CHECK: {failure}");
            failed.push(failure);
        }
    };
    check(exec_plain(pod, main), "Exec without a terminal");
    check(exec_tty(pod, main), "Exec with a terminal");
    check(
        update_resources(pod, main, handler),
        "UpdateContainerResources",
    );
    check(attach_tty(pod), "Attach to a container with a terminal");
    check(oom_killed(pod), "a container past its memory limit");
    eprintln!(
        "{handler}: streams, updates and OOM took {:?}",
        started.elapsed()
    );
    failed
}

/// Exec's URL for `cmd` in `id`, opened.
fn open_exec(pod: &Pod, id: &str, cmd: &[&str], tty: bool) -> Result<Stream, String> {
    let request = ExecRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|arg| arg.to_string()).collect(),
        tty,
        stdin: tty,
        stdout: true,
        // One stream with a terminal: the CRI refuses stderr with a tty.
        stderr: !tty,
    };
    let url = pod
        .harness
        .client()
        .runtime(|mut c| async move { c.exec(request).await })
        .map_err(|e| format!("Exec: {}", e.message()))?
        .url;
    pod.harness.open_stream(&url)
}

/// stdout and stderr apart, and a nonzero exit code through the error
/// channel's status.
fn exec_plain(pod: &Pod, main: &str) -> Result<(), String> {
    let mut stream = open_exec(pod, main, &["sh", "-c", PLAIN_EXEC], false)?;
    let code = stream.wait_exit(GUEST_DEADLINE)?;
    let (stdout, stderr) = (stream.stdout(), stream.stderr());
    if stdout == "to-out\n" && stderr == "to-err\n" && code == PLAIN_EXIT {
        Ok(())
    } else {
        Err(format!(
            "stdout {stdout:?}, stderr {stderr:?}, exit code {code}; want to-out, to-err, \
             {PLAIN_EXIT}"
        ))
    }
}

/// A shell on a terminal: a line typed reaches it and its output comes
/// back, a resize shows in `stty size`, `exit` ends it with a success.
fn exec_tty(pod: &Pod, main: &str) -> Result<(), String> {
    let mut stream = open_exec(pod, main, &["sh"], true)?;
    stream.resize(COLUMNS, ROWS)?;
    // The output differs from the echoed input: the shell ran the line.
    stream.write_stdin(b"echo typed-$((6*7))\n")?;
    stream.wait_stdout("typed-42", GUEST_DEADLINE)?;
    // The resize and the typed lines reach the guest by different paths:
    // ask again until the size shows.
    let want = format!("{ROWS} {COLUMNS}");
    let mut result = Err(String::new());
    for _ in 0..STTY_TRIES {
        stream.write_stdin(b"stty size\n")?;
        result = stream.wait_stdout(&want, Duration::from_secs(10));
        if result.is_ok() {
            break;
        }
    }
    result.map_err(|e| format!("after a resize to {COLUMNS}x{ROWS}: {e}"))?;
    stream.write_stdin(b"exit\n")?;
    match stream.wait_exit(GUEST_DEADLINE)? {
        0 => Ok(()),
        code => Err(format!("the shell exited with {code}, want 0")),
    }
}

/// A container whose shell has a terminal and stdin: what is written to
/// an attached stream reaches it, its output comes back, and the exit it
/// is told to make is its container's.
fn attach_tty(pod: &Pod) -> Result<(), String> {
    let mut config = container_config("tty", BUSYBOX_IMAGE, &["sh"]);
    config.tty = true;
    config.stdin = true;
    let id = pod.create_and_start(config);
    pod.wait_state(&id, ContainerState::ContainerRunning);
    let request = AttachRequest {
        container_id: id.clone(),
        stdin: true,
        tty: true,
        stdout: true,
        stderr: false,
    };
    let result = pod
        .harness
        .client()
        .runtime(|mut c| async move { c.attach(request).await })
        .map_err(|e| format!("Attach: {}", e.message()))
        .and_then(|attached| pod.harness.open_stream(&attached.url))
        .and_then(|mut stream| {
            stream.write_stdin(b"echo attached-$((5+5))\n")?;
            stream.wait_stdout("attached-10", GUEST_DEADLINE)?;
            stream.write_stdin(format!("exit {ATTACH_EXIT}\n").as_bytes())?;
            stream.close()
        });
    let exited = pod.wait_state(&id, ContainerState::ContainerExited);
    remove(pod, &id);
    result?;
    if exited.exit_code == ATTACH_EXIT {
        Ok(())
    } else {
        Err(format!(
            "the attached shell told to exit {ATTACH_EXIT} ended with {}",
            exited.exit_code
        ))
    }
}

/// UpdateContainerResources of `main`'s memory and CPU limits, which its
/// cgroup then shows; a quota the kernel refuses and (vmpod) a memory
/// limit beyond the pod VM fail and change nothing; vmpod's failures are
/// one line (runc's quote its multi-line output).
fn update_resources(pod: &Pod, main: &str, handler: &str) -> Result<(), String> {
    let update = |memory: i64, quota: i64| {
        let request = UpdateContainerResourcesRequest {
            container_id: main.to_string(),
            linux: Some(LinuxContainerResources {
                cpu_period: UPDATED_PERIOD,
                cpu_quota: quota,
                memory_limit_in_bytes: memory,
                ..Default::default()
            }),
            ..Default::default()
        };
        pod.harness
            .client()
            .runtime(|mut c| async move { c.update_container_resources(request).await })
    };
    update(UPDATED_MEMORY, UPDATED_QUOTA)
        .unwrap_or_else(|e| fail(pod.harness, "UpdateContainerResources", &e));
    let mut refused = vec![("a CPU quota of 500 µs", update(UPDATED_MEMORY, BAD_QUOTA))];
    if handler == VMPOD_HANDLER {
        refused.push(("1 TiB of memory", update(HUGE_MEMORY, UPDATED_QUOTA)));
    }
    for (what, result) in refused {
        match result {
            Ok(_) => return Err(format!("an update to {what} succeeded")),
            Err(e) if handler == VMPOD_HANDLER && e.message().contains('\n') => {
                return Err(format!(
                    "an update to {what}: {:?} is not one line",
                    e.message()
                ))
            }
            Err(e) => eprintln!("{handler}: an update to {what}: {}", e.message()),
        }
    }
    let out = pod
        .exec(main, &["sh", "-c", READ_LIMITS], 0)
        .map_err(|e| format!("ExecSync: {}", e.message()))?;
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let want = format!("{UPDATED_MEMORY} {UPDATED_QUOTA} {UPDATED_PERIOD}");
    if seen == want {
        Ok(())
    } else {
        Err(format!(
            "the container's memory.max and cpu.max: {seen:?} (stderr {:?}), want {want:?}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A container that reads past its memory limit: the kernel kills it,
/// and ContainerStatus says exited, `OOMKilled`.
fn oom_killed(pod: &Pod) -> Result<(), String> {
    let mut config = container_config("oom", BUSYBOX_IMAGE, &OOM_COMMAND);
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: OOM_LIMIT,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = pod.create_and_start(config);
    let deadline = Instant::now() + GUEST_DEADLINE;
    let mut status = pod.container(&id);
    while status.state != ContainerState::ContainerExited as i32 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        status = pod.container(&id);
    }
    if status.state != ContainerState::ContainerExited as i32 {
        // What its cgroup says, for the report; RemoveContainer kills it.
        let seen = pod
            .exec(&id, &["sh", "-c", READ_MEMORY_EVENTS], 0)
            .map_or_else(
                |e| e.message().to_owned(),
                |out| String::from_utf8_lossy(&out.stdout).replace('\n', "; "),
            );
        remove(pod, &id);
        return Err(format!(
            "still running after {GUEST_DEADLINE:?} with a limit of {OOM_LIMIT} bytes: {seen}"
        ));
    }
    let deadline = Instant::now() + OOM_REASON_DEADLINE;
    while status.reason != "OOMKilled" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        status = pod.container(&id);
    }
    remove(pod, &id);
    if status.reason == "OOMKilled" && status.exit_code == 128 + libc::SIGKILL {
        Ok(())
    } else {
        Err(format!(
            "exited with {} reason {:?}, want {} \"OOMKilled\"",
            status.exit_code,
            status.reason,
            128 + libc::SIGKILL
        ))
    }
}

/// RemoveContainer of `id`, which must succeed.
fn remove(pod: &Pod, id: &str) {
    let request = RemoveContainerRequest {
        container_id: id.to_string(),
    };
    pod.harness
        .client()
        .runtime(|mut c| async move { c.remove_container(request).await })
        .unwrap_or_else(|e| fail(pod.harness, "RemoveContainer", &e));
}
