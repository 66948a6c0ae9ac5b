// SPDX-License-Identifier: Apache-2.0
//! Snapshots: a paused VM written to a directory, and read back to start a
//! VM from it instead of booting.
//!
//! A snapshot directory holds two files:
//! - `vmstate`: every vCPU, the VM's interrupt controllers, PIT and clock,
//!   the serial port and every virtio-mmio transport with its device, plus
//!   the [`SnapshotIdentity`] of the inputs it was taken with, in the
//!   checked [`format`];
//! - `memory`: guest RAM, region after region, sparse where pages are zero.
//!   A restore maps it copy-on-write, so the VMs restored from one file
//!   share its clean pages in the host's page cache.
//!
//! `vmstate` is written last, under a temporary name renamed into place:
//! a directory without it is not a snapshot, so a snapshot cut short by a
//! crash is never taken for a whole one.

pub mod format;
pub mod identity;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::devices::legacy::i8042::I8042State;
use crate::devices::legacy::serial::SerialDeviceState;
use crate::devices::virtio::persist::VirtioDeviceState;
use crate::vstate::memory::{dump_guest_memory, GuestMemoryMmap, MemoryError};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::VmState;
pub use format::FormatError;
pub use identity::{IdentityError, SnapshotIdentity};

/// The state file's name in a snapshot directory.
pub const STATE_FILE: &str = "vmstate";
/// The guest memory file's name in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";

/// Everything of a paused VM but its memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicrovmState {
    /// What the snapshot was taken of.
    pub identity: SnapshotIdentity,
    /// Interrupt controllers, PIT, clock.
    pub vm: VmState,
    /// Every vCPU, by index.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialDeviceState,
    /// The i8042 controller.
    pub i8042: I8042State,
    /// Every virtio-mmio transport with its device, in slot order.
    pub devices: Vec<VirtioDeviceState>,
}

/// Errors writing or reading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file of the snapshot cannot be created, written or synced.
    #[error("Cannot write the snapshot file {path}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Guest memory cannot be written.
    #[error("Cannot write guest memory to {path}")]
    WriteMemory {
        /// The memory file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: MemoryError,
    },
    /// The memory file cannot be mapped as guest memory (e.g. its length
    /// is not the VM's memory size).
    #[error("Cannot map the snapshot's memory file {path}")]
    MapMemory {
        /// The memory file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: MemoryError,
    },
    /// A file of the snapshot cannot be opened or read.
    #[error("Cannot read the snapshot file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error (a missing file included).
        #[source]
        source: std::io::Error,
    },
    /// The state file is damaged or of another format.
    #[error("Invalid snapshot {path}")]
    Format {
        /// The state file.
        path: PathBuf,
        /// The check that failed.
        #[source]
        source: FormatError,
    },
    /// The state does not parse, or its parts disagree.
    #[error("Invalid snapshot {path}: {reason}")]
    Contents {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The snapshot belongs to another VM.
    #[error("Cannot restore the snapshot {path}")]
    Identity {
        /// The snapshot directory.
        path: PathBuf,
        /// What differs.
        #[source]
        source: IdentityError,
    },
}

fn write_error(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `dir/name` through a temporary file renamed into
/// place once synced.
fn write_file_atomically(
    dir: &Path,
    name: &str,
    fill: impl FnOnce(&mut File, &Path) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.partial"));
    let mut file = File::create(&temporary).map_err(write_error(&temporary))?;
    fill(&mut file, &temporary)?;
    file.sync_all().map_err(write_error(&temporary))?;
    std::fs::rename(&temporary, &path).map_err(write_error(&path))
}

/// Writes a snapshot of a paused VM into `dir` (created if missing): its
/// memory first, then its state.
///
/// # Errors
/// A [`SnapshotError`] naming the file that could not be written; `dir`
/// then holds no `vmstate`.
pub fn write_snapshot(
    dir: &Path,
    state: &MicrovmState,
    mem: &GuestMemoryMmap,
) -> Result<(), SnapshotError> {
    std::fs::create_dir_all(dir).map_err(write_error(dir))?;
    let state_path = dir.join(STATE_FILE);
    match std::fs::remove_file(&state_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(write_error(&state_path)(e)),
    }
    write_file_atomically(dir, MEMORY_FILE, |file, path| {
        dump_guest_memory(mem, file).map_err(|source| SnapshotError::WriteMemory {
            path: path.to_path_buf(),
            source,
        })
    })?;
    let payload = serde_json::to_vec(state).map_err(|e| SnapshotError::Write {
        path: state_path.clone(),
        source: std::io::Error::other(e),
    })?;
    write_file_atomically(dir, STATE_FILE, |file, path| {
        file.write_all(&format::encode(&payload))
            .map_err(write_error(path))
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_error(dir))
}

/// Reads the state of the snapshot in `dir` and opens its memory file.
/// The state is checked (format, checksum, parts agreeing with each
/// other); its identity is the caller's to check.
///
/// # Errors
/// A [`SnapshotError`] naming the file and what is wrong with it.
pub fn read_snapshot(dir: &Path) -> Result<(MicrovmState, File), SnapshotError> {
    let path = dir.join(STATE_FILE);
    let read_error = |source| SnapshotError::Read {
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(read_error)?;
    let mut bytes = Vec::new();
    // One byte more than any valid file, to tell "too long" apart.
    let limit = format::MAX_PAYLOAD + 64 + 1;
    file.take(limit)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    let payload = format::decode(&bytes).map_err(|source| SnapshotError::Format {
        path: path.clone(),
        source,
    })?;
    let contents = |reason: String| SnapshotError::Contents {
        path: path.clone(),
        reason,
    };
    let state: MicrovmState =
        serde_json::from_slice(payload).map_err(|e| contents(e.to_string()))?;
    if state.vcpus.len() != usize::from(state.identity.vcpus) {
        return Err(contents(format!(
            "{} vCPU states for {} vCPUs",
            state.vcpus.len(),
            state.identity.vcpus
        )));
    }
    if state.devices.len() != state.identity.devices.len() {
        return Err(contents(format!(
            "{} device states for {} devices",
            state.devices.len(),
            state.identity.devices.len()
        )));
    }
    let memory_path = dir.join(MEMORY_FILE);
    let memory = File::open(&memory_path).map_err(|source| SnapshotError::Read {
        path: memory_path,
        source,
    })?;
    Ok((state, memory))
}
