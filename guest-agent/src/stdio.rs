// SPDX-License-Identifier: Apache-2.0
//! A process's stdio inside the agent: three pipes, or one terminal. The
//! agent keeps only its ends and moves bytes when the shim asks (the API's
//! Read*/WriteStdin), so nothing piles up in the agent: a process whose
//! output nobody reads blocks on a full pipe, as under runc.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Mutex;

use tokio::io::unix::AsyncFd;

use crate::container::spawn::{pipe, ChildSide};

/// The most one read returns.
pub const MAX_READ: usize = 1 << 20;

/// Failures of stdio set-up and transfers.
#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    /// A pipe or terminal could not be made.
    #[error("creating {what}")]
    Create {
        /// Pipes or terminal.
        what: &'static str,
        /// The system call's error.
        #[source]
        source: io::Error,
    },
    /// The stream is closed or absent.
    #[error("the process has no {0}")]
    NoStream(&'static str),
    /// A read, write or ioctl failed.
    #[error("{what}")]
    Io {
        /// What failed.
        what: &'static str,
        /// The system call's error.
        #[source]
        source: io::Error,
    },
}

/// The agent's ends of one process's stdio.
#[derive(Debug)]
pub struct Streams {
    stdin: Mutex<Option<std::sync::Arc<AsyncFd<File>>>>,
    stdout: std::sync::Arc<AsyncFd<File>>,
    stderr: Option<std::sync::Arc<AsyncFd<File>>>,
    terminal: bool,
}

fn nonblocking(file: File) -> io::Result<AsyncFd<File>> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: the File owns its descriptor and moves into the AsyncFd,
    // which keeps it open and unchanged until it is dropped.
    Ok(unsafe { AsyncFd::register(file) }?)
}

fn create(what: &'static str) -> impl FnOnce(io::Error) -> StdioError {
    move |source| StdioError::Create { what, source }
}

impl Streams {
    /// Pipes for stdin, stdout and stderr: the agent's ends, and the
    /// child's.
    ///
    /// # Errors
    ///
    /// [`StdioError::Create`].
    pub fn pipes() -> Result<(Streams, ChildSide), StdioError> {
        let (stdin_read, stdin_write) = pipe().map_err(create("stdio pipes"))?;
        let (stdout_read, stdout_write) = pipe().map_err(create("stdio pipes"))?;
        let (stderr_read, stderr_write) = pipe().map_err(create("stdio pipes"))?;
        let wrap = |fd: OwnedFd| nonblocking(File::from(fd)).map(std::sync::Arc::new);
        let streams = Streams {
            stdin: Mutex::new(Some(wrap(stdin_write).map_err(create("stdio pipes"))?)),
            stdout: wrap(stdout_read).map_err(create("stdio pipes"))?,
            stderr: Some(wrap(stderr_read).map_err(create("stdio pipes"))?),
            terminal: false,
        };
        Ok((
            streams,
            ChildSide::Pipes([stdin_read, stdout_write, stderr_write]),
        ))
    }

