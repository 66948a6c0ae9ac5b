// SPDX-License-Identifier: Apache-2.0
//! What the shim made in the share for one container, kept outside the
//! share (`<pod>/containers/<id>.json`): teardown undoes exactly this and
//! never asks the guest-reachable tree what is there. An entry is recorded
//! before it is made, so a crash in between leaves nothing unrecorded.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The most a record may weigh when read back (it is the shim's own file;
/// the bound keeps a damaged one from costing memory).
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// One directory or file the shim made below the pod's `mounts/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Made {
    /// Relative to `mounts/`.
    pub(super) path: String,
    /// A directory (else an empty file, the mount point of a file bind).
    pub(super) dir: bool,
}

/// A container's entries and mounts, in the order they were made.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Record {
    /// Directories and files made, outermost first.
    pub(super) made: Vec<Made>,
    /// Mount points mounted on (relative to `mounts/`), in order.
    pub(super) mounted: Vec<String>,
}

impl Record {
    /// The record at `path`; `None` if there is none.
    pub(super) fn load(path: &Path) -> std::io::Result<Option<Record>> {
        let file = match std::fs::File::open(path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_RECORD_BYTES), &mut bytes)?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))
    }

    /// Writes the record to `path` whole (a new file renamed over the old).
    pub(super) fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        std::fs::write(
            &temporary,
            serde_json::to_vec(self).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&temporary, path)
    }

    /// Whether `path` is recorded as made.
    pub(super) fn has_made(&self, path: &str) -> bool {
        self.made.iter().any(|made| made.path == path)
    }
}

/// Removes the record at `path`; none there is success.
pub(super) fn delete(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_record_reads_back_as_written_and_goes() {
        let dir = std::env::temp_dir().join(format!("vmpod-shim-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c1.json");
        assert_eq!(Record::load(&path).unwrap(), None);
        let record = Record {
            made: vec![Made {
                path: "c1".into(),
                dir: true,
            }],
            mounted: vec!["c1/rootfs".into()],
        };
        record.save(&path).unwrap();
        assert_eq!(Record::load(&path).unwrap(), Some(record.clone()));
        assert!(record.has_made("c1"));
        assert!(!record.has_made("c1/rootfs"));
        std::fs::write(&path, "{").unwrap();
        assert_eq!(
            Record::load(&path).unwrap_err().kind(),
            std::io::ErrorKind::InvalidData
        );
        delete(&path).unwrap();
        delete(&path).unwrap();
        std::fs::remove_dir(&dir).unwrap();
    }
}
