// SPDX-License-Identifier: Apache-2.0
//! A real pod's `vmpod-vm` under containerd, checked from the host: jailed
//! by `vmpod-jailer` (the shim's default), every thread has `NoNewPrivs`,
//! its seccomp filter (`Seccomp: 2`), only the virtio-fs capabilities (effective, permitted, bounding,
//! ambient) and the pod's leased uid/gid; its mount, PID, IPC and UTS
//! namespaces are its own and its network namespace is the pod's; its root
//! is the jail; it and the shim are in the spec's cgroup. The guest's file
//! operations still work: root's files are root's, chown and setgid modes
//! hold. After delete — and
//! after delete following a killed shim — nothing of the jail is left: no
//! jail root, no cgroup, no id lease.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

// shim_containerd's fixture, of which these tests use a part.
#[allow(dead_code)]
#[path = "shim_containerd/fixture.rs"]
mod fixture;
#[path = "confinement/proc.rs"]
mod proc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fixture::{children, fixture, text, Fixture};
use proc::{
    cgroup_dirs, cgroups, field, limit, listing, namespace, namespace_file, thread_statuses,
    KEPT_CAPS,
};
use vmpod_integration_tests::containerd::{containerd_or_skip, NAMESPACE};
use vmpod_integration_tests::netns::PodNetns;
use vmpod_shim::pod::JAIL_IDS;

/// The jail's ids when the config leaves `jail-ids` out.
const DEFAULT_IDS: std::ops::RangeInclusive<u32> = 2_000_000_000..=2_000_065_535;
/// What the jail's root holds.
const JAIL_ROOT: [&str; 7] = [
    "console.log",
    "dev",
    "initrd",
    "kernel",
    "proc",
    "run",
    "share",
];

/// The pod's jailer (what the pid file names) and its jailed `vmpod-vm`.
fn jail_processes(f: &Fixture, pod: &str) -> (u32, u32) {
    let pid_file = f.pods.join(NAMESPACE).join(pod).join("vmm.pid");
    let jailer: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("{}: no pid", pid_file.display()));
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert_eq!(comm(jailer).trim_end(), "vmpod-jailer");
    let vmm: Vec<u32> = children(jailer)
        .into_iter()
        .flat_map(children)
        .filter(|pid| comm(*pid).trim_end() == "vmpod-vm")
        .collect();
    assert_eq!(vmm.len(), 1, "the jail's vmpod-vm: {vmm:?}");
    (jailer, vmm[0])
}

/// Every thread of `vmm`: NoNewPrivs, the kept capabilities only, the
/// pod's uid and gid (real and saved: the virtio-fs server switches the
/// effective ones per request); returns the id.
fn assert_threads_confined(vmm: u32) -> u32 {
    let threads = thread_statuses(vmm);
    assert!(threads.len() >= 3, "main, devices and a vCPU: {threads:?}");
    let id = field(&threads[0].1, "Uid:")[0].parse::<u32>().unwrap();
    assert!(DEFAULT_IDS.contains(&id), "uid {id}");
    for (tid, status) in &threads {
        let name = field(status, "Name:").join(" ");
        let what = format!("thread {tid} ({name})");
        assert_eq!(field(status, "NoNewPrivs:"), ["1"], "{what}");
        assert_eq!(field(status, "Seccomp:"), ["2"], "{what}: seccomp");
        for set in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(status, set), [KEPT_CAPS], "{what}: {set}");
        }
        for ids in ["Uid:", "Gid:"] {
            let values = field(status, ids);
            assert_eq!(values.len(), 4, "{what}: {ids}");
            assert_eq!(values[0], id.to_string(), "{what}: real {ids}");
            assert_eq!(values[2], id.to_string(), "{what}: saved {ids}");
        }
        assert!(field(status, "Groups:").is_empty(), "{what}");
    }
    id
}