    /// A terminal: the child opens it in the container's own devpts (so
    /// that `tty` and ttyname work inside) and sends the master back over
    /// the console socket; [`Streams::terminal`] then takes it.
    ///
    /// # Errors
    ///
    /// [`StdioError::Create`].
    pub fn console_socket() -> Result<(OwnedFd, ChildSide), StdioError> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid out-array of two descriptors.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(StdioError::Create {
                what: "the console socket",
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: socketpair just returned these descriptors; we own them.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((ours, ChildSide::Console(theirs)))
    }

    /// The streams of a terminal whose master the child sent.
    ///
    /// # Errors
    ///
    /// [`StdioError::Create`] when it cannot be watched.
    pub fn terminal(master: OwnedFd) -> Result<Streams, StdioError> {
        let master =
            std::sync::Arc::new(nonblocking(File::from(master)).map_err(create("a terminal"))?);
        Ok(Streams {
            stdin: Mutex::new(Some(master.clone())),
            stdout: master,
            stderr: None,
            terminal: true,
        })
    }

    /// Whether the process has a terminal.
    pub fn is_terminal(&self) -> bool {
        self.terminal
    }

    /// Up to `max` bytes of stdout (or the terminal), waiting for at least
    /// one; empty at the end of the stream.
    ///
    /// # Errors
    ///
    /// [`StdioError::Io`].
    pub async fn read_stdout(&self, max: usize) -> Result<Vec<u8>, StdioError> {
        read(&self.stdout, max).await
    }

    /// As [`Streams::read_stdout`], for stderr (none with a terminal).
    ///
    /// # Errors
    ///
    /// [`StdioError::NoStream`] with a terminal; [`StdioError::Io`].
    pub async fn read_stderr(&self, max: usize) -> Result<Vec<u8>, StdioError> {
        match &self.stderr {
            Some(stderr) => read(stderr, max).await,
            None => Err(StdioError::NoStream("stderr (it has a terminal)")),
        }
    }

    /// Writes to stdin (or the terminal), waiting until some is taken;
    /// returns how much.
    ///
    /// # Errors
    ///
    /// [`StdioError::NoStream`] after [`Streams::close_stdin`].
    pub async fn write_stdin(&self, data: &[u8]) -> Result<usize, StdioError> {
        let stdin = self
            .stdin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or(StdioError::NoStream("stdin (it was closed)"))?;
        if data.is_empty() {
            return Ok(0);
        }
        loop {
            let mut guard = stdin.writable().await.map_err(|source| StdioError::Io {
                what: "waiting for stdin",
                source,
            })?;
            match guard.try_io(|fd| {
                let mut file: &File = fd.get_ref();
                file.write(data)
            }) {
                Ok(result) => {
                    return result.map_err(|source| StdioError::Io {
                        what: "writing stdin",
                        source,
                    })
                }
                Err(_would_block) => continue,
            }
        }
    }

    /// Closes stdin so that the process reads end of file. With a terminal
    /// it sends the terminal's end-of-file character instead.
    ///
    /// # Errors
    ///
    /// [`StdioError::Io`] when the terminal does not take it.
    pub async fn close_stdin(&self) -> Result<(), StdioError> {
        if self.terminal {
            // ^D at the start of a line: the terminal's EOF.
            self.write_stdin(&[4]).await?;
            return Ok(());
        }
        self.stdin.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(())
    }

    /// Sets the terminal's size.
    ///
    /// # Errors
    ///
    /// [`StdioError::NoStream`] without a terminal; [`StdioError::Io`].
    pub fn resize(&self, rows: u16, columns: u16) -> Result<(), StdioError> {
        if !self.terminal {
            return Err(StdioError::NoStream("terminal"));
        }
        let size = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
        if unsafe { libc::ioctl(self.stdout.get_ref().as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
            return Err(StdioError::Io {
                what: "resizing the terminal",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

async fn read(stream: &AsyncFd<File>, max: usize) -> Result<Vec<u8>, StdioError> {
    let mut buffer = vec![0; max.clamp(1, MAX_READ)];
    loop {
        let mut guard = stream.readable().await.map_err(|source| StdioError::Io {
            what: "waiting for output",
            source,
        })?;
        match guard.try_io(|fd| {
            let mut file: &File = fd.get_ref();
            file.read(&mut buffer)
        }) {
            Ok(Ok(n)) => {
                buffer.truncate(n);
                return Ok(buffer);
            }
            // A terminal whose last slave closed reads EIO: the end.
            Ok(Err(err)) if err.raw_os_error() == Some(libc::EIO) => return Ok(Vec::new()),
            Ok(Err(source)) => {
                return Err(StdioError::Io {
                    what: "reading output",
                    source,
                })
            }
            Err(_would_block) => continue,
        }
    }
}
