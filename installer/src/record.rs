// SPDX-License-Identifier: Apache-2.0
//! The install record (`/var/lib/vmpod/installer/record.toml`): every file
//! `install` wrote, with the backup of what was there before, and every
//! directory it made, so that `uninstall` can put the node back as it was.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::{Root, RECORD};

/// A record that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The file cannot be read.
    #[error("install record {path}")]
    Read {
        /// The file.
        path: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a record.
    #[error("install record {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
}

/// What one install (and the re-installs after it) did beneath a root.
/// Paths are node paths (absolute, as the node sees them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The files written, in order.
    #[serde(default, rename = "file")]
    pub files: Vec<FileEntry>,
    /// The directories made, parents first.
    #[serde(default, rename = "dir")]
    pub dirs: Vec<PathBuf>,
}

/// One file install wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// The file.
    pub path: PathBuf,
    /// The SHA-256 of what install wrote, hex.
    pub sha256: String,
    /// The copy of what was there before install (none: install made it).
    pub backup: Option<PathBuf>,
    /// Someone else changed the file between two installs: for
    /// containerd's config, uninstall then takes vmpod's registration out
    /// instead of putting the backup back over their change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
}

impl Record {
    /// The record beneath `root`, or `None` where nothing is installed.
    ///
    /// # Errors
    /// The record exists but cannot be read or parsed.
    pub fn load(root: &Root) -> Result<Option<Record>, RecordError> {
        let path = root.join(RECORD);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RecordError::Read {
                    path: path.display().to_string(),
                    source,
                })
            }
        };
        toml::from_str(&text)
            .map(Some)
            .map_err(|err| RecordError::Parse {
                path: path.display().to_string(),
                message: err.message().replace('\n', " "),
            })
    }

    /// The record as its file holds it.
    pub fn to_text(&self) -> String {
        let body = toml::to_string(self).expect("a record is plain TOML");
        format!("# What `vmpod install` did here; `vmpod uninstall` reads it.\n{body}")
    }

    /// The entry of `path`, if install wrote it.
    pub fn file(&self, path: &Path) -> Option<&FileEntry> {
        self.files.iter().find(|entry| entry.path == path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_record_reads_back_as_written() {
        let record = Record {
            files: vec![
                FileEntry {
                    path: "/usr/local/bin/vmpod-vm".into(),
                    sha256: "00ff".into(),
                    backup: None,
                    edited: false,
                },
                FileEntry {
                    path: "/etc/containerd/config.toml".into(),
                    sha256: "ab".into(),
                    backup: Some(
                        "/var/lib/vmpod/installer/backup/etc/containerd/config.toml".into(),
                    ),
                    edited: true,
                },
            ],
            dirs: vec!["/etc/vmpod".into()],
        };
        let back: Record = toml::from_str(&record.to_text()).unwrap();
        assert_eq!(back, record);
        assert!(back
            .file(Path::new("/etc/containerd/config.toml"))
            .is_some());
        assert!(toml::from_str::<Record>("colour = 1\n").is_err());
    }
}