/// The namespaces: mnt, pid, ipc and uts its own; net the pod's.
fn assert_namespaces(vmm: u32, pod_netns: &Path) {
    // SAFETY: getpid has no preconditions.
    let host = unsafe { libc::getpid() } as u32;
    for kind in ["mnt", "pid", "ipc", "uts"] {
        let (vm, ours) = (namespace(vmm, kind), namespace(host, kind));
        assert!(
            !vm.is_empty() && vm != ours,
            "{kind}: {vm} (the host's {ours})"
        );
    }
    assert_eq!(namespace(vmm, "net"), namespace_file(pod_netns));
    let nspid = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    assert_eq!(field(&nspid, "NSpid:"), [vmm.to_string(), "2".into()]);
}

/// Its root is the jail: only what the VMM needs.
fn assert_jail_root(vmm: u32) {
    let root = PathBuf::from(format!("/proc/{vmm}/root"));
    assert_eq!(listing(&root), JAIL_ROOT);
    assert_eq!(listing(&root.join("dev")), ["kvm", "net", "urandom"]);
    assert_eq!(listing(&root.join("dev/net")), ["tun"]);
    // The fixture's first pod boots cold and makes its shape's template
    // (templates are on by default): its VMM serves the control API, and
    // its snapshot has been moved out of the jail.
    assert_eq!(
        listing(&root.join("run")),
        ["api.sock", "vsock.sock", "vsock.sock_1025"]
    );
    // Its /proc is its PID namespace's: the jail's init and itself.
    let pids: Vec<String> = listing(&root.join("proc"))
        .into_iter()
        .filter(|name| name.parse::<u32>().is_ok())
        .collect();
    assert_eq!(pids, ["1", "2"]);
}

/// `pod`'s cgroup path `cgroup` holds the VMM and the shim, in every
/// hierarchy; limits as the shim sets them.
fn assert_cgroup_and_limits(f: &Fixture, vmm: u32, cgroup: &str) {
    for pid in [vmm].into_iter().chain(f.containerd.shim_pids()) {
        let paths = cgroups(pid);
        assert!(!paths.is_empty());
        assert!(paths.iter().all(|path| path == cgroup), "{pid}: {paths:?}");
    }
    assert_eq!(limit(vmm, "Max core file size").as_deref(), Some("0"));
    // 256 MiB of guest RAM, 512 MiB and 72 per vCPU of the VMM's own.
    let address_space = (256 + 512 + 72) << 20;
    assert_eq!(
        limit(vmm, "Max address space"),
        Some(address_space.to_string())
    );
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    eprintln!(
        "vmpod-vm, 256 MiB guest: VmPeak {:?}, VmRSS {:?}",
        field(&status, "VmPeak:"),
        field(&status, "VmRSS:")
    );
}

