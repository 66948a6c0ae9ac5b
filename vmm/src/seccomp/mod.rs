// SPDX-License-Identifier: Apache-2.0
//! Per-thread seccomp filters: each thread of a running VM (the main
//! thread, the device thread, every vCPU) allows only the system calls it
//! makes. The filters are data, seccompiler's JSON format, one file per
//! target under `vmm/seccomp/`; they are compiled when vmpod-vm starts, and
//! a disallowed call stops the VM with one line naming the thread and the
//! call ([`sigsys`]).

mod sigsys;

use std::io::Read;
use std::path::{Path, PathBuf};

use seccompiler::{BpfMap, BpfProgram, TargetArch};

pub use sigsys::{install_sigsys_handler, violation_message, EXIT_SECCOMP_VIOLATION};

/// The default filters of this target, in seccompiler's JSON format.
#[cfg(target_arch = "x86_64")]
pub const DEFAULT_FILTERS_JSON: &str = include_str!("../../seccomp/x86_64.json");

/// The kinds of thread vmpod-vm runs once the guest may run, each with its
/// own filter (the key of the filter in the JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread that built the VM and waits for its end.
    Main,
    /// The device event loop (`vmpod-devices`).
    Devices,
    /// A vCPU (`vcpuN`).
    Vcpu,
    /// The control socket's thread (`vmpod-api`), with `--api`.
    Api,
}

impl ThreadKind {
    /// Every kind, in the order the docs list them.
    pub const ALL: [ThreadKind; 4] = [
        ThreadKind::Main,
        ThreadKind::Devices,
        ThreadKind::Vcpu,
        ThreadKind::Api,
    ];

    /// The filter's key in the JSON.
    pub const fn key(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Devices => "devices",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

/// One thread as messages name it: its kind and, for vCPUs, its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadLabel {
    /// The kind, whose filter the thread runs under.
    pub kind: ThreadKind,
    /// The vCPU index.
    pub index: Option<u8>,
}

impl ThreadLabel {
    /// The main thread.
    pub const MAIN: ThreadLabel = ThreadLabel {
        kind: ThreadKind::Main,
        index: None,
    };
    /// The device thread.
    pub const DEVICES: ThreadLabel = ThreadLabel {
        kind: ThreadKind::Devices,
        index: None,
    };

    /// The API thread.
    pub const API: ThreadLabel = ThreadLabel {
        kind: ThreadKind::Api,
        index: None,
    };

    /// vCPU `index`.
    pub const fn vcpu(index: u8) -> ThreadLabel {
        ThreadLabel {
            kind: ThreadKind::Vcpu,
            index: Some(index),
        }
    }
}

impl std::fmt::Display for ThreadLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.kind.key())?;
        match self.index {
            Some(index) => write!(f, "{index}"),
            None => Ok(()),
        }
    }
}

/// Errors loading or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter file cannot be read.
    #[error("Cannot read the seccomp filter file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The open or read error.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is not valid seccompiler JSON for this target.
    #[error("Invalid seccomp filter file {path}: {reason}")]
    Compile {
        /// The file (`(built-in)` for the default filters).
        path: PathBuf,
        /// seccompiler's innermost reason (its errors repeat their
        /// sources in their own text, so they are not chained).
        reason: String,
    },
    /// A thread kind has no filter.
    #[error("The seccomp filter file {path} has no filter for the '{thread}' thread")]
    MissingThread {
        /// The file.
        path: PathBuf,
        /// The missing key.
        thread: &'static str,
    },
    /// A filter is for no thread vmpod-vm runs.
    #[error(
        "The seccomp filter file {path} has a filter for '{name}', which is not a vmpod-vm \
         thread (main, devices, vcpu)"
    )]
    UnknownThread {
        /// The file.
        path: PathBuf,
        /// The key.
        name: String,
    },
    /// This target has no seccompiler support.
    #[error("seccomp filters are not supported on {0}")]
    Arch(&'static str),
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("Cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
    /// The SIGSYS handler cannot be installed.
    #[error("Cannot install the seccomp violation handler")]
    Handler(#[source] std::io::Error),
    /// The kernel refused a filter.
    #[error("Cannot install the seccomp filter of the {thread} thread: {reason}")]
    Install {
        /// The thread.
        thread: String,
        /// The kernel's innermost reason, as for `Compile`.
        reason: String,
    },
}

impl SeccompError {
    /// Whether the user's input (the filter file) is at fault.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Self::Read { .. }
                | Self::Compile { .. }
                | Self::MissingThread { .. }
                | Self::UnknownThread { .. }
        )
    }
}

/// The compiled filter of every thread kind.
#[derive(Debug, Clone)]
pub struct SeccompFilters {
    main: BpfProgram,
    devices: BpfProgram,
    vcpu: BpfProgram,
    api: BpfProgram,
}

impl SeccompFilters {
    /// The built-in filters ([`DEFAULT_FILTERS_JSON`]).
    ///
    /// # Errors
    /// [`SeccompError`] if they do not compile (a test keeps them compiling).
    pub fn builtin() -> Result<Self, SeccompError> {
        Self::from_json(DEFAULT_FILTERS_JSON.as_bytes(), Path::new("(built-in)"))
    }

    /// Filters from a JSON file in seccompiler's format, with one filter
    /// per thread kind and no other.
    ///
    /// # Errors
    /// [`SeccompError`] naming the file and what is wrong with it.
    pub fn from_file(path: &Path) -> Result<Self, SeccompError> {
        let read_error = |source| SeccompError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut text = Vec::new();
        std::fs::File::open(path)
            .and_then(|mut file| file.read_to_end(&mut text))
            .map_err(read_error)?;
        Self::from_json(text.as_slice(), path)
    }

