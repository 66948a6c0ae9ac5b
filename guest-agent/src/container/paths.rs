// SPDX-License-Identifier: Apache-2.0
//! Paths inside a container's root file system, resolved as the container
//! will see them: symlinks are followed but never out of the root, and
//! `..` stops at the root. The image is untrusted; this is what keeps a
//! mount destination such as `/etc -> /` or `../../host` inside it.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up (as the kernel's
/// ELOOP limit).
const MAX_SYMLINKS: usize = 40;

/// A path that cannot be resolved inside the root.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// Too many symlinks (a loop).
    #[error("{0}: too many levels of symbolic links")]
    Loop(String),
    /// Reading the tree failed.
    #[error("{path}")]
    Io {
        /// The path being resolved.
        path: String,
        /// Why reading the path or its link failed.
        #[source]
        source: io::Error,
    },
}

/// `path` (absolute or relative to the container's `/`) as a host path
/// under `root`. Components that do not exist yet are taken as they are,
/// and so is everything below one of `fresh_mounts` (host paths where a
/// new file system will be mounted first, hiding what the image has
/// there).
///
/// # Errors
///
/// [`PathError`] on symlink loops and unreadable components.
pub fn resolve_in_root(
    root: &Path,
    path: &Path,
    fresh_mounts: &[PathBuf],
) -> Result<PathBuf, PathError> {
    let mut pending: VecDeque<OsString> = components(path).collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    let mut exists = true;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let mut candidate = join(root, &resolved);
        candidate.push(&name);
        if exists {
            match std::fs::symlink_metadata(&candidate) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(PathError::Loop(path.display().to_string()));
                    }
                    let target =
                        std::fs::read_link(&candidate).map_err(|source| PathError::Io {
                            path: path.display().to_string(),
                            source,
                        })?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for (i, part) in components(&target).enumerate() {
                        pending.insert(i, part);
                    }
                    continue;
                }
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => exists = false,
                Err(source) => {
                    return Err(PathError::Io {
                        path: path.display().to_string(),
                        source,
                    })
                }
            }
        }
        resolved.push(name);
        if exists && fresh_mounts.iter().any(|m| *m == join(root, &resolved)) {
            exists = false;
        }
    }
    Ok(join(root, &resolved))
}

/// The normal and `..` components of `path`.
fn components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|component| match component {
        Component::Normal(name) => Some(name.to_owned()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

fn join(root: &Path, names: &[OsString]) -> PathBuf {
    let mut path = root.to_path_buf();
    path.extend(names);
    path
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree() -> (PathBuf, PathBuf) {
        let base = std::env::temp_dir().join(format!(
            "vmpod-agent-paths-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        (base, root)
    }

    #[test]
    fn test_plain_and_missing_paths() {
        let (base, root) = tree();
        assert_eq!(
            resolve_in_root(&root, Path::new("/etc/hosts"), &[]).unwrap(),
            root.join("etc/hosts")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("new/dir"), &[]).unwrap(),
            root.join("new/dir")
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn test_dotdot_stops_at_the_root() {
        let (base, root) = tree();
        assert_eq!(
            resolve_in_root(&root, Path::new("/../../../etc"), &[]).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("/usr/../../x"), &[]).unwrap(),
            root.join("x")
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn test_symlinks_stay_inside() {
        let (base, root) = tree();
        symlink("/", root.join("abs")).unwrap();
        symlink("../../../../..", root.join("usr/lib/up")).unwrap();
        symlink("/usr/lib", root.join("lib")).unwrap();
        assert_eq!(
            resolve_in_root(&root, Path::new("/abs/etc"), &[]).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("/usr/lib/up/etc"), &[]).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("/lib/x"), &[]).unwrap(),
            root.join("usr/lib/x")
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn test_nothing_below_a_fresh_mount_is_followed() {
        let (base, root) = tree();
        std::fs::create_dir_all(root.join("dev")).unwrap();
        symlink("/etc", root.join("dev/pts")).unwrap();
        assert_eq!(
            resolve_in_root(&root, Path::new("/dev/pts"), &[]).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("/dev/pts"), &[root.join("dev")]).unwrap(),
            root.join("dev/pts")
        );
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn test_symlink_loop_is_an_error() {
        let (base, root) = tree();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert!(matches!(
            resolve_in_root(&root, Path::new("/a/x"), &[]),
            Err(PathError::Loop(_))
        ));
        std::fs::remove_dir_all(base).unwrap();
    }
}
