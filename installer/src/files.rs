// SPDX-License-Identifier: Apache-2.0
//! Writing beneath a root as one transaction: every file is written whole
//! (a temporary file renamed over it), what it replaces is kept (a backup
//! the first time, a rollback copy on a re-install), every directory made is
//! noted, and a failure at any step undoes the steps before it, so that a
//! failed install leaves the root as it found it.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::layout::{Root, BACKUP_DIR, RECORD, ROLLBACK_DIR};
use crate::record::{FileEntry, Record};

/// A file system step that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}")]
pub struct FileError {
    /// The step (write, back up, make the directory...).
    pub what: &'static str,
    /// The path beneath the root.
    pub path: String,
    /// The system's reason.
    #[source]
    pub source: std::io::Error,
}

fn file_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FileError {
    let path = path.display().to_string();
    move |source| FileError { what, path, source }
}

/// The hex SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// One step to undo.
#[derive(Debug)]
enum Undo {
    /// A file that did not exist.
    Remove(PathBuf),
    /// A directory that did not exist.
    RemoveDir(PathBuf),
    /// A file whose previous self was kept at `kept`.
    Restore { kept: PathBuf, target: PathBuf },
}

/// Writes beneath a root, undoing everything unless committed.
#[derive(Debug)]
pub struct Transaction {
    root: Root,
    record: Record,
    undo: Vec<Undo>,
    committed: bool,
}

impl Transaction {
    /// A transaction beneath `root` that adds to `record` (the previous
    /// install's, or an empty one).
    pub fn new(root: Root, record: Record) -> Self {
        Transaction {
            root,
            record,
            undo: Vec::new(),
            committed: false,
        }
    }

    /// Makes the node directory `dir` and its missing parents (0755).
    ///
    /// # Errors
    /// A directory cannot be made.
    pub fn make_dirs(&mut self, dir: &Path) -> Result<(), FileError> {
        let mut node = PathBuf::from("/");
        for part in dir.components().skip(1) {
            node.push(part);
            let path = self.root.join(&node);
            match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_dir() || path.is_dir() => continue,
                Ok(_) => {
                    let not_dir = std::io::Error::from(ErrorKind::NotADirectory);
                    return Err(file_error("make the directory", &path)(not_dir));
                }
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => return Err(file_error("examine", &path)(err)),
            }
            fs::create_dir(&path).map_err(file_error("make the directory", &path))?;
            self.undo.push(Undo::RemoveDir(path));
            if !self.record.dirs.contains(&node) {
                self.record.dirs.push(node.clone());
            }
        }
        Ok(())
    }

    /// Writes `contents` to the node file `node`, with `mode` (`None`: the
    /// mode of the file it replaces, or 0644), keeping what it replaces.
    ///
    /// # Errors
    /// A step fails; the steps before it are undone by [`Transaction::rollback`].
    pub fn put(
        &mut self,
        node: &Path,
        contents: &[u8],
        mode: Option<u32>,
    ) -> Result<(), FileError> {
        let target = self.root.join(node);
        self.make_dirs(node.parent().unwrap_or(Path::new("/")))?;
        let previous = match fs::symlink_metadata(&target) {
            Ok(meta) => Some(meta),
            Err(err) if err.kind() == ErrorKind::NotFound => None,
            Err(err) => return Err(file_error("examine", &target)(err)),
        };
        let ours = self.record.file(node).is_some();
        // Changed by someone else since vmpod wrote it: its backup no longer
        // tells the whole story (see FileEntry::edited).
        let edited = self.record.file(node).is_some_and(|entry| {
            entry.edited || fs::read(&target).is_ok_and(|now| sha256(&now) != entry.sha256)
        });
        let mut backup = self
            .record
            .file(node)
            .and_then(|entry| entry.backup.clone());
        let mode = mode.unwrap_or_else(|| previous.as_ref().map_or(0o644, |m| m.mode() & 0o7777));
        match &previous {
            None => self.undo.push(Undo::Remove(target.clone())),
            Some(meta) => {
                // Our own earlier file is kept until commit; anyone else's for good.
                let keep_at = Path::new(if ours { ROLLBACK_DIR } else { BACKUP_DIR })
                    .join(node.strip_prefix("/").unwrap_or(node));
                self.keep(&target, meta, &keep_at)?;
                if !ours {
                    backup = Some(keep_at);
                }
            }
        }
        write_whole(&target, contents, mode)?;
        let entry = FileEntry {
            path: node.to_path_buf(),
            sha256: sha256(contents),
            backup,
            edited,
        };
        match self.record.files.iter_mut().find(|e| e.path == node) {
            Some(existing) => *existing = entry,
            None => self.record.files.push(entry),
        }
        Ok(())
    }

    /// Copies the file (or symlink) `target` to the node path `keep_at`,
    /// with its mode and owner, and notes how to put it back.
    fn keep(
        &mut self,
        target: &Path,
        meta: &fs::Metadata,
        keep_at: &Path,
    ) -> Result<(), FileError> {
        self.make_dirs(keep_at.parent().unwrap_or(Path::new("/")))?;
        let kept = self.root.join(keep_at);
        if meta.file_type().is_symlink() {
            let link = fs::read_link(target).map_err(file_error("read the link", target))?;
            std::os::unix::fs::symlink(&link, &kept).map_err(file_error("back up", target))?;
        } else if meta.is_file() {
            fs::copy(target, &kept).map_err(file_error("back up", target))?;
            std::os::unix::fs::chown(&kept, Some(meta.uid()), Some(meta.gid()))
                .map_err(file_error("back up", target))?;
        } else {
            let not_file = std::io::Error::from(ErrorKind::InvalidInput);
            return Err(file_error("replace (not a file)", target)(not_file));
        }
        self.undo.push(Undo::Restore {
            kept,
            target: target.to_path_buf(),
        });
        Ok(())
    }

    /// Writes the record, drops the rollback copies and keeps everything.
    ///
    /// # Errors
    /// The record cannot be written; the caller rolls back.
    pub fn commit(&mut self) -> Result<Record, FileError> {
        self.make_dirs(Path::new(RECORD).parent().unwrap_or(Path::new("/")))?;
        let rollback = self.root.join(ROLLBACK_DIR);
        self.record
            .dirs
            .retain(|dir| !dir.starts_with(ROLLBACK_DIR));
        let record_path = self.root.join(RECORD);
        let existed = record_path.exists();
        write_whole(&record_path, self.record.to_text().as_bytes(), 0o600)?;
        if !existed {
            self.undo.push(Undo::Remove(record_path));
        }
        match fs::remove_dir_all(&rollback) {
            Ok(()) => {}
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(file_error("remove", &rollback)(err)),
        }
        self.committed = true;
        Ok(self.record.clone())
    }

    /// Undoes every step, latest first. Best effort: the error is the
    /// step that failed, not a step of the undo.
    pub fn rollback(&mut self) {
        while let Some(step) = self.undo.pop() {
            let _ = match step {
                Undo::Remove(path) => fs::remove_file(path),
                Undo::RemoveDir(path) => fs::remove_dir(path),
                Undo::Restore { kept, target } => fs::rename(kept, target),
            };
        }
        self.committed = true;
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.committed {
            self.rollback();
        }
    }
}

/// Writes `path` whole: a temporary file beside it, synced and renamed over.
///
/// # Errors
/// A step fails; the temporary file is removed.
pub fn write_whole(path: &Path, contents: &[u8], mode: u32) -> Result<(), FileError> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.vmpod-new"));
    let result = (|| {
        let mut file = fs::File::create(&temp)?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(file_error("write", path))
}
