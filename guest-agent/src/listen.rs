// SPDX-License-Identifier: Apache-2.0
//! Where the agent serves its API: vsock in the VM, a Unix socket on a
//! host.

use std::fmt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;

/// A `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddress {
    /// `vsock:PORT`, any CID.
    Vsock(u32),
    /// `unix:PATH`.
    Unix(PathBuf),
}

/// A `--listen` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListenError {
    /// Neither `vsock:` nor `unix:`.
    #[error("listen address {0:?} is neither vsock:PORT nor unix:PATH")]
    Scheme(String),
    /// Not a port number.
    #[error("vsock port {0:?} is not a number from 1 to 4294967294")]
    Port(String),
    /// An empty path.
    #[error("unix socket path is empty")]
    EmptyPath,
    /// Longer than `sun_path`.
    #[error("unix socket path {0:?} is longer than 107 bytes")]
    PathTooLong(String),
    /// Another process listens there.
    #[error("{0} is in use by another process")]
    InUse(String),
}

/// `sun_path` holds 108 bytes with the terminating NUL.
const MAX_UNIX_PATH: usize = 107;

impl FromStr for ListenAddress {
    type Err = ListenError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if let Some(port) = value.strip_prefix("vsock:") {
            return match port.parse::<u32>() {
                Ok(port) if port != 0 && port != u32::MAX => Ok(ListenAddress::Vsock(port)),
                _ => Err(ListenError::Port(port.to_owned())),
            };
        }
        if let Some(path) = value.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ListenError::EmptyPath);
            }
            if path.len() > MAX_UNIX_PATH {
                return Err(ListenError::PathTooLong(path.to_owned()));
            }
            return Ok(ListenAddress::Unix(PathBuf::from(path)));
        }
        Err(ListenError::Scheme(value.to_owned()))
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Vsock(port) => write!(f, "vsock:{port}"),
            ListenAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl ListenAddress {
    /// The address in ttrpc's notation.
    pub fn ttrpc_address(&self) -> String {
        match self {
            ListenAddress::Vsock(port) => format!("vsock://-1:{port}"),
            ListenAddress::Unix(path) => format!("unix://{}", path.display()),
        }
    }

    /// Makes room for the socket: a stale socket file left by an agent
    /// that died is removed, a live one is refused.
    ///
    /// # Errors
    ///
    /// [`ListenError::InUse`] when a process accepts on the path.
    pub fn prepare(&self) -> Result<(), ListenError> {
        if let ListenAddress::Unix(path) = self {
            if UnixStream::connect(path).is_ok() {
                return Err(ListenError::InUse(path.display().to_string()));
            }
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Removes the socket file, if there is one.
    pub fn remove_socket(&self) {
        if let ListenAddress::Unix(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_parses_vsock_and_unix() {
        assert_eq!("vsock:1024".parse(), Ok(ListenAddress::Vsock(1024)));
        assert_eq!(
            "unix:/run/a.sock".parse(),
            Ok(ListenAddress::Unix("/run/a.sock".into()))
        );
        assert_eq!(ListenAddress::Vsock(7).ttrpc_address(), "vsock://-1:7");
        assert_eq!(
            ListenAddress::Unix("/x".into()).ttrpc_address(),
            "unix:///x"
        );
    }

    #[test]
    fn test_rejects_bad_addresses() {
        assert_eq!(
            "tcp:1".parse::<ListenAddress>(),
            Err(ListenError::Scheme("tcp:1".into()))
        );
        for port in ["0", "x", "", "4294967295", "-1"] {
            assert_eq!(
                format!("vsock:{port}").parse::<ListenAddress>(),
                Err(ListenError::Port(port.into()))
            );
        }
        assert_eq!(
            "unix:".parse::<ListenAddress>(),
            Err(ListenError::EmptyPath)
        );
        let long = format!("unix:/{}", "a".repeat(107));
        assert!(matches!(
            long.parse::<ListenAddress>(),
            Err(ListenError::PathTooLong(_))
        ));
    }
}
