// SPDX-License-Identifier: Apache-2.0
//! Where the agent's logs go: stderr (the guest console), and, when the
//! kernel command line asks with `vmpod.log_port=N`, a vsock stream to the
//! host's port N (with hybrid vsock, the host's Unix socket `<uds>_N`).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;

/// The host's CID.
const VMADDR_CID_HOST: u32 = 2;

/// A host that stops reading may hold a log line this long; then vsock
/// logging stops and the console keeps the logs.
const SEND_TIMEOUT_SECS: libc::time_t = 1;

/// stderr plus, optionally, the host's log port.
#[derive(Debug, Clone, Default)]
pub struct LogSink {
    vsock: Option<Arc<Mutex<Option<File>>>>,
}

/// Connects to the host's vsock `port`.
fn connect(port: u32) -> io::Result<File> {
    // SAFETY: socket takes integer arguments.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket just returned this descriptor; we own it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero sockaddr_vm is valid; the fields are set below.
    let mut address: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    address.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    address.svm_cid = VMADDR_CID_HOST;
    address.svm_port = port;
    let timeout = libc::timeval {
        tv_sec: SEND_TIMEOUT_SECS,
        tv_usec: 0,
    };
    // SAFETY: address is a sockaddr_vm of the length given; the timeout is
    // a timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if libc::connect(
            fd.as_raw_fd(),
            (&raw const address).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(File::from(fd))
}

impl LogSink {
    /// Logs to stderr, and to the host's vsock `port` if one is given and
    /// the host accepts (otherwise says so on stderr).
    pub fn new(port: Option<u32>) -> Self {
        let vsock = port.and_then(|port| match connect(port) {
            Ok(stream) => Some(Arc::new(Mutex::new(Some(stream)))),
            Err(err) => {
                eprintln!("vmpod-agent: logs stay on the console: vsock port {port}: {err}");
                None
            }
        });
        LogSink { vsock }
    }
}

/// One log record's writer.
#[derive(Debug)]
pub struct LogWriter {
    vsock: Option<Arc<Mutex<Option<File>>>>,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(vsock) = &self.vsock {
            let mut stream = vsock.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(file) = stream.as_mut() {
                if file.write_all(buf).is_err() {
                    // The host went away or stopped reading.
                    *stream = None;
                }
            }
        }
        io::stderr().write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter {
            vsock: self.vsock.clone(),
        }
    }
}
