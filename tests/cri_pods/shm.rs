// SPDX-License-Identifier: Apache-2.0
//! The pod's `/dev/shm`: one tmpfs its containers share, of containerd's
//! size (64 MiB) and mode 1777. With vmpod it is the guest's own: the
//! containers see a tmpfs, not virtio-fs, and what they write there never
//! reaches containerd's host tmpfs of the sandbox.

use std::path::PathBuf;

use vmpod_integration_tests::cri::VMPOD_HANDLER;

use crate::calls::Pod;

/// The file one container writes and the other reads.
const SHM_FILE: &str = "/dev/shm/vmpod-cri-shm";
/// What it holds.
const TOKEN: &str = "written-by-the-writer";
/// The size of containerd 1.6's pod `/dev/shm`, KiB.
const SHM_KIB: &str = "65536";

/// `writer` writes a file to `/dev/shm`, `reader` (another container of
/// the pod) reads it and reports its `/dev/shm`; two ExecSyncs in all.
/// Returns the failed checks, each on its own line.
pub fn check_pod_shm(pod: &Pod, writer: &str, reader: &str, handler: &str) -> Vec<String> {
    let mut failures = Vec::new();
    let write = format!("echo {TOKEN} > {SHM_FILE}");
    let written = pod.exec(writer, &["sh", "-c", &write], 0);
    check(
        &mut failures,
        written.as_ref().is_ok_and(|out| out.exit_code == 0),
        format!("writing {SHM_FILE}: {written:?}"),
    );
    let look = format!(
        "cat {SHM_FILE}; stat -c %a /dev/shm; df -k /dev/shm; grep ' /dev/shm ' /proc/mounts"
    );
    let out = match pod.exec(reader, &["sh", "-c", &look], 0) {
        Ok(out) => out,
        Err(err) => {
            check(
                &mut failures,
                false,
                format!("looking at /dev/shm: {err:?}"),
            );
            return failures;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let line = |n: usize| lines.get(n).copied().unwrap_or_default();
    check(
        &mut failures,
        line(0) == TOKEN,
        format!("/dev/shm is not shared by the pod's containers: {stdout:?}"),
    );
    check(
        &mut failures,
        line(1) == "1777",
        format!("/dev/shm's mode: {:?}, want 1777", line(1)),
    );
    // df: a header, then `FILESYSTEM 1K-BLOCKS USED AVAILABLE USE% MOUNTED-ON`.
    let size = line(3).split_whitespace().nth(1).unwrap_or_default();
    check(
        &mut failures,
        size == SHM_KIB,
        format!("/dev/shm's size: {size:?} KiB, want {SHM_KIB}: {stdout:?}"),
    );
    let fs_type = line(4).split_whitespace().nth(2).unwrap_or_default();
    check(
        &mut failures,
        fs_type == "tmpfs",
        format!("/dev/shm's type in /proc/mounts: {fs_type:?}, want tmpfs: {stdout:?}"),
    );
    // containerd's tmpfs of the sandbox on the host: runc's containers
    // write there; vmpod's never reach it.
    let host = sandbox_shm(pod).join(SHM_FILE.trim_start_matches("/dev/shm/"));
    let on_host = std::fs::read_to_string(&host).ok();
    if handler == VMPOD_HANDLER {
        check(
            &mut failures,
            on_host.is_none(),
            format!("the guest's /dev/shm reached the host's {host:?}"),
        );
    } else {
        check(
            &mut failures,
            on_host.as_deref() == Some(&format!("{TOKEN}\n")),
            format!("runc: {host:?} holds {on_host:?}"),
        );
    }
    failures
}

/// Records `what` as a failure unless `ok`.
fn check(failures: &mut Vec<String>, ok: bool, what: String) {
    if !ok {
        eprintln!("FAILED CHECK: {what}");
        failures.push(what);
    }
}

/// containerd's host `/dev/shm` of the sandbox: the source of the
/// sandbox spec's bind at `/dev/shm` (containerd's verbose status
/// carries the spec; its default tmpfs there comes first).
fn sandbox_shm(pod: &Pod) -> PathBuf {
    let status = pod.status();
    let info: serde_json::Value =
        serde_json::from_str(status.info.get("info").expect("verbose info")).expect("JSON");
    let mounts = info["runtimeSpec"]["mounts"]
        .as_array()
        .expect("the sandbox spec's mounts");
    let source = mounts
        .iter()
        .find(|mount| mount["destination"] == "/dev/shm" && mount["type"] == "bind")
        .and_then(|mount| mount["source"].as_str())
        .expect("a /dev/shm bind in the sandbox spec");
    PathBuf::from(source)
}
