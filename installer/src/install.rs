// SPDX-License-Identifier: Apache-2.0
//! `vmpod install`: everything is read and checked first (the root, the
//! artifacts, containerd's config, the shim's config, the previous record,
//! systemctl when a restart is asked for); only then is anything written,
//! as one [`Transaction`] that a failure undoes.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::artifacts::{self, ArtifactError, Artifacts};
use crate::containerd::{self, ContainerdConfigError, Registration};
use crate::files::{FileError, Transaction};
use crate::layout::{self, Root};
use crate::record::{Record, RecordError};
use crate::restart::{self, CommandError};
use crate::shim_config::{self, ShimConfigError};

/// Why install did nothing (or, for [`InstallError::Restart`], everything
/// but the restart).
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The root is not a usable directory.
    #[error("root {path}")]
    Root {
        /// The root.
        path: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A file install reads (a config) cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// An artifact is missing or wrong.
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// containerd's config cannot be registered with.
    #[error(transparent)]
    Containerd(#[from] ContainerdConfigError),
    /// The shim's existing config is not TOML.
    #[error(transparent)]
    ShimConfig(#[from] ShimConfigError),
    /// The previous install's record cannot be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A write failed; everything written before it was undone.
    #[error("nothing installed")]
    Write(#[source] FileError),
    /// A restart was asked for and the node has no systemctl.
    #[error("cannot restart containerd")]
    NoSystemctl(#[source] CommandError),
    /// Installed, but the restart failed.
    #[error("installed, but restarting containerd failed")]
    Restart(#[source] CommandError),
}

/// What `vmpod install` is asked to do.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The root to install beneath.
    pub root: Root,
    /// Where the artifacts are (empty: [`artifacts::default_dirs`]).
    pub from: Vec<PathBuf>,
    /// Restart containerd afterwards.
    pub restart_containerd: bool,
}

/// What install did.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The record it wrote.
    pub record: Record,
    /// containerd's config version it registered with.
    pub containerd: containerd::Version,
}

/// Installs vmpod beneath `opts.root`.
///
/// # Errors
/// [`InstallError`]: nothing is left written unless it is
/// [`InstallError::Restart`].
pub fn install(opts: &InstallOptions) -> Result<Installed, InstallError> {
    let root = &opts.root;
    let meta = std::fs::metadata(root.dir()).map_err(|source| InstallError::Root {
        path: root.dir().display().to_string(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(InstallError::Root {
            path: root.dir().display().to_string(),
            source: std::io::Error::from(ErrorKind::NotADirectory),
        });
    }
    let dirs = if opts.from.is_empty() {
        artifacts::default_dirs()?
    } else {
        opts.from.clone()
    };
    let artifacts = artifacts::read(&dirs)?;
    let previous = Record::load(root)?.unwrap_or_default();
    let registration = containerd::register(
        containerd::CONFIG_PATH,
        read_optional(root, containerd::CONFIG_PATH)?.as_deref(),
    )?;
    let shim_config =
        shim_config::configure(read_optional(root, shim_config::CONFIG_PATH)?.as_deref())?;
    if opts.restart_containerd {
        restart::find(root, "systemctl").map_err(InstallError::NoSystemctl)?;
    }
    let mut tx = Transaction::new(root.clone(), previous);
    let record = write_all(&mut tx, &artifacts, &registration, &shim_config)
        .and_then(|()| tx.commit())
        .map_err(|err| {
            tx.rollback();
            InstallError::Write(err)
        })?;
    if opts.restart_containerd {
        restart::restart_containerd(root).map_err(InstallError::Restart)?;
    }
    Ok(Installed {
        record,
        containerd: registration.version,
    })
}

/// The writes, in an order where the runtime is registered last: until
/// then containerd knows nothing of what is being written.
fn write_all(
    tx: &mut Transaction,
    artifacts: &Artifacts,
    registration: &Registration,
    shim_config: &str,
) -> Result<(), FileError> {
    for binary in &artifacts.binaries {
        tx.put(&layout::binary(binary.name), &binary.contents, Some(0o755))?;
    }
    tx.put(&layout::kernel(), &artifacts.kernel.contents, Some(0o644))?;
    tx.put(&layout::initrd(), &artifacts.initrd.contents, Some(0o644))?;
    tx.put(
        Path::new(shim_config::CONFIG_PATH),
        shim_config.as_bytes(),
        None,
    )?;
    if let Some(drop_in) = &registration.drop_in {
        tx.put(
            Path::new(containerd::DROP_IN_PATH),
            drop_in.as_bytes(),
            Some(0o644),
        )?;
    }
    tx.put(
        Path::new(containerd::CONFIG_PATH),
        registration.config.as_bytes(),
        None,
    )
}

/// The text of the node file `node` beneath `root`, `None` if it does not exist.
///
/// # Errors
/// It exists and cannot be read (or is not UTF-8).
pub fn read_optional(root: &Root, node: &str) -> Result<Option<String>, InstallError> {
    let path = root.join(node);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(source) => Err(InstallError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}
