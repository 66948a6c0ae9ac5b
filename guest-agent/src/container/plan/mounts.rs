// SPDX-License-Identifier: Apache-2.0
//! The spec's mounts as mount(2) calls: type, flags and data from the
//! options, destinations resolved inside the root, the pod's `/dev/shm`
//! bound where a bind names [`POD_SHM_DIR`], and mount points made in the
//! image now or, below an earlier mount of the plan, by the child.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use vmpod_agent_api::POD_SHM_DIR;

use super::{cstring, path_cstring, PlanError};
use crate::container::mount_options::MountOptions;
use crate::container::paths::resolve_in_root;

/// One mount in the new mount namespace.
#[derive(Debug)]
pub struct MountStep {
    /// mount(2) source ("" for none).
    pub source: CString,
    /// Host path of the destination (under the root).
    pub target: CString,
    /// mount(2) type ("" for a bind mount).
    pub fstype: CString,
    /// mount(2) flags of the first call.
    pub flags: libc::c_ulong,
    /// File-system data.
    pub data: CString,
    /// A bind mount whose own flags (ro, nosuid, ...) need a remount.
    pub bind_remount_flags: Option<libc::c_ulong>,
    /// Propagation to set after mounting (0 for none).
    pub propagation: libc::c_ulong,
    /// Directories to create first, outermost first (mount points that lie
    /// on a file system mounted by an earlier step).
    pub make_dirs: Vec<CString>,
    /// Create the destination as an empty file (a file bind-mounted).
    pub make_file: bool,
}

/// The spec's mounts in order, and the host path each one mounts on. A
/// bind from [`POD_SHM_DIR`] binds `pod_shm`, the pod's `/dev/shm`.
pub(super) fn plan_mounts(
    spec: &Spec,
    rootfs: &Path,
    pod_shm: Option<&Path>,
) -> Result<(Vec<MountStep>, Vec<PathBuf>), PlanError> {
    let mut mounts = Vec::new();
    // Host paths of earlier mounts: what lies below them is created in the
    // child, on the mounted file system, not in the image.
    let mut mounted: Vec<PathBuf> = Vec::new();
    for mount in spec.mounts().iter().flatten() {
        let (step, target) = plan_mount(mount, rootfs, &mounted, pod_shm)?;
        mounts.push(step);
        mounted.push(target);
    }
    Ok((mounts, mounted))
}

/// One mount, after the ones that mount on `mounted`; its host target.
fn plan_mount(
    mount: &Mount,
    rootfs: &Path,
    mounted: &[PathBuf],
    pod_shm: Option<&Path>,
) -> Result<(MountStep, PathBuf), PlanError> {
    let destination = mount.destination();
    if !destination.is_absolute() {
        return Err(PlanError::NotAbsolute {
            field: "mounts.destination",
            path: destination.display().to_string(),
        });
    }
    let options = MountOptions::parse(mount.options().as_deref().unwrap_or_default());
    let fstype = mount_type(mount.typ().as_deref(), &options)
        .ok_or_else(|| PlanError::MountType(destination.display().to_string()))?;
    let bind = fstype.is_empty();
    let mut source = mount.source().clone().unwrap_or_default();
    if bind && source == Path::new(POD_SHM_DIR) {
        source = pod_shm.ok_or(PlanError::NoPodShm)?.to_owned();
    }
    let target = resolve_in_root(rootfs, destination, mounted)?;
    let source_is_file = bind && std::fs::metadata(&source).is_ok_and(|m| !m.is_dir());
    let (make_dirs, make_file) =
        match dirs_below_earlier_mount("mounts.destination", &target, mounted, source_is_file)? {
            Some(dirs) => (dirs, source_is_file),
            None => {
                create_mount_point(&target, source_is_file)?;
                (Vec::new(), false)
            }
        };
    let step = mount_step(
        &source, &target, fstype, &options, bind, make_dirs, make_file,
    )?;
    Ok((step, target))
}

