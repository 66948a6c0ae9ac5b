// SPDX-License-Identifier: Apache-2.0
//! The mount table (`/proc/self/mountinfo`) and taking down what is
//! mounted below a directory: the shim's pod share and the tests'
//! containerd directories are trees of mounts that must all go before the
//! directory can.
//!
//! The table is read as bytes: a mount point is any path, UTF-8 or not.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// How many rounds [`unmount_below`] detaches before it gives up on
/// mounts that keep appearing.
const MAX_UNMOUNT_ROUNDS: usize = 8;

/// One line of the mount table, the fields vmpod uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted (the fifth field).
    pub point: PathBuf,
    /// The file system type (the first field after the ` - ` separator),
    /// e.g. `cgroup2`; empty if the line has none.
    pub fs_type: String,
}

/// The mounts of the calling process's mount namespace, in table order
/// (a mount stacked on another comes after it).
///
/// # Errors
/// `/proc/self/mountinfo` cannot be read.
pub fn mounts() -> std::io::Result<Vec<Mount>> {
    Ok(parse(&std::fs::read("/proc/self/mountinfo")?))
}

/// The mounts of a mount table's text; lines too short to hold a mount
/// point are passed over.
pub fn parse(mountinfo: &[u8]) -> Vec<Mount> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut fields = line.split(|&b| b == b' ');
            let point = fields.nth(4)?;
            let fs_type = fields
                .skip_while(|field| *field != b"-")
                .nth(1)
                .unwrap_or_default();
            Some(Mount {
                point: PathBuf::from(OsString::from_vec(unescape(point))),
                fs_type: String::from_utf8_lossy(&unescape(fs_type)).into_owned(),
            })
        })
        .collect()
}

/// The mount points at or below `dir` (which the table names canonically:
/// pass a canonical path), a point stacked on another listed again.
///
/// # Errors
/// `/proc/self/mountinfo` cannot be read.
pub fn points_below(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    Ok(mounts()?
        .into_iter()
        .map(|mount| mount.point)
        .filter(|point| point.starts_with(dir))
        .collect())
}

/// Detaches every mount at or below `dir`, deepest first, round after
/// round until none is left (a detached mount may uncover one stacked
/// below it). A mount that went with its parent is no error.
///
/// # Errors
/// The table cannot be read; umount2(2) refuses a mount (the first such
/// error, after the whole round was tried); or mounts are still there
/// after [`MAX_UNMOUNT_ROUNDS`] rounds (kind `ResourceBusy`, naming them).
pub fn unmount_below(dir: &Path) -> std::io::Result<()> {
    for _ in 0..MAX_UNMOUNT_ROUNDS {
        let mut points = points_below(dir)?;
        if points.is_empty() {
            return Ok(());
        }
        points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
        let mut refused = None;
        for point in points {
            if let Err(err) = detach(&point) {
                refused.get_or_insert(err);
            }
        }
        if let Some(err) = refused {
            return Err(err);
        }
    }
    let left = points_below(dir)?;
    if left.is_empty() {
        return Ok(());
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::ResourceBusy,
        format!("still mounted: {left:?}"),
    ))
}

/// umount2(`point`, MNT_DETACH); a point already gone (EINVAL: no longer
/// a mount point, ENOENT) is success.
fn detach(point: &Path) -> std::io::Result<()> {
    let c_point = CString::new(point.as_os_str().as_bytes())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { libc::umount2(c_point.as_ptr(), libc::MNT_DETACH) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL | libc::ENOENT) => Ok(()),
        _ => Err(err),
    }
}

/// Undoes the table's octal escapes (`\040` for a space, `\134` for a
/// backslash); a backslash not followed by three octal digits of a byte
/// stays as it is.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&byte) = field.get(i) {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|digits| digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .and_then(|digits| {
                let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
                u8::try_from(value).ok()
            });
        match (byte, octal) {
            (b'\\', Some(value)) => {
                out.push(value);
                i += 4;
            }
            _ => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[u8] = b"\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw
41 22 0:35 / /tmp/a\\040b rw - tmpfs tmpfs rw
42 41 0:36 / /tmp/a\\040b/\\377x rw master:3 - overlay overlay rw
short line
";

    #[test]
    fn test_the_table_gives_points_and_types() {
        let mounts = parse(TABLE);
        let points: Vec<_> = mounts.iter().map(|m| m.point.clone()).collect();
        assert_eq!(
            points,
            [
                PathBuf::from("/"),
                PathBuf::from("/sys/fs/cgroup"),
                PathBuf::from("/tmp/a b"),
                PathBuf::from(OsString::from_vec(b"/tmp/a b/\xffx".to_vec())),
            ]
        );
        let types: Vec<_> = mounts.iter().map(|m| m.fs_type.as_str()).collect();
        assert_eq!(types, ["ext4", "cgroup2", "tmpfs", "overlay"]);
    }

    #[test]
    fn test_a_line_without_separator_has_no_type() {
        let mounts = parse(b"1 0 0:1 / /x rw\n");
        assert_eq!(mounts[0].point, PathBuf::from("/x"));
        assert_eq!(mounts[0].fs_type, "");
    }

    #[test]
    fn test_escapes_are_undone() {
        assert_eq!(unescape(br"/a\040b"), b"/a b");
        assert_eq!(unescape(br"/x\134y"), br"/x\y");
        assert_eq!(unescape(br"/x\377"), b"/x\xff");
        assert_eq!(unescape(b"/plain"), b"/plain");
    }

    #[test]
    fn test_backslashes_that_escape_nothing_stay() {
        for kept in [
            &br"/end\"[..],
            br"/x\09",
            br"/plain\0",
            br"/a\+12",
            br"/big\400",
        ] {
            assert_eq!(unescape(kept), kept, "{}", String::from_utf8_lossy(kept));
        }
    }

    #[test]
    fn test_this_process_has_a_root_mount() {
        let mounts = mounts().unwrap();
        assert!(mounts.iter().any(|m| m.point == Path::new("/")));
        assert!(points_below(Path::new("/proc"))
            .unwrap()
            .contains(&PathBuf::from("/proc")));
    }

    #[test]
    fn test_nothing_mounted_below_is_nothing_to_do() {
        let dir = std::env::temp_dir().join(format!("vmpod-sys-unmount-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(points_below(&dir).unwrap(), Vec::<PathBuf>::new());
        unmount_below(&dir).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }

    #[test]
    fn test_stacked_and_nested_mounts_all_go() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped test_stacked_and_nested_mounts_all_go: needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("vmpod-sys-stack-{}", std::process::id()));
        let dir = base.join("with space");
        std::fs::create_dir_all(&dir).unwrap();
        let dir = std::fs::canonicalize(&dir).unwrap();
        let tmpfs = |target: &Path| {
            let target = CString::new(target.as_os_str().as_bytes()).unwrap();
            // SAFETY: NUL-terminated strings that outlive the call.
            let rc = unsafe {
                libc::mount(
                    c"vmpod-test".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        };
        tmpfs(&dir);
        tmpfs(&dir);
        let nested = dir.join("nested");
        std::fs::create_dir(&nested).unwrap();
        tmpfs(&nested);
        assert_eq!(points_below(&dir).unwrap().len(), 3);
        unmount_below(&dir).unwrap();
        assert_eq!(points_below(&dir).unwrap(), Vec::<PathBuf>::new());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
