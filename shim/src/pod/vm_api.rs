// SPDX-License-Identifier: Apache-2.0
//! The shim's client of `vmpod-vm --api` (docs/vmpod-vm.md): one HTTP
//! request per connection on the VM's control socket, to pause it, snapshot
//! it and resume it when a pod VM becomes a template.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// How long a request may take: a snapshot writes all of guest memory.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The most of an answer read (status line, headers, a fault message).
const MAX_ANSWER: u64 = 64 * 1024;

/// A request the VM did not carry out.
#[derive(Debug, thiserror::Error)]
pub(super) enum VmApiError {
    /// The socket could not be reached, or the exchange broke off.
    #[error("{request} on {socket}")]
    Io {
        /// What was asked, and its request line.
        request: String,
        /// The control socket.
        socket: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// The VM answered with an error.
    #[error("{request}: the VM answered {answer}")]
    Refused {
        /// What was asked, and its request line.
        request: String,
        /// Its status line and fault message.
        answer: String,
    },
}

/// Sends `method path` with the JSON `body` to the control socket `socket`
/// and waits for a 2xx answer; errors name the request as `what`.
fn request(
    socket: &Path,
    what: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(), VmApiError> {
    let request_line = format!("{method} {path}");
    let asked = format!("{what} ({request_line})");
    let io = |source| VmApiError::Io {
        request: asked.clone(),
        socket: socket.display().to_string(),
        source,
    };
    let mut stream = vmpod_sys::unix_socket::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(io)?;
    stream
        .set_write_timeout(Some(REQUEST_TIMEOUT))
        .map_err(io)?;
    let message = format!(
        "{request_line} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(message.as_bytes()).map_err(io)?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let answer = String::from_utf8_lossy(&answer);
    let status_line = answer.lines().next().unwrap_or_default();
    let success = status_line
        .split_whitespace()
        .nth(1)
        .is_some_and(|status| status.starts_with('2'));
    if success {
        return Ok(());
    }
    if answer.is_empty() {
        return Err(VmApiError::Refused {
            request: asked,
            answer: "nothing: it closed the connection".to_owned(),
        });
    }
    let fault = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    Err(VmApiError::Refused {
        request: asked,
        answer: format!("{status_line} {fault}").trim().to_owned(),
    })
}

/// Pauses the VM at `socket`, has it write a snapshot to `snapshot_dir`
/// (a path as the VM sees it), and resumes it — also when the snapshot
/// failed.
///
/// # Errors
/// The first request that failed.
pub(super) fn snapshot(socket: &Path, snapshot_dir: &Path) -> Result<(), VmApiError> {
    request(socket, "pause", "PATCH", "/vm", r#"{"state":"Paused"}"#)?;
    let body = serde_json::json!({ "snapshot_dir": snapshot_dir }).to_string();
    let taken = request(socket, "snapshot", "PUT", "/snapshot/create", &body);
    let resumed = request(socket, "resume", "PATCH", "/vm", r#"{"state":"Resumed"}"#);
    taken.and(resumed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    /// A control socket that answers each request with the next of
    /// `answers` and hands back the requests' first lines and bodies.
    fn serve(socket: &Path, answers: Vec<&'static str>) -> std::thread::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(socket).unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answer in answers {
                let (mut stream, _) = listener.accept().unwrap();
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header == "\r\n" {
                        break;
                    }
                    if let Some(value) = header.strip_prefix("Content-Length: ") {
                        length = value.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                seen.push(format!(
                    "{} {}",
                    line.trim_end(),
                    String::from_utf8(body).unwrap()
                ));
                stream.write_all(answer.as_bytes()).unwrap();
            }
            seen
        })
    }

    #[test]
    fn test_a_snapshot_pauses_writes_and_resumes_even_when_refused() {
        let dir = std::env::temp_dir().join(format!("vmpod-vm-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let ok = "HTTP/1.1 204 No Content\r\n\r\n";
        let server = serve(&socket, vec![ok, ok, ok]);
        snapshot(&socket, Path::new("/run/template")).unwrap();
        assert_eq!(
            server.join().unwrap(),
            [
                r#"PATCH /vm HTTP/1.1 {"state":"Paused"}"#,
                r#"PUT /snapshot/create HTTP/1.1 {"snapshot_dir":"/run/template"}"#,
                r#"PATCH /vm HTTP/1.1 {"state":"Resumed"}"#,
            ]
        );
        std::fs::remove_file(&socket).unwrap();
        let refused = "HTTP/1.1 400 Bad Request\r\n\r\n{\"fault_message\":\"disk full\"}";
        let server = serve(&socket, vec![ok, refused, ok]);
        let err = snapshot(&socket, Path::new("/run/template")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"snapshot (PUT /snapshot/create): the VM answered HTTP/1.1 400 Bad Request {"fault_message":"disk full"}"#
        );
        assert_eq!(server.join().unwrap().len(), 3, "resumed all the same");
        std::fs::remove_file(&socket).unwrap();
        let server = serve(&socket, vec![ok, ok, ""]);
        let err = snapshot(&socket, Path::new("/run/template")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "resume (PATCH /vm): the VM answered nothing: it closed the connection"
        );
        server.join().unwrap();
        std::fs::remove_file(&socket).unwrap();
        let err = snapshot(&socket, Path::new("/x")).unwrap_err();
        assert!(
            err.to_string().starts_with("pause (PATCH /vm) on "),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