/// The mount(2) type of a mount: "" for a bind mount; `None` when it has
/// neither a type nor `bind`.
fn mount_type<'a>(typ: Option<&'a str>, options: &MountOptions) -> Option<&'a str> {
    match typ {
        _ if options.bind => Some(""),
        Some("bind") => Some(""),
        // Only cgroup v2 exists in the guest.
        Some("cgroup") => Some("cgroup2"),
        Some(other) if !other.is_empty() => Some(other),
        _ => None,
    }
}

/// The propagation of `/` in the new mount namespace: the spec's
/// `rootfsPropagation`, else (or if it names none) recursive slave.
pub(super) fn root_propagation(name: Option<&str>) -> libc::c_ulong {
    let default = libc::MS_SLAVE | libc::MS_REC;
    match name {
        Some(name) => match MountOptions::parse(&[name]).propagation {
            0 => default,
            parsed => parsed,
        },
        None => default,
    }
}

fn mount_step(
    source: &Path,
    target: &Path,
    fstype: &str,
    options: &MountOptions,
    bind: bool,
    make_dirs: Vec<CString>,
    make_file: bool,
) -> Result<MountStep, PlanError> {
    let own_flags = options.flags & !libc::MS_REC;
    Ok(MountStep {
        source: path_cstring("mounts.source", source)?,
        target: path_cstring("mounts.destination", target)?,
        fstype: cstring("mounts.type", fstype)?,
        flags: if bind {
            libc::MS_BIND | (options.flags & libc::MS_REC)
        } else {
            options.flags
        },
        data: cstring("mounts.options", options.data.as_str())?,
        bind_remount_flags: (bind && own_flags != 0).then_some(own_flags),
        propagation: options.propagation,
        make_dirs,
        make_file,
    })
}

/// Below a file system this plan mounts first (the latest that holds
/// `target`), a path can only be made by the child, once that file system
/// is there: the directories it makes down to `target` (not `target`
/// itself when it is to be a file). None when no such mount holds it.
pub(super) fn dirs_below_earlier_mount(
    field: &'static str,
    target: &Path,
    mounted: &[PathBuf],
    target_is_file: bool,
) -> Result<Option<Vec<CString>>, PlanError> {
    let Some(earlier) = mounted
        .iter()
        .filter(|earlier| target.starts_with(earlier) && target != **earlier)
        .max_by_key(|earlier| earlier.as_os_str().len())
    else {
        return Ok(None);
    };
    let below: Vec<_> = target
        .strip_prefix(earlier)
        .unwrap_or(target)
        .components()
        .collect();
    let mut dirs = Vec::new();
    let mut dir = earlier.clone();
    for (i, part) in below.iter().enumerate() {
        dir.push(part);
        if i + 1 < below.len() || !target_is_file {
            dirs.push(path_cstring(field, &dir)?);
        }
    }
    Ok(Some(dirs))
}