/// Nothing of the jail is left: the pod directory (with the jail's root),
/// the cgroup in every hierarchy, the id's lease.
fn assert_jail_gone(f: &Fixture, cgroup: &str, id: u32, when: &str) {
    f.assert_nothing_left(when);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let cgroups: Vec<_> = cgroup_dirs(cgroup)
            .into_iter()
            .filter(|d| d.exists())
            .collect();
        let lease = Path::new(JAIL_IDS).join(id.to_string());
        if cgroups.is_empty() && !lease.exists() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: left: cgroups {cgroups:?}, id lease {}",
            lease.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The parent the jail made for the test's path (not the pod's).
    for dir in cgroup_dirs(cgroup) {
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[test]
fn test_a_pods_vmm_is_jailed_and_leaves_nothing() {
    let test = "test_a_pods_vmm_is_jailed_and_leaves_nothing";
    // Short: the fixture's directory is in the pod's socket paths.
    let Some(f) = fixture("jailed", "") else {
        return;
    };
    if !containerd_or_skip(test, &["ip", "tc"]) {
        return;
    }
    let net = PodNetns::create(&format!("j{}", std::process::id()));
    let with_ns = format!("network:{}", net.pod.path().display());
    let cgroup = format!("/vmpod-confinement-{}/cf-pod", std::process::id());
    f.start_detached(
        "cf-pod",
        &["--with-ns", &with_ns, "--cgroup", &cgroup],
        "cf-pod",
        &["sleep", "3600"],
    );
    let (_jailer, vmm) = jail_processes(&f, "cf-pod");
    // The jailed VMM wrote the template the shim sealed and moved out.
    let templates: Vec<PathBuf> = std::fs::read_dir(f.pods.join(".templates"))
        .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
        .unwrap_or_default();
    assert!(
        templates.iter().any(|dir| dir.join("vmstate").is_file()),
        "no template made: {templates:?}"
    );
    let id = assert_threads_confined(vmm);
    assert_namespaces(vmm, &net.pod.path());
    assert_jail_root(vmm);
    assert_cgroup_and_limits(&f, vmm, &cgroup);
    let lease = Path::new(JAIL_IDS).join(id.to_string());
    assert!(lease.is_file(), "{}", lease.display());
    // The tap was handed to the jail's id, or the VMM could not have
    // attached it without CAP_NET_ADMIN.
    let tap = net.pod.ip(&["-d", "link", "show", "tap0_vmpod"]);
    assert!(tap.contains(&format!("user {id} group {id}")), "{tap}");

    // The guest's file operations on the share, as root and as another
    // user, with the VMM's few capabilities.
    let out = f.retry_host_fault(
        "cf-pod",
        "exec files",
        |attempt| {
            let exec_id = format!("files-{attempt}");
            let script = "echo x > /by-root && stat -c %u:%g /by-root && \
                          chown 1000:1000 /by-root && stat -c %u:%g /by-root && \
                          mkdir /dir && chmod 2751 /dir && stat -c %a /dir";
            f.ctr(&[
                "task",
                "exec",
                "--exec-id",
                &exec_id,
                "cf-pod",
                "sh",
                "-c",
                script,
            ])
        },
        |out| out.status.code(),
    );
    f.ok("exec files", &out);
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines, ["0:0", "1000:1000", "2751"], "{stdout}");

    f.ok("kill", &f.ctr(&["task", "kill", "-s", "KILL", "cf-pod"]));
    f.wait_status("cf-pod", Some("STOPPED"));
    f.ok("task rm", &f.ctr(&["task", "rm", "cf-pod"]));
    f.ok("container rm", &f.ctr(&["container", "rm", "cf-pod"]));
    assert_jail_gone(&f, &cgroup, id, "after delete");
}

#[test]
fn test_delete_after_a_killed_shim_removes_the_jail() {
    let Some(f) = fixture("jail-dead", "") else {
        return;
    };
    let cgroup = format!("/vmpod-confinement-{}/cf-dead", std::process::id());
    f.start_detached(
        "cf-dead",
        &["--cgroup", &cgroup],
        "cf-dead",
        &["sleep", "3600"],
    );
    let (jailer, vmm) = jail_processes(&f, "cf-dead");
    let id = assert_threads_confined(vmm);
    assert_ne!(namespace(vmm, "net"), namespace(std::process::id(), "net"));
    let shims = f.containerd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    // SAFETY: kill(2) on the shim's pid, found just above.
    unsafe { libc::kill(shims[0] as i32, libc::SIGKILL) };
    // The jail dies with the shim (parent-death signals all the way down).
    let deadline = Instant::now() + Duration::from_secs(20);
    while [jailer, vmm]
        .iter()
        .any(|pid| Path::new(&format!("/proc/{pid}")).exists())
    {
        assert!(Instant::now() < deadline, "the jail outlived its shim");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = f.ctr(&["task", "rm", "cf-dead"]);
    f.ok("container rm", &f.ctr(&["container", "rm", "cf-dead"]));
    assert_jail_gone(&f, &cgroup, id, "after delete following a killed shim");
}
