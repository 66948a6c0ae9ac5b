// SPDX-License-Identifier: Apache-2.0
//! `vmpod uninstall`: from the install record, every file install replaced
//! gets its backup back (renamed over it: the same bytes, mode and owner),
//! every file it made is removed, then every directory it made that is
//! empty again, deepest first, and last the record itself.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::containerd;
use crate::files::{sha256, write_whole, FileError};
use crate::layout::{Root, RECORD};
use crate::record::{FileEntry, Record, RecordError};

/// Why uninstall stopped. The record then lists what is still installed,
/// so that running it again finishes the job.
#[derive(Debug, thiserror::Error)]
pub enum UninstallError {
    /// The record cannot be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A file could not be restored or removed.
    #[error("uninstall stopped")]
    File(#[source] FileError),
}

/// What uninstall did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uninstalled {
    /// Whether anything was installed.
    pub was_installed: bool,
    /// Files given back their backups.
    pub restored: Vec<PathBuf>,
    /// Files removed.
    pub removed: Vec<PathBuf>,
    /// containerd's config, changed since install: vmpod's registration
    /// taken out, the other changes kept (and the backup dropped).
    pub unregistered: Vec<PathBuf>,
    /// Directories install made that hold something else now, kept.
    pub kept_dirs: Vec<PathBuf>,
}

/// Whether `entry` is containerd's main config and someone changed it
/// after an install (another runtime registered, say): restoring the
/// backup would lose that change.
fn changed_containerd_config(root: &Root, entry: &FileEntry) -> bool {
    entry.path == Path::new(containerd::CONFIG_PATH)
        && (entry.edited
            || fs::read(root.join(&entry.path)).is_ok_and(|now| sha256(&now) != entry.sha256))
}

/// Takes vmpod's registration out of the changed config `entry`, keeping
/// the rest, and drops the backup (its other settings are out of date).
fn unregister(root: &Root, entry: &FileEntry) -> Result<(), FileError> {
    let target = root.join(&entry.path);
    let error = |what: &'static str| {
        let path = target.display().to_string();
        move |source| FileError { what, path, source }
    };
    let text = fs::read_to_string(&target).map_err(error("read"))?;
    let text = containerd::unregister(containerd::CONFIG_PATH, &text)
        .map_err(|err| error("edit")(std::io::Error::other(vmpod_sys::error::chain(&err))))?;
    let mode = fs::metadata(&target)
        .map_err(error("examine"))?
        .permissions()
        .mode()
        & 0o7777;
    write_whole(&target, text.as_bytes(), mode)?;
    if let Some(backup) = &entry.backup {
        let backup = root.join(backup);
        fs::remove_file(&backup).map_err(error("remove the backup of"))?;
    }
    Ok(())
}

/// Puts the node file of `entry` back as it was before install.
fn revert(root: &Root, entry: &FileEntry, done: &mut Uninstalled) -> Result<(), FileError> {
    let target = root.join(&entry.path);
    let error = |what: &'static str| {
        let path = target.display().to_string();
        move |source| FileError { what, path, source }
    };
    if changed_containerd_config(root, entry) {
        unregister(root, entry)?;
        done.unregistered.push(entry.path.clone());
    } else if let Some(backup) = &entry.backup {
        fs::rename(root.join(backup), &target).map_err(error("restore"))?;
        done.restored.push(entry.path.clone());
    } else {
        match fs::remove_file(&target) {
            Err(err) if err.kind() != ErrorKind::NotFound => return Err(error("remove")(err)),
            _ => done.removed.push(entry.path.clone()),
        }
    }
    Ok(())
}

/// Uninstalls what the record beneath `root` lists; nothing to do (and no
/// error) where there is no record.
///
/// # Errors
/// [`UninstallError`]; what is left is still in the record.
pub fn uninstall(root: &Root) -> Result<Uninstalled, UninstallError> {
    let Some(mut record) = Record::load(root)? else {
        return Ok(Uninstalled::default());
    };
    let mut done = Uninstalled {
        was_installed: true,
        ..Uninstalled::default()
    };
    while let Some(entry) = record.files.last().cloned() {
        let result = revert(root, &entry, &mut done);
        if let Err(err) = result {
            let _ = write_whole(&root.join(RECORD), record.to_text().as_bytes(), 0o600);
            return Err(UninstallError::File(err));
        }
        record.files.pop();
    }
    let record_path = root.join(RECORD);
    fs::remove_file(&record_path).map_err(|source| {
        UninstallError::File(FileError {
            what: "remove",
            path: record_path.display().to_string(),
            source,
        })
    })?;
    for dir in record.dirs.iter().rev() {
        match fs::remove_dir(root.join(dir)) {
            Err(err) if err.kind() == ErrorKind::DirectoryNotEmpty => {
                done.kept_dirs.push(dir.clone())
            }
            _ => {}
        }
    }
    Ok(done)
}