/// Creates a mount point (a directory, or an empty file for a file bind
/// mount) in the image, if it is missing.
fn create_mount_point(target: &Path, file: bool) -> Result<(), PlanError> {
    let error = |source| PlanError::MountPoint {
        path: target.display().to_string(),
        source,
    };
    if file {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(error)?;
        }
        if std::fs::symlink_metadata(target).is_err() {
            std::fs::File::create(target).map_err(error)?;
        }
        Ok(())
    } else {
        std::fs::create_dir_all(target).map_err(error)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::scratch;
    use super::*;

    fn spec(mounts: serde_json::Value) -> Spec {
        let mut spec = Spec::default();
        spec.set_mounts(Some(serde_json::from_value(mounts).unwrap()));
        spec
    }

    #[test]
    fn test_a_file_system_mount_keeps_its_flags_and_data() {
        let root = scratch("tmpfs");
        let spec = spec(serde_json::json!([{
            "destination": "/run", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "size=64m", "rprivate"]
        }]));
        let (mounts, mounted) = plan_mounts(&spec, &root, None).unwrap();
        let step = &mounts[0];
        assert_eq!(step.fstype.as_c_str(), c"tmpfs");
        assert_eq!(step.flags, libc::MS_NOSUID);
        assert_eq!(step.data.as_c_str(), c"size=64m");
        assert_eq!(step.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert_eq!(step.bind_remount_flags, None);
        assert_eq!(mounted, vec![root.join("run")]);
        assert!(root.join("run").is_dir());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_a_read_only_bind_mount_is_remounted_with_its_flags() {
        let root = scratch("bind");
        let spec = spec(serde_json::json!([{
            "destination": "/data", "type": "bind", "source": "/tmp",
            "options": ["rbind", "ro"]
        }]));
        let (mounts, _) = plan_mounts(&spec, &root, None).unwrap();
        let step = &mounts[0];
        assert_eq!(step.fstype.as_c_str(), c"");
        assert_eq!(step.flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(step.bind_remount_flags, Some(libc::MS_RDONLY));
        assert!(!step.make_file);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_a_file_bind_mount_gets_a_file_mount_point() {
        let root = scratch("file");
        let source = root.join("hosts.src");
        std::fs::write(&source, "127.0.0.1 localhost\n").unwrap();
        let spec = spec(serde_json::json!([{
            "destination": "/etc/hosts", "source": source, "options": ["bind"]
        }]));
        plan_mounts(&spec, &root, None).unwrap();
        assert!(root.join("etc/hosts").is_file());
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_mount_points_below_an_earlier_mount_are_left_to_the_child() {
        let root = scratch("nested");
        let spec = spec(serde_json::json!([
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/shm/x", "type": "tmpfs", "source": "shm"}
        ]));
        let (mounts, _) = plan_mounts(&spec, &root, None).unwrap();
        let dev = root.join("dev");
        let expected: Vec<CString> = [dev.join("shm"), dev.join("shm/x")]
            .iter()
            .map(|dir| path_cstring("t", dir).unwrap())
            .collect();
        assert_eq!(mounts[1].make_dirs, expected);
        assert!(!dev.join("shm").exists(), "not made in the image");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_a_bind_of_the_pods_shm_binds_its_tmpfs() {
        let root = scratch("shm");
        let shm = root.join("pod-shm");
        let spec = spec(serde_json::json!([
            {"destination": "/dev/shm", "type": "bind", "source": POD_SHM_DIR,
             "options": ["rbind", "rw"]},
            {"destination": "/run/x", "type": "tmpfs", "source": POD_SHM_DIR}
        ]));
        let (mounts, _) = plan_mounts(&spec, &root, Some(&shm)).unwrap();
        assert_eq!(mounts[0].source, path_cstring("t", &shm).unwrap());
        assert_eq!(mounts[0].flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(mounts[1].source.to_bytes(), POD_SHM_DIR.as_bytes());
        let err = plan_mounts(&spec, &root, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mounts.source /run/vmpod/pod-shm: the pod has no /dev/shm \
             (CreateSandbox's shm_size is 0)"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_mount_types() {
        let plain = MountOptions::default();
        let bind = MountOptions::parse(&["bind"]);
        assert_eq!(mount_type(Some("proc"), &plain), Some("proc"));
        assert_eq!(mount_type(Some("bind"), &plain), Some(""));
        assert_eq!(mount_type(Some("tmpfs"), &bind), Some(""));
        assert_eq!(mount_type(None, &bind), Some(""));
        assert_eq!(mount_type(Some("cgroup"), &plain), Some("cgroup2"));
        assert_eq!(mount_type(Some(""), &plain), None);
        assert_eq!(mount_type(None, &plain), None);
    }

    #[test]
    fn test_mounts_without_type_or_absolute_destination_are_refused() {
        let root = scratch("refused");
        let untyped = spec(serde_json::json!([{"destination": "/x", "source": "x"}]));
        let err = plan_mounts(&untyped, &root, None).unwrap_err();
        assert_eq!(err.to_string(), "mount on /x has no type");
        let relative = spec(serde_json::json!([{"destination": "x", "type": "tmpfs"}]));
        let err = plan_mounts(&relative, &root, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "mounts.destination \"x\" is not an absolute path"
        );
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn test_root_propagation_defaults_to_recursive_slave() {
        assert_eq!(root_propagation(None), libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(
            root_propagation(Some("bogus")),
            libc::MS_SLAVE | libc::MS_REC
        );
        assert_eq!(root_propagation(Some("private")), libc::MS_PRIVATE);
        assert_eq!(
            root_propagation(Some("rshared")),
            libc::MS_SHARED | libc::MS_REC
        );
    }
}
