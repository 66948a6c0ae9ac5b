// SPDX-License-Identifier: Apache-2.0
//! Per-pod user and group ids: each jailed VMM runs as its own id (the uid
//! and gid are the same number), leased from a configured range. A lease is
//! an `flock` on the file `<lock dir>/<id>`, held for the jail's life by the
//! jailer and released by the kernel when it ends (its jail dies with it),
//! so two live pods never share an id, even after a crash. The files of ended leases are
//! removed by whoever finds them unlocked ([`remove_stale`]); a lease checks,
//! once locked, that its file is still the one named in the directory.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Failures of leasing an id.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// Every id of the range is leased.
    #[error("every id of {range} is in use by a live pod")]
    Exhausted {
        /// The range, as `FIRST-LAST`.
        range: String,
    },
    /// The lock directory or a lock file could not be made or locked.
    #[error("{what} {path}")]
    Io {
        /// The operation (create, lock...).
        what: &'static str,
        /// The directory or file.
        path: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdError {
    let path = path.display().to_string();
    move |source| IdError::Io { what, path, source }
}

/// A range of ids `FIRST-LAST`, both included, none of them 0 (root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// The first id.
    pub first: u32,
    /// The last id.
    pub last: u32,
}

impl FromStr for IdRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not FIRST-LAST, two ids from 1 to 4294967294");
        let (first, last) = text.split_once('-').ok_or_else(bad)?;
        let id = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|id| (1..u32::MAX).contains(id))
                .ok_or_else(bad)
        };
        let (first, last) = (id(first)?, id(last)?);
        if last < first {
            return Err(format!("{text:?}: the last id is below the first"));
        }
        Ok(IdRange { first, last })
    }
}

impl std::fmt::Display for IdRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A leased id: held while this value (or a process that inherited its
/// file) lives.
#[derive(Debug)]
pub struct IdLease {
    /// The id.
    pub id: u32,
    file: File,
    path: PathBuf,
}

impl IdLease {
    /// Leases the first free id of `range`, making `lock_dir` (mode 0700)
    /// if it is missing.
    ///
    /// # Errors
    /// [`IdError`]: the directory or a file cannot be made, or every id is
    /// leased.
    pub fn take(range: IdRange, lock_dir: &Path) -> Result<IdLease, IdError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(lock_dir)
            .map_err(io_error("create", lock_dir))?;
        for id in range.first..=range.last {
            if let Some(lease) = Self::try_id(id, lock_dir)? {
                return Ok(lease);
            }
        }
        Err(IdError::Exhausted {
            range: range.to_string(),
        })
    }

    /// The lease of `id`, or `None` when a live jail holds it.
    fn try_id(id: u32, lock_dir: &Path) -> Result<Option<IdLease>, IdError> {
        let path = lock_dir.join(id.to_string());
        // A file removed between our open and our lock is opened again.
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io_error("create", &path))?;
            if !lock(&file).map_err(io_error("lock", &path))? {
                return Ok(None);
            }
            if same_file(&file, &path) {
                return Ok(Some(IdLease { id, file, path }));
            }
        }
    }

    /// Ends the lease and removes its file.
    pub fn release(self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }

    /// The lock file's descriptor, for processes that must hold the lease.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: whether the lock was taken.
fn lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor `file` owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.kind() == ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::symlink_metadata(path)) {
        (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
        _ => false,
    }
}

/// Removes the lock files of `lock_dir` no live jail holds (those of jails
/// that were killed), then the directory if it is empty. Returns how many
/// files went.
///
/// # Errors
/// The directory cannot be read (a missing one is no error).
pub fn remove_stale(lock_dir: &Path) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(lock_dir) {
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(0),
        other => other?,
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(file) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
        else {
            continue;
        };
        if lock(&file).unwrap_or(false)
            && same_file(&file, &path)
            && std::fs::remove_file(&path).is_ok()
        {
            removed += 1;
        }
    }
    let _ = std::fs::remove_dir(lock_dir);
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmpod-ids-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn test_ranges_parse_and_bad_ones_are_named() {
        assert_eq!(
            "100-200".parse::<IdRange>(),
            Ok(IdRange {
                first: 100,
                last: 200
            })
        );
        for bad in ["0-10", "10", "a-b", "5-4294967295", "-1-3"] {
            assert!(bad.parse::<IdRange>().is_err(), "{bad}");
        }
        assert!("20-10"
            .parse::<IdRange>()
            .unwrap_err()
            .contains("below the first"));
    }

    #[test]
    fn test_live_leases_never_share_an_id() {
        let dir = temp_dir("share");
        let range: IdRange = "500-502".parse().unwrap();
        let a = IdLease::take(range, &dir).unwrap();
        let b = IdLease::take(range, &dir).unwrap();
        let c = IdLease::take(range, &dir).unwrap();
        assert_eq!((a.id, b.id, c.id), (500, 501, 502));
        let err = IdLease::take(range, &dir).unwrap_err();
        assert_eq!(
            err.to_string(),
            "every id of 500-502 is in use by a live pod"
        );
        let b_id = b.id;
        b.release();
        assert_eq!(IdLease::take(range, &dir).unwrap().id, b_id);
        drop((a, c));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn test_stale_files_go_and_live_ones_stay() {
        let dir = temp_dir("stale");
        let range: IdRange = "7-9".parse().unwrap();
        let live = IdLease::take(range, &dir).unwrap();
        let dead = IdLease::take(range, &dir).unwrap();
        // A killed jail: its lock is gone, its file is left.
        drop(dead);
        assert_eq!(remove_stale(&dir).unwrap(), 1);
        assert!(dir.join("7").exists() && !dir.join("8").exists());
        live.release();
        assert_eq!(remove_stale(&dir).unwrap(), 0);
        assert!(!dir.exists(), "the empty lock directory goes too");
    }
}
