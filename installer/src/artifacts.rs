// SPDX-License-Identifier: Apache-2.0
//! Where `install` takes what it installs from: each artifact by its file
//! name from the first of a list of directories that holds it. Without
//! `--from`, the list is where this repository builds them: the running
//! `vmpod`'s own directory (cargo's `target/<triple>/release/`), the guest
//! kernel's cache (`$VMPOD_CACHE` or `/var/cache/vmpod`, then
//! `guest-kernel/current/`), `target/` (the agent initrd), and last this
//! system's own `/usr/local/share/vmpod` (so that an installed `vmpod`
//! re-installs what is installed).

use std::path::{Path, PathBuf};

use crate::layout::{BINARIES, INITRD, KERNEL};

/// An ELF file starts so: every binary and the guest kernel.
const ELF_MAGIC: &[u8] = b"\x7fELF";
/// An uncompressed cpio archive in the `newc` format starts so.
const CPIO_MAGIC: &[u8] = b"070701";

/// An artifact that cannot be installed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// No directory searched holds it.
    #[error("artifact {name} is in none of: {searched}")]
    Missing {
        /// Its file name.
        name: &'static str,
        /// The directories searched, comma-separated.
        searched: String,
    },
    /// It exists but cannot be read.
    #[error("artifact {path}")]
    Read {
        /// The file.
        path: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// It is not what its name says (a binary that is not ELF...).
    #[error("artifact {path} is not {expected}")]
    Kind {
        /// The file.
        path: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// The running executable's path cannot be found.
    #[error("cannot find the running vmpod executable")]
    CurrentExe(#[source] std::io::Error),
}

/// One artifact, read: where it came from and its bytes.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// Its file name, which is also its installed name.
    pub name: &'static str,
    /// Where it was read from.
    pub source: PathBuf,
    /// Its contents.
    pub contents: Vec<u8>,
}

/// Everything `install` puts on the node, read before anything is written.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// The executables, in [`BINARIES`]' order.
    pub binaries: Vec<Artifact>,
    /// The guest kernel (an ELF `vmlinux`).
    pub kernel: Artifact,
    /// The agent initrd (an uncompressed `newc` cpio).
    pub initrd: Artifact,
}

/// The directories searched when `--from` is not given, in order.
///
/// # Errors
/// The running executable's path cannot be found.
pub fn default_dirs() -> Result<Vec<PathBuf>, ArtifactError> {
    let exe = std::env::current_exe().map_err(ArtifactError::CurrentExe)?;
    let exe_dir = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
    let cache = std::env::var_os("VMPOD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/vmpod"));
    let mut dirs = vec![exe_dir.clone(), cache.join("guest-kernel/current")];
    // target/<triple>/release/ → target/, where setup.sh builds the initrds.
    if let Some(target) = exe_dir.parent().and_then(Path::parent) {
        dirs.push(target.to_path_buf());
    }
    dirs.push(PathBuf::from(crate::layout::SHARE_DIR));
    Ok(dirs)
}

/// Reads every artifact from the first of `dirs` that holds it.
///
/// # Errors
/// An artifact is in none of them, cannot be read, or is not of its kind.
pub fn read(dirs: &[PathBuf]) -> Result<Artifacts, ArtifactError> {
    let binaries = BINARIES
        .iter()
        .map(|name| read_one(dirs, name, ELF_MAGIC, "an ELF executable"))
        .collect::<Result<_, _>>()?;
    Ok(Artifacts {
        binaries,
        kernel: read_one(dirs, KERNEL, ELF_MAGIC, "an ELF vmlinux")?,
        initrd: read_one(
            dirs,
            INITRD,
            CPIO_MAGIC,
            "an uncompressed newc cpio archive",
        )?,
    })
}

fn read_one(
    dirs: &[PathBuf],
    name: &'static str,
    magic: &[u8],
    expected: &'static str,
) -> Result<Artifact, ArtifactError> {
    let source = dirs
        .iter()
        .map(|dir| dir.join(name))
        .find(|path| path.exists())
        .ok_or_else(|| ArtifactError::Missing {
            name,
            searched: dirs
                .iter()
                .map(|dir| dir.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let path = source.display().to_string();
    let contents = std::fs::read(&source).map_err(|source| ArtifactError::Read {
        path: path.clone(),
        source,
    })?;
    if !contents.starts_with(magic) {
        return Err(ArtifactError::Kind { path, expected });
    }
    Ok(Artifact {
        name,
        source,
        contents,
    })
}
