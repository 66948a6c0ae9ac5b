// SPDX-License-Identifier: Apache-2.0
//! The share against the real kernel (tests run as root): what a planted
//! symlink gets, what the host's mounts allow, and teardown from records.

use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::layout::{recorded_containers, ShareLimits};
use super::*;
use crate::pod::PodDir;

static PODS: AtomicUsize = AtomicUsize::new(0);

/// A pod directory with its share, in a state directory of its own, and a
/// directory for bind sources beside it.
struct TestPod {
    base: PathBuf,
    dir: PodDir,
}

impl TestPod {
    fn new() -> Self {
        let base = std::env::temp_dir().join(format!(
            "vmpod-share-{}-{}",
            std::process::id(),
            PODS.fetch_add(1, Ordering::SeqCst)
        ));
        let dir = PodDir::new(&base.join("state"), "ns", "pod");
        dir.create(ShareLimits {
            size_mib: 1,
            inodes: 64,
        })
        .unwrap();
        std::fs::create_dir_all(base.join("host/root")).unwrap();
        TestPod { base, dir }
    }

    fn host(&self, path: &str) -> PathBuf {
        self.base.join("host").join(path)
    }

    fn share(&self, id: &str) -> ContainerShare {
        ContainerShare::new(&self.dir.root, id)
    }

    /// The mount points below the state directory.
    fn mounted(&self) -> Vec<PathBuf> {
        let state = std::fs::canonicalize(self.base.join("state")).unwrap();
        vmpod_sys::mountinfo::points_below(&state).unwrap()
    }
}

