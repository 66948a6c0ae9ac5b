// SPDX-License-Identifier: Apache-2.0
//! Running the node's own commands (`systemctl restart containerd`,
//! `containerd --version`) from beneath a root: directly for `/`, chrooted
//! into the root otherwise, so that they find the node's libraries and,
//! for systemctl, the node's systemd through its `/run`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmpod_sys::command::{run_with_timeout, Outcome};

use crate::layout::Root;

/// Where the node's commands are looked for.
const COMMAND_DIRS: [&str; 5] = ["/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"];
/// How long containerd gets to restart (it stops its plugins first).
const RESTART_TIMEOUT: Duration = Duration::from_secs(120);

/// A node command that failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The node has no such command.
    #[error("{name} is not in {dirs} under {root}")]
    NotFound {
        /// The command.
        name: String,
        /// The directories searched.
        dirs: String,
        /// The root.
        root: String,
    },
    /// It could not be run.
    #[error("running {command}")]
    Spawn {
        /// The command line.
        command: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// It ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// How it ended.
        status: String,
        /// Its last line of standard error.
        stderr: String,
    },
}

/// The node path of command `name` beneath `root`.
///
/// # Errors
/// It is in none of the usual directories.
pub fn find(root: &Root, name: &str) -> Result<PathBuf, CommandError> {
    COMMAND_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| root.join(path).is_file())
        .ok_or_else(|| CommandError::NotFound {
            name: name.to_owned(),
            dirs: COMMAND_DIRS.join(":"),
            root: root.dir().display().to_string(),
        })
}

/// Runs the node's `program` (a node path) with `args` beneath `root`.
///
/// # Errors
/// It cannot be run, or it fails or times out.
pub fn run(
    root: &Root,
    program: &Path,
    args: &[&str],
    timeout: Duration,
) -> Result<Outcome, CommandError> {
    let line = format!("{} {}", program.display(), args.join(" "));
    let mut cmd = Command::new(program);
    cmd.args(args);
    if !root.is_system() {
        let dir =
            CString::new(root.dir().as_os_str().as_bytes()).map_err(|err| CommandError::Spawn {
                command: line.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, err),
            })?;
        // SAFETY: chroot(2) and chdir(2) are async-signal-safe system calls
        // on a string made before the fork; nothing is allocated here.
        unsafe {
            cmd.pre_exec(move || {
                if libc::chroot(dir.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let outcome =
        run_with_timeout(&mut cmd, None, timeout).map_err(|source| CommandError::Spawn {
            command: line.clone(),
            source,
        })?;
    if outcome.status != Some(0) {
        let status = match (outcome.timed_out, outcome.status) {
            (true, _) => "timed out".to_owned(),
            (false, Some(code)) => format!("exit status {code}"),
            (false, None) => "killed by a signal".to_owned(),
        };
        return Err(CommandError::Failed {
            command: line,
            status,
            stderr: outcome
                .stderr
                .trim()
                .lines()
                .last()
                .unwrap_or("")
                .to_owned(),
        });
    }
    Ok(outcome)
}

/// `systemctl restart containerd` on the node beneath `root`.
///
/// # Errors
/// The node has no systemctl, or the restart fails.
pub fn restart_containerd(root: &Root) -> Result<(), CommandError> {
    let systemctl = find(root, "systemctl")?;
    run(
        root,
        &systemctl,
        &["restart", "containerd"],
        RESTART_TIMEOUT,
    )
    .map(drop)
}
