// SPDX-License-Identifier: Apache-2.0
//! The host's side of the test init's device checks
//! (rootfs/test-init/src/devices.rs): its vsock peers, and its lines.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The guest listens here for the host's CONNECT.
pub const GUEST_VSOCK_PORT: u32 = 1234;
/// The guest connects to this host port (`<socket>_5678`).
pub const HOST_VSOCK_PORT: u32 = 5678;

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `vmpod-NAME-PID` under the temporary directory, emptied first.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmpod-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The host side of vsock: answers the guest's connection to
/// [`HOST_VSOCK_PORT`] and connects to the guest's [`GUEST_VSOCK_PORT`]
/// (retrying until the guest listens, for at most `timeout`). Sends what
/// it saw on `results`.
pub fn vsock_host_side(socket: &Path, results: mpsc::Sender<String>, timeout: Duration) {
    let listener = UnixListener::bind(format!("{}_{HOST_VSOCK_PORT}", socket.display()))
        .expect("bind the host vsock port");
    let results_in = results.clone();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = (&stream).write_all(b"hello guest from the host\n");
            let _ = results_in.send(format!("guest said {:?}", line.trim()));
        }
    });
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(300));
            let Ok(stream) = UnixStream::connect(&socket) else {
                continue;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            if (&stream)
                .write_all(format!("CONNECT {GUEST_VSOCK_PORT}\n").as_bytes())
                .is_err()
            {
                continue;
            }
            let mut ok = String::new();
            // The VMM closes the stream if the guest is not listening yet.
            if reader.read_line(&mut ok).unwrap_or(0) == 0 || !ok.starts_with("OK ") {
                continue;
            }
            let _ = (&stream).write_all(b"ping from the host\n");
            let mut echo = String::new();
            let _ = reader.read_line(&mut echo);
            let _ = results.send(format!("connected ({}), echo {:?}", ok.trim(), echo.trim()));
            return;
        }
    });
}

/// The test init's `<key>=...` line, or its `<key>: <error>` line in the
/// panic message.
pub fn init_line<'a>(console: &'a str, key: &str) -> &'a str {
    let ok = format!("vmpod-test-init: {key}=");
    let failed = format!("vmpod-test-init: {key}: ");
    for line in console.lines() {
        if let Some(rest) = line.trim_end().strip_prefix(ok.as_str()) {
            return rest;
        }
        if line.starts_with(failed.as_str()) {
            panic!("the guest's {key} check failed: {line}");
        }
    }
    panic!("the guest printed no {key} line");
}