impl Drop for TestPod {
    fn drop(&mut self) {
        let _ = self.dir.remove();
        let _ = vmpod_sys::mountinfo::unmount_below(&self.base);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn flags(path: &Path) -> libc::c_ulong {
    let dir = vmpod_sys::openat::open_trusted_dir(path).unwrap();
    vmpod_sys::mount::flags_of(dir.as_fd()).unwrap()
}

fn spec(mounts: serde_json::Value) -> oci_spec::runtime::Spec {
    serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2", "mounts": mounts})).unwrap()
}

#[test]
fn test_the_pod_directory_is_private_and_the_guests_view_read_only() {
    let pod = TestPod::new();
    for dir in [
        pod.base.join("state"),
        pod.base.join("state/ns"),
        pod.dir.root.clone(),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let shared = pod.dir.shared();
    let view = flags(&shared);
    for flag in [
        libc::ST_RDONLY,
        libc::ST_NOSUID,
        libc::ST_NODEV,
        libc::ST_NOEXEC,
    ] {
        assert_ne!(view & flag, 0, "{flag:#x}");
    }
    let err = std::fs::create_dir(shared.join("c1")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(flags(&pod.dir.mounts()) & libc::ST_RDONLY, 0);
    // A second pod of the same id is refused, and the first stays.
    let again = pod.dir.create(ShareLimits {
        size_mib: 1,
        inodes: 64,
    });
    assert_eq!(again.unwrap_err().kind(), std::io::ErrorKind::AlreadyExists);
    assert!(pod.dir.mounts().is_dir());
    pod.dir.remove().unwrap();
    pod.dir.remove().unwrap();
    assert!(pod.mounted().is_empty(), "{:?}", pod.mounted());
    assert!(!pod.base.join("state/ns").exists());
}

#[test]
fn test_mounts_are_nosuid_nodev_and_ro_binds_read_only_on_the_host() {
    let pod = TestPod::new();
    std::fs::create_dir_all(pod.host("secret")).unwrap();
    std::fs::write(pod.host("secret/token"), "t0ken").unwrap();
    std::fs::write(pod.host("hosts"), "127.0.0.1 localhost\n").unwrap();
    let share = pod.share("c1");
    share
        .mount_rootfs(&[], &pod.host("root"), Some(&[]))
        .unwrap();
    let mut spec = spec(serde_json::json!([
        {"destination": "/secret", "type": "bind",
         "source": pod.host("secret"), "options": ["rbind", "ro"]},
        {"destination": "/etc/hosts", "type": "bind",
         "source": pod.host("hosts"), "options": ["rbind", "rw"]},
    ]));
    share.share_bind_mounts(&mut spec).unwrap();
    let sources: Vec<_> = spec
        .mounts()
        .iter()
        .flatten()
        .map(|mount| mount.source().clone().unwrap())
        .collect();
    assert_eq!(
        sources,
        [
            PathBuf::from("/run/vmpod/shared/c1/mounts/0"),
            PathBuf::from("/run/vmpod/shared/c1/mounts/1")
        ]
    );
    let seen = pod.dir.shared().join("c1");
    // Through the guest's view: the ro source and the read-only root
    // refuse writes; the rw file takes them.
    let err = std::fs::write(seen.join("mounts/0/token"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    let err = std::fs::write(seen.join("rootfs/new"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    std::fs::write(seen.join("mounts/1"), "10.0.0.1 h\n").unwrap();
    assert_eq!(
        std::fs::read_to_string(pod.host("hosts")).unwrap(),
        "10.0.0.1 h\n"
    );
    assert_eq!(
        std::fs::read_to_string(pod.host("secret/token")).unwrap(),
        "t0ken"
    );
    for point in ["rootfs", "mounts/0"] {
        let flags = flags(&seen.join(point));
        assert_ne!(flags & libc::ST_NOSUID, 0, "{point}");
        assert_ne!(flags & libc::ST_NODEV, 0, "{point}");
    }
    share.remove().unwrap();
    assert!(pod.mounted().len() == 2, "{:?}", pod.mounted());
    assert!(!pod.dir.mounts().join("c1").exists());
    assert!(recorded_containers(&pod.dir.root).unwrap().is_empty());
}

#[test]
fn test_a_symlink_at_a_mount_point_is_refused_and_not_followed() {
    let pod = TestPod::new();
    let outside = pod.host("outside");
    std::fs::create_dir_all(outside.join("rootfs")).unwrap();
    // What the guest cannot do through its read-only view, done from the
    // host: a symlink where the next container's directory goes.
    std::os::unix::fs::symlink(&outside, pod.dir.mounts().join("c2")).unwrap();
    let share = pod.share("c2");
    let err = share
        .mount_rootfs(&[], &pod.host("root"), None)
        .unwrap_err();
    assert!(
        err.to_string().starts_with("create ") && err.to_string().ends_with("/mounts/c2"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(outside.join("rootfs")).unwrap().count(),
        0
    );
    assert!(pod.mounted().len() == 2, "{:?}", pod.mounted());
    // The rollback removed nothing it did not make: the planted link stays.
    assert!(pod.dir.mounts().join("c2").is_symlink());
    assert!(recorded_containers(&pod.dir.root).unwrap().is_empty());
    std::fs::remove_file(pod.dir.mounts().join("c2")).unwrap();
    // A symlink where the bind mounts' directory goes.
    share.mount_rootfs(&[], &pod.host("root"), None).unwrap();
    std::os::unix::fs::symlink(&outside, pod.dir.mounts().join("c2/mounts")).unwrap();
    std::fs::write(pod.host("hosts"), "hosts").unwrap();
    let mut spec = spec(serde_json::json!([
        {"destination": "/etc/hosts", "type": "bind",
         "source": pod.host("hosts"), "options": ["rbind"]},
    ]));
    let err = share.share_bind_mounts(&mut spec).unwrap_err();
    assert!(err.to_string().ends_with("/mounts/c2/mounts"), "{err}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    // The rootfs, in mounts/ and in the guest's view.
    assert_eq!(pod.mounted().len(), 4, "{:?}", pod.mounted());
    std::fs::remove_file(pod.dir.mounts().join("c2/mounts")).unwrap();
    share.remove().unwrap();
    assert_eq!(pod.mounted().len(), 2, "{:?}", pod.mounted());
    assert!(recorded_containers(&pod.dir.root).unwrap().is_empty());
}

#[test]
fn test_a_removal_that_failed_part_way_finishes_when_retried() {
    let pod = TestPod::new();
    std::fs::create_dir_all(pod.host("data")).unwrap();
    let share = pod.share("c1");
    share.mount_rootfs(&[], &pod.host("root"), None).unwrap();
    let mut spec = spec(serde_json::json!([
        {"destination": "/data", "type": "bind", "source": pod.host("data"),
         "options": ["rbind"]},
    ]));
    share.share_bind_mounts(&mut spec).unwrap();
    assert_eq!(recorded_containers(&pod.dir.root).unwrap(), ["c1"]);
    // Something unrecorded in a directory the shim made: its removal fails
    // after the mounts went.
    std::fs::write(pod.dir.mounts().join("c1/mounts/stray"), "").unwrap();
    let err = share.remove().unwrap_err();
    assert!(err.to_string().starts_with("remove "), "{err}");
    assert_eq!(pod.mounted().len(), 2, "{:?}", pod.mounted());
    assert_eq!(recorded_containers(&pod.dir.root).unwrap(), ["c1"]);
    std::fs::remove_file(pod.dir.mounts().join("c1/mounts/stray")).unwrap();
    share.remove().unwrap();
    share.remove().unwrap();
    assert!(!pod.dir.mounts().join("c1").exists());
    assert!(recorded_containers(&pod.dir.root).unwrap().is_empty());
    // The bind source was never touched.
    assert!(pod.host("data").is_dir());
}

#[test]
fn test_the_pod_goes_whole_with_containers_still_mounted() {
    let pod = TestPod::new();
    std::fs::write(pod.host("root/kept"), "kept").unwrap();
    pod.share("c1")
        .mount_rootfs(&[], &pod.host("root"), None)
        .unwrap();
    pod.share("c2")
        .mount_rootfs(&[], &pod.host("root"), None)
        .unwrap();
    // Two rootfs, each in mounts/ and in the guest's view.
    assert_eq!(pod.mounted().len(), 6, "{:?}", pod.mounted());
    pod.dir.remove().unwrap();
    assert!(pod.mounted().is_empty(), "{:?}", pod.mounted());
    assert!(!pod.dir.root.exists());
    assert_eq!(
        std::fs::read_to_string(pod.host("root/kept")).unwrap(),
        "kept"
    );
}

#[test]
fn test_a_bad_rootfs_mount_is_named_and_leaves_nothing() {
    let pod = TestPod::new();
    let share = pod.share("c1");
    let mount = ContainerdMount {
        type_: "overlay".into(),
        source: "overlay".into(),
        options: vec![format!("lowerdir={}", pod.host("nonexistent").display())],
        ..Default::default()
    };
    let err = share
        .mount_rootfs(&[mount], &pod.host("root"), None)
        .unwrap_err();
    assert!(
        err.to_string().starts_with("mount overlay (overlay) on "),
        "{err}"
    );
    assert!(!pod.dir.mounts().join("c1").exists());
    assert!(recorded_containers(&pod.dir.root).unwrap().is_empty());
    assert_eq!(pod.mounted().len(), 2);
}

#[test]
fn test_an_overlay_rootfs_is_mounted_layer_by_layer() {
    let pod = TestPod::new();
    for layer in ["l1", "l2", "upper", "work"] {
        std::fs::create_dir_all(pod.host(layer)).unwrap();
    }
    std::fs::write(pod.host("l1/a"), "1").unwrap();
    std::fs::write(pod.host("l2/a"), "2").unwrap();
    let share = pod.share("c1");
    let mount = ContainerdMount {
        type_: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            "index=off".into(),
            format!("workdir={}", pod.host("work").display()),
            format!("upperdir={}", pod.host("upper").display()),
            format!(
                "lowerdir={}:{}",
                pod.host("l2").display(),
                pod.host("l1").display()
            ),
        ],
        ..Default::default()
    };
    share
        .mount_rootfs(&[mount], &pod.host("root"), None)
        .unwrap();
    let rootfs = pod.dir.shared().join("c1/rootfs");
    assert_eq!(std::fs::read_to_string(rootfs.join("a")).unwrap(), "2");
    std::fs::write(rootfs.join("b"), "guest").unwrap();
    assert_eq!(
        std::fs::read_to_string(pod.host("upper/b")).unwrap(),
        "guest"
    );
    assert_ne!(flags(&rootfs) & libc::ST_NOSUID, 0);
    share.remove().unwrap();
    assert_eq!(pod.mounted().len(), 2);
}

#[test]
fn test_a_read_only_root_gets_its_mount_points_before_it_is_sealed() {
    let pod = TestPod::new();
    std::fs::create_dir_all(pod.host("root/bin")).unwrap();
    std::os::unix::fs::symlink("/bin", pod.host("root/linked")).unwrap();
    let share = pod.share("c1");
    let point = |destination: &str, is_dir: bool| MountPoint {
        destination: destination.into(),
        is_dir,
    };
    share
        .mount_rootfs(
            &[],
            &pod.host("root"),
            Some(&[
                point("/etc/resolv.conf", false),
                point("/dev/shm", true),
                point("/bin", true),
                point("/linked/escape", true),
            ]),
        )
        .unwrap();
    let rootfs = pod.dir.mounts().join("c1/rootfs");
    assert!(rootfs.join("etc/resolv.conf").is_file());
    assert!(rootfs.join("dev/shm").is_dir());
    // Through a symlink: left to the agent, nothing made where it points.
    assert!(!pod.host("root/bin/escape").exists());
    let err = std::fs::create_dir(rootfs.join("more")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    share.remove().unwrap();
}
