// SPDX-License-Identifier: Apache-2.0
//! `vmpod uninstall`: from the install record, every file install replaced
//! gets its backup back (renamed over it: the same bytes, mode and owner),
//! every file it made is removed, then every directory it made that is
//! empty again, deepest first, and last the record itself.

use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

use crate::files::{write_whole, FileError};
use crate::layout::{Root, RECORD};
use crate::record::{Record, RecordError};

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
    /// Directories install made that hold something else now, kept.
    pub kept_dirs: Vec<PathBuf>,
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
        let target = root.join(&entry.path);
        let result = match &entry.backup {
            Some(backup) => fs::rename(root.join(backup), &target)
                .map_err(|source| FileError {
                    what: "restore",
                    path: target.display().to_string(),
                    source,
                })
                .map(|()| done.restored.push(entry.path.clone())),
            None => match fs::remove_file(&target) {
                Err(err) if err.kind() != ErrorKind::NotFound => Err(FileError {
                    what: "remove",
                    path: target.display().to_string(),
                    source: err,
                }),
                _ => {
                    done.removed.push(entry.path.clone());
                    Ok(())
                }
            },
        };
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
