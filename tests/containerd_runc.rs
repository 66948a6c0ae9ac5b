// SPDX-License-Identifier: Apache-2.0
//! The containerd harness against containerd's own runc shim: a container
//! of the busybox image runs through `ctr run`, its output and exit status
//! come back, and stopping the harness leaves no shim and no mount.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

use vmpod_integration_tests::containerd::{
    containerd_or_skip, count_mounts_below, processes_named, Containerd, ContainerdOptions,
};

const RUNC_SHIM: &str = "containerd-shim-runc-v2";

#[test]
fn test_ctr_runs_busybox_with_runc() {
    let name = "test_ctr_runs_busybox_with_runc";
    if !containerd_or_skip(name, &["runc", RUNC_SHIM]) {
        return;
    }
    let shims_before = processes_named(RUNC_SHIM);
    let mut containerd = Containerd::start(ContainerdOptions::default()).expect("containerd");
    let image = containerd.import_busybox().expect("busybox image");

    let out = containerd.ctr(&[
        "run",
        "--rm",
        &image,
        "vmpod-runc-t1",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "ctr run: stdout {stdout:?}, stderr {stderr:?}\n{}",
        containerd.log_tail(30)
    );
    assert!(stdout.contains("out"), "stdout {stdout:?}");
    assert!(stderr.contains("err"), "stderr {stderr:?}");
    assert!(
        containerd.shim_pids().is_empty(),
        "the shim outlived ctr run --rm"
    );

    let dir = containerd.dir().to_path_buf();
    containerd.stop().expect("stop");
    let shims_after: Vec<u32> = processes_named(RUNC_SHIM)
        .into_iter()
        .filter(|pid| !shims_before.contains(pid))
        .collect();
    assert!(shims_after.is_empty(), "runc shims left: {shims_after:?}");
    assert_eq!(count_mounts_below(&dir), 0, "mounts left below {dir:?}");
    assert!(!dir.exists(), "{dir:?} was not removed");
}
