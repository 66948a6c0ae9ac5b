// SPDX-License-Identifier: Apache-2.0
//! The pod's share under attack: a privileged container mounts the pod's
//! virtio-fs share (tag `vmpod`) as a compromised guest kernel sees it, and
//! plants symlinks where the next container's rootfs and bind mounts go,
//! replaces teardown paths, renames to a non-UTF-8 name, fills the share,
//! writes to a read-only bind source, and makes a setuid-root file and a
//! 0666 device node in its root file system. The host then checks its own
//! files, the mounts' flags, what the user `nobody` gets, that a second
//! pod's and the attacker's deletes work, and that nothing is left.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use vmpod_integration_tests::containerd::NAMESPACE;

use crate::fixture::{fixture, text, Fixture, JOIN};

/// The attacker's pod (and container).
const ATTACKER: &str = "vh-attacker";
/// A container that joins the attacker's pod after the attack.
const VICTIM: &str = "vh-victim";
/// Another pod, deleted after the attack.
const OTHER: &str = "vh-other";
/// The host user the setuid file and the device node are tried as.
const NOBODY: u32 = 65534;

/// The attack, run in the attacker's container with `HOST_DIR` and
/// `HOST_FILE` set to host paths it aims its symlinks at. Each step prints
/// `NAME: done` or `NAME: refused`.
const ATTACK: &str = r#"
t() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "$name: done"; else echo "$name: refused"; fi; }
mkdir -p /g && mount -t virtiofs vmpod /g || { echo "no share"; exit 99; }
t plant-rootfs ln -s "$HOST_DIR" /g/vh-victim
t plant-rootfs-dir mkdir /g/vh-victim
t plant-bind-point ln -s "$HOST_FILE" /g/vh-attacker/mounts/99
t replace-rootfs mv /g/vh-attacker/rootfs /g/vh-attacker/old
t replace-container-dir mv /g/vh-attacker /g/moved
t link-teardown-path ln -s / /g/vh-attacker/escape
t rename-non-utf8 mv /g/vh-attacker/mounts "/g/vh-attacker/$(printf '\377')"
t fill-share dd if=/dev/zero of=/g/fill bs=1M count=4
for d in /g/vh-attacker/mounts/*; do
  if [ -e "$d/token" ]; then t write-ro-source sh -c "echo pwned > $d/token"; fi
done
t remount-ro-bind sh -c 'mount -o remount,bind,rw /secret && echo pwned > /secret/token'
t make-setuid sh -c 'cp /bin/busybox /suid && chmod 4755 /suid'
t make-device sh -c 'mknod /kmsg c 1 11 && chmod 666 /kmsg'
echo attack over
"#;

/// What the share and the host must have refused.
const REFUSED: [&str; 10] = [
    "plant-rootfs",
    "plant-rootfs-dir",
    "plant-bind-point",
    "replace-rootfs",
    "replace-container-dir",
    "link-teardown-path",
    "rename-non-utf8",
    "fill-share",
    "write-ro-source",
    "remount-ro-bind",
];

/// Host files and directories the guest aims at; none may change.
struct Canaries {
    dir: PathBuf,
}

impl Canaries {
    fn new(work: &Path) -> Canaries {
        let dir = work.join("host");
        std::fs::create_dir_all(dir.join("target-dir")).unwrap();
        std::fs::create_dir_all(dir.join("ro-source")).unwrap();
        std::fs::create_dir_all(dir.join("rw-source")).unwrap();
        std::fs::write(dir.join("target-file"), "host file").unwrap();
        std::fs::write(dir.join("ro-source/token"), "t0ken").unwrap();
        Canaries { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Nothing changed, and nothing is mounted on or below them.
    fn assert_unchanged(&self, when: &str) {
        let entries = std::fs::read_dir(self.path("target-dir")).unwrap().count();
        assert_eq!(entries, 0, "{when}: the host directory got entries");
        assert_eq!(
            std::fs::read_to_string(self.path("target-file")).unwrap(),
            "host file",
            "{when}"
        );
        assert_eq!(
            std::fs::read_to_string(self.path("ro-source/token")).unwrap(),
            "t0ken",
            "{when}"
        );
        let real = std::fs::canonicalize(&self.dir).unwrap();
        let mounted = vmpod_sys::mountinfo::points_below(&real).unwrap();
        assert!(
            mounted.is_empty(),
            "{when}: mounted on the host: {mounted:?}"
        );
    }
}

/// The pod directory of `pod` in the fixture's state directory.
fn pod_dir(f: &Fixture, pod: &str) -> PathBuf {
    f.pods.join(NAMESPACE).join(pod)
}

/// Runs the attack in the attacker's container; its lines.
fn attack(f: &Fixture, canaries: &Canaries) -> String {
    let host_dir = format!("HOST_DIR={}", canaries.path("target-dir").display());
    let host_file = format!("HOST_FILE={}", canaries.path("target-file").display());
    let (out, _) = f.retry_host_fault(
        ATTACKER,
        "exec attack",
        |attempt| {
            let exec_id = format!("attack-{attempt}");
            let out = f.ctr(&[
                "task",
                "exec",
                "--exec-id",
                &exec_id,
                ATTACKER,
                "env",
                &host_dir,
                &host_file,
                "sh",
                "-c",
                ATTACK,
            ]);
            let status = out.status.code();
            (out, status)
        },
        |(_, status)| *status,
    );
    f.ok("exec attack", &out);
    let lines = text(&out.stdout);
    eprintln!("the attack, as the guest saw it:\n{lines}");
    assert!(
        lines.contains("attack over"),
        "{lines}\n{}",
        text(&out.stderr)
    );
    lines
}

/// The guest-made setuid file run by `nobody` (through a descriptor the
/// test opened as root, so that the pod directory's mode is not what stops
/// it): its effective uid must stay nobody's.
fn assert_setuid_is_dead(rootfs: &Path) {
    let suid = rootfs.join("suid");
    let mode = std::fs::metadata(&suid).unwrap().permissions().mode();
    assert_ne!(mode & 0o4000, 0, "the guest's setuid bit is kept: {mode:o}");
    let file = std::fs::File::open(&suid).unwrap();
    let out = Command::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .arg0("id")
        .arg("-u")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout).trim(), NOBODY.to_string(), "euid");
    // By its path, nobody does not even reach it.
    let out = Command::new(&suid)
        .arg0("id")
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    assert!(
        out.as_ref()
            .is_err_and(|err| err.kind() == std::io::ErrorKind::PermissionDenied),
        "{out:?}"
    );
}

/// The guest-made 0666 node of /dev/kmsg opens for nobody (by path) or
/// for root: the mount is nodev.
fn assert_device_is_dead(rootfs: &Path) {
    let node = rootfs.join("kmsg");
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&node)
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    let out = Command::new("/bin/sh")
        .args(["-c", "echo vmpod > \"$0\"", &node.display().to_string()])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "nobody wrote the guest's device node"
    );
}

/// The mount's `ST_*` flags at `path`.
fn mount_flags(path: &Path) -> libc::c_ulong {
    let dir = vmpod_sys::openat::open_trusted_dir(path).unwrap();
    vmpod_sys::mount::flags_of(std::os::fd::AsFd::as_fd(&dir)).unwrap()
}

#[test]
fn test_a_hostile_guest_cannot_steer_the_hosts_file_operations() {
    let test = "hostile_share";
    let _machine = crate::one_attack_at_a_time();
    let Some(f) = fixture(test, "") else {
        return;
    };
    let canaries = Canaries::new(&f.work);
    let ro_bind = format!(
        "type=bind,src={},dst=/secret,options=rbind:ro",
        canaries.path("ro-source").display()
    );
    f.start_detached(
        ATTACKER,
        &["--privileged", "--mount", &ro_bind],
        ATTACKER,
        &["sleep", "3600"],
    );
    f.start_detached(OTHER, &[], OTHER, &["sleep", "3600"]);
    let attacker_dir = pod_dir(&f, ATTACKER);
    for dir in [&attacker_dir, &pod_dir(&f, OTHER)] {
        let mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }

    let lines = attack(&f, &canaries);
    for step in REFUSED {
        assert!(
            lines.contains(&format!("{step}: refused")),
            "{step} was not refused:\n{lines}"
        );
    }
    canaries.assert_unchanged("after the attack");

    // The guest's files in its own (writable) root: no setuid, no device
    // on the host.
    let rootfs = attacker_dir.join("mounts").join(ATTACKER).join("rootfs");
    let flags = mount_flags(&rootfs);
    assert_ne!(flags & libc::ST_NOSUID, 0, "rootfs not nosuid");
    assert_ne!(flags & libc::ST_NODEV, 0, "rootfs not nodev");
    if lines.contains("make-setuid: done") {
        assert_setuid_is_dead(&rootfs);
    }
    if lines.contains("make-device: done") {
        assert_device_is_dead(&rootfs);
    }

    // The next container joins the attacked pod; its rootfs and its bind
    // mount land where they belong.
    let rw_bind = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        canaries.path("rw-source").display()
    );
    let sandbox = format!("io.kubernetes.cri.sandbox-id={ATTACKER}");
    f.start_detached(
        ATTACKER,
        &[
            JOIN[0],
            JOIN[1],
            "--annotation",
            &sandbox,
            "--mount",
            &rw_bind,
        ],
        VICTIM,
        &["sh", "-c", "echo from-guest > /data/written; sleep 3600"],
    );
    canaries.assert_unchanged("after a container joined the attacked pod");
    let written = canaries.path("rw-source/written");
    let deadline = std::time::Instant::now() + crate::fixture::GUEST_DEADLINE;
    // The file may show before its line does.
    let read = || std::fs::read_to_string(&written).unwrap_or_default();
    while read() != "from-guest\n" && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(
        read(),
        "from-guest\n",
        "the guest's write through its rw bind"
    );
    assert!(attacker_dir
        .join("mounts")
        .join(VICTIM)
        .join("rootfs")
        .is_dir());

    // Another pod is deleted while the attacker's pod runs.
    f.ok(
        "kill other",
        &f.ctr(&["task", "kill", "-s", "SIGKILL", OTHER]),
    );
    f.wait_status(OTHER, Some("STOPPED"));
    f.ok("task rm other", &f.ctr(&["task", "rm", OTHER]));
    f.ok("container rm other", &f.ctr(&["container", "rm", OTHER]));
    assert!(!pod_dir(&f, OTHER).exists());

    for id in [VICTIM, ATTACKER] {
        let _ = f.ctr(&["task", "kill", "-s", "SIGKILL", id]);
        f.wait_status(id, Some("STOPPED"));
        f.ok(&format!("task rm {id}"), &f.ctr(&["task", "rm", id]));
        f.ok(
            &format!("container rm {id}"),
            &f.ctr(&["container", "rm", id]),
        );
    }
    f.assert_nothing_left("after the attacked pod was deleted");
    canaries.assert_unchanged("after the deletes");
}
