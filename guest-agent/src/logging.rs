// SPDX-License-Identifier: Apache-2.0
//! Where the agent's logs go: stderr (the guest console), and, when the
//! kernel command line asks with `vmpod.log_port=N`, a vsock stream to the
//! host's port N (with hybrid vsock, the host's Unix socket `<uds>_N`),
//! connected again when it is lost (a restored VM's is reset).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// The host's CID.
const VMADDR_CID_HOST: u32 = 2;

/// A host that stops reading may hold a log line this long; then vsock
/// logging stops and the console keeps the logs.
const SEND_TIMEOUT_SECS: libc::time_t = 1;

/// stderr plus, optionally, the host's log port.
#[derive(Debug, Clone, Default)]
pub struct LogSink {
    vsock: Option<Arc<Mutex<HostStream>>>,
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

/// How often a lost log stream may be connected again: a VM restored from
/// a snapshot finds its stream reset, and the host may not listen at all.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// The stream to the host's log port, and when it was last connected.
#[derive(Debug)]
struct HostStream {
    port: u32,
    stream: Option<File>,
    last_attempt: Option<Instant>,
}

impl HostStream {
    /// The stream, connected again if it is lost and the last attempt is
    /// [`RECONNECT_INTERVAL`] old.
    fn stream(&mut self, now: Instant) -> Option<&mut File> {
        let due = self
            .last_attempt
            .is_none_or(|last| now.saturating_duration_since(last) >= RECONNECT_INTERVAL);
        if self.stream.is_none() && due {
            self.last_attempt = Some(now);
            self.stream = connect(self.port).ok();
        }
        self.stream.as_mut()
    }

    /// Sends `buf`, on a new stream if the one it had is gone (once per
    /// [`RECONNECT_INTERVAL`]); what cannot be sent stays on the console.
    fn send(&mut self, buf: &[u8]) {
        for _ in 0..2 {
            let Some(file) = self.stream(Instant::now()) else {
                return;
            };
            if file.write_all(buf).is_ok() {
                return;
            }
            // The host went away, stopped reading, or the VM was restored.
            self.stream = None;
        }
    }
}

impl LogSink {
    /// Logs to stderr, and to the host's vsock `port` if one is given (if
    /// the host does not accept, the logs stay on the console until it
    /// does).
    pub fn new(port: Option<u32>) -> Self {
        let vsock = port.map(|port| {
            let mut host = HostStream {
                port,
                stream: None,
                last_attempt: None,
            };
            if host.stream(Instant::now()).is_none() {
                eprintln!("vmpod-agent: logs stay on the console until the host listens on vsock port {port}");
            }
            Arc::new(Mutex::new(host))
        });
        LogSink { vsock }
    }
}

/// One log record's writer.
#[derive(Debug)]
pub struct LogWriter {
    vsock: Option<Arc<Mutex<HostStream>>>,
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(vsock) = &self.vsock {
            vsock.lock().unwrap_or_else(|p| p.into_inner()).send(buf);
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
