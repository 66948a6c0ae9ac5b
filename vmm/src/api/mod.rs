// SPDX-License-Identifier: Apache-2.0
//! The control socket (`--api unix:PATH`): a small HTTP API on a Unix
//! socket, in the manner of Firecracker's, to pause and resume a running VM,
//! snapshot it while paused, and ask its state.
//!
//! | request | body | answer |
//! | --- | --- | --- |
//! | `GET /vm` | | `200 {"state": "Running" \| "Paused"}` |
//! | `PATCH /vm` | `{"state": "Paused"}` or `{"state": "Resumed"}` | `204` |
//! | `PUT /snapshot/create` | `{"snapshot_dir": "/abs/dir"}` | `204` (the VM must be paused) |
//!
//! A refused request gets a 4xx status and `{"fault_message": "..."}`. The
//! socket serves one connection at a time, one request per connection, on
//! its own thread (`vmpod-api`) under its own seccomp filter.

pub mod http;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use seccompiler::BpfProgram;

pub use http::{ApiRequest, Refusal};

use crate::seccomp::{install_filter, SeccompError, ThreadLabel};

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What answers the API's requests: the running VM.
pub trait ApiHandler: Send + Sync {
    /// Carries out `request`; `Ok(Some(body))` answers 200 with the body,
    /// `Ok(None)` 204, `Err` 400 with the message.
    ///
    /// # Errors
    /// A one-line reason the request failed (e.g. a snapshot of a running
    /// VM, or a directory that cannot be written).
    fn handle(&self, request: ApiRequest) -> Result<Option<serde_json::Value>, String>;
}

/// Errors setting up the API socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The `--api` value is not `unix:PATH`.
    #[error("Invalid --api {0:?}: expected unix:PATH")]
    Address(String),
    /// Something is at the socket's path already.
    #[error("The API socket {0} already exists")]
    Exists(PathBuf),
    /// The socket cannot be bound.
    #[error("Cannot bind the API socket {path}")]
    Bind {
        /// The socket's path.
        path: PathBuf,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
    /// The thread cannot be started.
    #[error("Cannot start the API thread")]
    Thread(#[source] std::io::Error),
    /// The thread's seccomp filter cannot be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// Parses an `--api` value.
///
/// # Errors
/// [`ApiError::Address`] for anything but `unix:` and a non-empty path.
pub fn parse_address(value: &str) -> Result<PathBuf, ApiError> {
    match value.strip_prefix("unix:") {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(ApiError::Address(value.to_string())),
    }
}

/// A bound API socket; its file goes when this (or the server it became)
/// is dropped.
#[derive(Debug)]
pub struct ApiSocket {
    listener: UnixListener,
    path: SocketFile,
}

/// Removes the socket's file when dropped.
#[derive(Debug)]
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl ApiSocket {
    /// Binds the socket at `path`, which must not exist.
    ///
    /// # Errors
    /// [`ApiError::Exists`] or [`ApiError::Bind`].
    pub fn bind(path: &Path) -> Result<Self, ApiError> {
        if path.symlink_metadata().is_ok() {
            return Err(ApiError::Exists(path.to_path_buf()));
        }
        let listener = vmpod_sys::unix_socket::bind(path).map_err(|source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(ApiSocket {
            listener,
            path: SocketFile(path.to_path_buf()),
        })
    }

    /// Serves requests with `handler` on a thread of its own, which
    /// installs `filter` (if any) before it accepts anything. The thread
    /// lives as long as the process; the returned guard removes the
    /// socket's file.
    ///
    /// # Errors
    /// [`ApiError::Thread`] or [`ApiError::Seccomp`].
    pub fn serve(
        self,
        handler: Arc<dyn ApiHandler>,
        filter: Option<BpfProgram>,
    ) -> Result<SocketFile, ApiError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        let listener = self.listener;
        std::thread::Builder::new()
            .name("vmpod-api".into())
            .spawn(move || {
                let installed = match &filter {
                    Some(filter) => install_filter(filter, ThreadLabel::API),
                    None => Ok(()),
                };
                let serve = installed.is_ok();
                let _ = ready_tx.send(installed);
                if serve {
                    accept_loop(&listener, handler.as_ref());
                }
            })
            .map_err(ApiError::Thread)?;
        ready_rx.recv().map_err(|_| {
            ApiError::Thread(std::io::Error::other("it ended before it was ready"))
        })??;
        Ok(self.path)
    }
}

fn accept_loop(listener: &UnixListener, handler: &dyn ApiHandler) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => serve_connection(stream, handler),
            Err(e) => tracing::warn!("API: accept failed: {e}"),
        }
    }
}

/// Answers one request on `stream`.
pub fn serve_connection(mut stream: UnixStream, handler: &dyn ApiHandler) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let fault = |message: &str| serde_json::json!({ "fault_message": message });
    let (status, body) = match http::read_request(&mut stream) {
        Err(refusal) => (refusal.status, Some(fault(&refusal.message))),
        Ok(request) => {
            tracing::info!("API: {request:?}");
            match handler.handle(request) {
                Ok(Some(body)) => (200, Some(body)),
                Ok(None) => (204, None),
                Err(message) => {
                    tracing::warn!("API: {message}");
                    (400, Some(fault(&message)))
                }
            }
        }
    };
    if let Err(e) = http::write_response(&mut stream, status, body.as_ref()) {
        tracing::debug!("API: cannot answer: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<ApiRequest>>);

    impl ApiHandler for Recorder {
        fn handle(&self, request: ApiRequest) -> Result<Option<serde_json::Value>, String> {
            self.0.lock().unwrap().push(request.clone());
            match request {
                ApiRequest::State => Ok(Some(serde_json::json!({"state": "Running"}))),
                ApiRequest::CreateSnapshot { .. } => Err("the VM is running".into()),
                _ => Ok(None),
            }
        }
    }

    fn ask(path: &Path, raw: &str) -> String {
        let mut stream = UnixStream::connect(path).unwrap();
        stream.write_all(raw.as_bytes()).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    }

    #[test]
    fn test_socket_serves_and_goes_away() {
        let path = std::env::temp_dir().join(format!("vmpod-api-test-{}", std::process::id()));
        let recorder = Arc::new(Recorder::default());
        let guard = ApiSocket::bind(&path)
            .unwrap()
            .serve(recorder.clone(), None)
            .unwrap();
        assert!(matches!(ApiSocket::bind(&path), Err(ApiError::Exists(_))));
        let answer = ask(&path, "GET /vm HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.ends_with(r#"{"state":"Running"}"#), "{answer}");
        let body = r#"{"state":"Paused"}"#;
        let answer = ask(
            &path,
            &format!(
                "PATCH /vm HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
        let body = r#"{"snapshot_dir":"/x"}"#;
        let answer = ask(
            &path,
            &format!(
                "PUT /snapshot/create HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        );
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(
            answer.contains(r#"{"fault_message":"the VM is running"}"#),
            "{answer}"
        );
        let answer = ask(&path, "GET /nothing HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert_eq!(recorder.0.lock().unwrap().len(), 3);
        drop(guard);
        assert!(!path.exists());
    }

    #[test]
    fn test_address_must_be_unix() {
        assert_eq!(
            parse_address("unix:/run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        for bad in ["/run/x.sock", "unix:", "tcp:1.2.3.4:80"] {
            assert!(
                matches!(parse_address(bad), Err(ApiError::Address(_))),
                "{bad}"
            );
        }
    }
}
