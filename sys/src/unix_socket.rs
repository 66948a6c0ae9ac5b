// SPDX-License-Identifier: Apache-2.0
//! Unix sockets at paths of any length. A socket address holds at most
//! 107 bytes of path (`sun_path`), but a pod's sockets live below the
//! configured state directory and a 64-digit CRI id. Rather than make the
//! socket's place depend on those lengths, a path that does not fit is
//! reached through an O_PATH descriptor of its directory:
//! `/proc/self/fd/<fd>/<name>`, which the kernel resolves like the long
//! path. Only the socket's own file name must then be short
//! ([`MAX_NAME_LEN`]). A path that fits is used as it is, so a process
//! without /proc (a jailed VMM, whose paths are short) never needs it.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The bytes of a path a socket address holds (`sun_path`, less its NUL).
pub const MAX_ADDRESS_LEN: usize = 107;

/// The longest directory reference an address through a descriptor needs.
const FD_PREFIX_MAX: &str = "/proc/self/fd/2147483647/";

/// The longest socket file name that can be bound or connected in any
/// directory.
pub const MAX_NAME_LEN: usize = MAX_ADDRESS_LEN - FD_PREFIX_MAX.len();

/// The directory of one or more Unix sockets, held open when the names
/// given at [`SocketDir::open`] would not fit a socket address with it.
#[derive(Debug)]
pub struct SocketDir {
    path: PathBuf,
    fd: Option<OwnedFd>,
}

impl SocketDir {
    /// The directory `path`, for socket names of up to `longest_name`
    /// bytes: opened (O_PATH) only when `path/<name>` may not fit an
    /// address, so that later binds and connects make no other system call
    /// than the socket's own.
    ///
    /// # Errors
    /// A name of `longest_name` bytes could never fit; or open(2)'s.
    pub fn open(path: &Path, longest_name: usize) -> std::io::Result<Self> {
        if longest_name > MAX_NAME_LEN {
            return Err(name_too_long(longest_name));
        }
        let fd = if path.as_os_str().len() + 1 + longest_name > MAX_ADDRESS_LEN {
            Some(crate::openat::open_trusted_dir(path)?)
        } else {
            None
        };
        Ok(SocketDir {
            path: path.to_path_buf(),
            fd,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The address of the socket `name` in the directory: its path if that
    /// fits, else its path through the directory's descriptor — valid
    /// while `self` lives. For bind and connect calls of any API (std,
    /// tokio).
    ///
    /// # Errors
    /// `name` is longer than the address leaves room for, or is no single
    /// path component.
    pub fn address(&self, name: &OsStr) -> std::io::Result<PathBuf> {
        if name.is_empty() || name.as_encoded_bytes().contains(&b'/') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("socket name {name:?} is not a file name"),
            ));
        }
        let direct = self.path.join(name);
        if direct.as_os_str().len() <= MAX_ADDRESS_LEN {
            return Ok(direct);
        }
        match &self.fd {
            Some(fd) if name.len() <= MAX_NAME_LEN => Ok(Path::new("/proc/self/fd")
                .join(fd.as_raw_fd().to_string())
                .join(name)),
            _ => Err(name_too_long(name.len())),
        }
    }

    /// A listening socket at `name` in the directory.
    ///
    /// # Errors
    /// [`SocketDir::address`]'s, or bind(2)'s (EADDRINUSE if anything is
    /// at the path).
    pub fn bind(&self, name: &OsStr) -> std::io::Result<UnixListener> {
        UnixListener::bind(self.address(name)?)
    }

    /// A stream connected to the socket `name` in the directory.
    ///
    /// # Errors
    /// [`SocketDir::address`]'s, or connect(2)'s.
    pub fn connect(&self, name: &OsStr) -> std::io::Result<UnixStream> {
        UnixStream::connect(self.address(name)?)
    }
}

/// The directory of the socket `path` and its name, for [`SocketDir`].
///
/// # Errors
/// `path` names no file.
pub fn split(path: &Path) -> std::io::Result<(SocketDir, &OsStr)> {
    split_with_suffix(path, 0)
}

/// [`split`], for the socket's name and, beside it, names that add up to
/// `suffix_len` bytes to it (vsock's `<name>_<port>`).
///
/// # Errors
/// `path` names no file; the longest name could never fit.
pub fn split_with_suffix(path: &Path, suffix_len: usize) -> std::io::Result<(SocketDir, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no socket", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok((SocketDir::open(dir, name.len() + suffix_len)?, name))
}

/// A listening socket at `path`, whatever its length.
///
/// # Errors
/// As [`SocketDir::bind`].
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let (dir, name) = split(path)?;
    dir.bind(name)
}

/// A stream connected to the socket at `path`, whatever its length.
///
/// # Errors
/// As [`SocketDir::connect`].
pub fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let (dir, name) = split(path)?;
    dir.connect(name)
}

fn name_too_long(len: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("a socket name of {len} bytes is longer than {MAX_NAME_LEN}"),
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A fresh directory (below the returned top one) whose path alone is
    /// longer than an address.
    fn deep_dir(test: &str) -> (PathBuf, PathBuf) {
        let top = std::env::temp_dir().join(format!("vmpod-sock-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let mut dir = top.clone();
        while dir.as_os_str().len() <= MAX_ADDRESS_LEN {
            dir.push("a-rather-long-directory-name");
        }
        std::fs::create_dir_all(&dir).unwrap();
        (top, dir)
    }

    #[test]
    fn test_bind_and_connect_at_a_path_longer_than_an_address() {
        let (top, dir) = deep_dir("long");
        let path = dir.join("vsock.sock_1025");
        assert!(path.as_os_str().len() > 108);
        let listener = bind(&path).unwrap();
        assert!(
            std::fs::symlink_metadata(&path).is_ok(),
            "the socket is at the long path"
        );
        let mut client = connect(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        std::fs::remove_dir_all(top).unwrap();
    }

    #[test]
    fn test_a_short_path_is_used_as_it_is() {
        let dir = SocketDir::open(Path::new("/run"), 20).unwrap();
        assert!(dir.fd.is_none(), "no descriptor when the names fit");
        assert_eq!(
            dir.address(OsStr::new("v.sock")).unwrap(),
            PathBuf::from("/run/v.sock")
        );
    }

    #[test]
    fn test_a_name_too_long_fails_in_one_line() {
        let (top, dir) = deep_dir("name");
        let name = "n".repeat(MAX_NAME_LEN + 1);
        let err = bind(&dir.join(&name)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("a socket name of {} bytes is longer than 82", name.len())
        );
        let err = SocketDir::open(&dir, MAX_NAME_LEN + 1).unwrap_err();
        assert!(!err.to_string().contains('\n'), "{err}");
        let opened = SocketDir::open(&dir, 10).unwrap();
        let err = opened.address(OsStr::new(&name)).unwrap_err();
        assert!(err.to_string().starts_with("a socket name of"), "{err}");
        let err = opened.address(OsStr::new("a/b")).unwrap_err();
        assert_eq!(err.to_string(), "socket name \"a/b\" is not a file name");
        std::fs::remove_dir_all(top).unwrap();
    }
}