    /// Filters from JSON text; `path` names it in errors.
    ///
    /// # Errors
    /// [`SeccompError`] naming `path` and what is wrong with the text.
    pub fn from_json(json: &[u8], path: &Path) -> Result<Self, SeccompError> {
        let arch = target_arch()?;
        let map =
            seccompiler::compile_from_json(json, arch).map_err(|e| SeccompError::Compile {
                path: path.to_path_buf(),
                reason: innermost(&e),
            })?;
        Self::from_map(map, path)
    }

    fn from_map(mut map: BpfMap, path: &Path) -> Result<Self, SeccompError> {
        let mut take = |kind: ThreadKind| {
            map.remove(kind.key())
                .ok_or_else(|| SeccompError::MissingThread {
                    path: path.to_path_buf(),
                    thread: kind.key(),
                })
        };
        let filters = SeccompFilters {
            main: take(ThreadKind::Main)?,
            devices: take(ThreadKind::Devices)?,
            vcpu: take(ThreadKind::Vcpu)?,
            api: take(ThreadKind::Api)?,
        };
        let mut unknown: Vec<String> = map.into_keys().collect();
        unknown.sort();
        match unknown.into_iter().next() {
            Some(name) => Err(SeccompError::UnknownThread {
                path: path.to_path_buf(),
                name,
            }),
            None => Ok(filters),
        }
    }

    /// The filter of `kind`'s threads.
    pub fn of(&self, kind: ThreadKind) -> &BpfProgram {
        match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::Devices => &self.devices,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Api => &self.api,
        }
    }
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

/// Installs `filter` on the calling thread, which messages call `label`.
/// Sets `PR_SET_NO_NEW_PRIVS` first (the kernel requires it, or
/// `CAP_SYS_ADMIN`, for a filter). Filters stack: a thread keeps the
/// filters it inherited, so each thread installs its own after it was
/// created, and the main thread installs its own last.
///
/// # Errors
/// [`SeccompError::Install`] when the kernel refuses.
pub fn install_filter(filter: &BpfProgram, label: ThreadLabel) -> Result<(), SeccompError> {
    sigsys::set_thread_label(label);
    seccompiler::apply_filter(filter).map_err(|e| SeccompError::Install {
        thread: label.to_string(),
        reason: innermost(&e),
    })
}

/// The text of the last error in `error`'s chain.
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut last = error;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// Sets `PR_SET_NO_NEW_PRIVS` on the calling thread, inherited by the
/// threads it creates afterwards: no execve can gain privileges, and the
/// kernel lets an unprivileged process install seccomp filters.
///
/// # Errors
/// The `prctl` error.
pub fn set_no_new_privs() -> std::io::Result<()> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_builtin_filters_compile_for_every_thread() {
        let filters = SeccompFilters::builtin().unwrap();
        for kind in ThreadKind::ALL {
            assert!(!filters.of(kind).is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn test_missing_and_unknown_threads_are_refused() {
        let allow = r#"{"mismatch_action": "trap", "match_action": "allow", "filter": [{"syscall": "read"}]}"#;
        let two = format!(r#"{{"main": {allow}, "vcpu": {allow}}}"#);
        let err = SeccompFilters::from_json(two.as_bytes(), Path::new("f.json")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The seccomp filter file f.json has no filter for the 'devices' thread"
        );
        assert!(err.is_input_error());
        let three = format!(r#"{{"main": {allow}, "vcpu": {allow}, "devices": {allow}}}"#);
        let err = SeccompFilters::from_json(three.as_bytes(), Path::new("f.json")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "The seccomp filter file f.json has no filter for the 'api' thread"
        );
        let four =
            format!(r#"{{"main": {allow}, "vcpu": {allow}, "devices": {allow}, "api": {allow}}}"#);
        SeccompFilters::from_json(four.as_bytes(), Path::new("f.json")).unwrap();
        let five = format!(
            r#"{{"main": {allow}, "vcpu": {allow}, "devices": {allow}, "api": {allow}, "gpu": {allow}}}"#
        );
        let err = SeccompFilters::from_json(five.as_bytes(), Path::new("f.json")).unwrap_err();
        assert!(err
            .to_string()
            .contains("'gpu', which is not a vmpod-vm thread"));
    }

    #[test]
    fn test_bad_json_and_syscall_names_are_refused() {
        let err = SeccompFilters::from_json(b"{", Path::new("f.json")).unwrap_err();
        assert!(matches!(err, SeccompError::Compile { .. }), "{err}");
        let bogus = r#"{"main": {"mismatch_action": "trap", "match_action": "allow",
            "filter": [{"syscall": "no_such_call"}]}}"#;
        let err = SeccompFilters::from_json(bogus.as_bytes(), Path::new("f.json")).unwrap_err();
        assert_eq!(
            vmpod_sys::error::chain(&err),
            "Invalid seccomp filter file f.json: Invalid syscall name: no_such_call for given \
             arch: x86_64."
        );
    }

    #[test]
    fn test_thread_labels() {
        assert_eq!(ThreadLabel::MAIN.to_string(), "main");
        assert_eq!(ThreadLabel::DEVICES.to_string(), "devices");
        assert_eq!(ThreadLabel::vcpu(3).to_string(), "vcpu3");
    }
}
