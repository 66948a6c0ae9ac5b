// SPDX-License-Identifier: Apache-2.0
//! A client of `vmpod-vm --api`: one HTTP request per connection over the
//! Unix socket, as `curl --unix-socket` would send it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// An answer: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAnswer {
    /// The HTTP status.
    pub status: u16,
    /// The body (JSON or empty).
    pub body: String,
}

/// Sends `method path` with `body` (JSON, or empty) to the API socket.
///
/// # Errors
/// The socket cannot be reached or answers something that is not HTTP.
pub fn call(socket: &Path, method: &str, path: &str, body: &str) -> std::io::Result<ApiAnswer> {
    let mut stream = vmpod_sys::unix_socket::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    parse(&answer)
}

fn parse(answer: &str) -> std::io::Result<ApiAnswer> {
    let bad = || std::io::Error::other(format!("not an HTTP answer: {answer:?}"));
    let status = answer
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or_else(bad)?;
    let body = answer.split_once("\r\n\r\n").ok_or_else(bad)?.1.to_string();
    Ok(ApiAnswer { status, body })
}

/// Pauses the VM; panics unless it answers 204.
pub fn pause(socket: &Path) {
    expect_no_content(socket, "PATCH", "/vm", r#"{"state":"Paused"}"#);
}

/// Resumes the VM; panics unless it answers 204.
pub fn resume(socket: &Path) {
    expect_no_content(socket, "PATCH", "/vm", r#"{"state":"Resumed"}"#);
}

/// Snapshots the paused VM into `dir`; panics unless it answers 204.
pub fn snapshot(socket: &Path, dir: &Path) {
    let body = serde_json::json!({ "snapshot_dir": dir }).to_string();
    expect_no_content(socket, "PUT", "/snapshot/create", &body);
}

/// The VM's state: `Running` or `Paused`.
pub fn state(socket: &Path) -> String {
    let answer = call(socket, "GET", "/vm", "").expect("API call");
    assert_eq!(answer.status, 200, "{answer:?}");
    let value: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    value["state"].as_str().unwrap_or_default().to_string()
}

fn expect_no_content(socket: &Path, method: &str, path: &str, body: &str) {
    let answer = call(socket, method, path, body).expect("API call");
    assert_eq!(answer.status, 204, "{method} {path} {body}: {answer:?}");
}

/// Waits up to `timeout` for the API socket to accept connections.
pub fn wait_for(socket: &Path, timeout: Duration) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if UnixStream::connect(socket).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
