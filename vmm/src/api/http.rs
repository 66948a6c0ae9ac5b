// SPDX-License-Identifier: Apache-2.0
//! The API's HTTP/1.1: one bounded request per connection, parsed with
//! `httparse`, and the JSON answers. The peer is the host (the shim or an
//! operator with `curl --unix-socket`), but its input is still bounded and
//! checked: a bad request gets a 4xx with a `fault_message`, never a panic.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::Deserialize;

/// The most header bytes read.
pub const MAX_HEAD: usize = 8 << 10;
/// The most body bytes read.
pub const MAX_BODY: usize = 64 << 10;
/// The most headers parsed.
const MAX_HEADERS: usize = 32;

/// What a client may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /vm`: whether the VM runs or is paused.
    State,
    /// `PATCH /vm` with `{"state": "Paused"}`.
    Pause,
    /// `PATCH /vm` with `{"state": "Resumed"}`.
    Resume,
    /// `PUT /snapshot/create` with `{"snapshot_dir": DIR}`.
    CreateSnapshot {
        /// Where the snapshot goes (created if missing).
        dir: PathBuf,
    },
}

/// A request the API refuses, with its HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The status code.
    pub status: u16,
    /// The one-line reason.
    pub message: String,
}

impl Refusal {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotBody {
    snapshot_dir: PathBuf,
}

fn json_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| Refusal::new(400, format!("invalid body: {e}")))
}

/// Maps a method, path and body to a request.
///
/// # Errors
/// A [`Refusal`]: 404 for an unknown path, 405 for a method the path
/// does not take, 400 for a body that does not say what the path needs.
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, Refusal> {
    match (path, method) {
        ("/vm", "GET") => Ok(ApiRequest::State),
        ("/vm", "PATCH") => {
            let body: VmStateBody = json_body(body)?;
            match body.state.as_str() {
                "Paused" => Ok(ApiRequest::Pause),
                "Resumed" => Ok(ApiRequest::Resume),
                other => Err(Refusal::new(
                    400,
                    format!("invalid VM state {other:?}: expected \"Paused\" or \"Resumed\""),
                )),
            }
        }
        ("/snapshot/create", "PUT") => {
            let body: SnapshotBody = json_body(body)?;
            if !body.snapshot_dir.is_absolute() {
                return Err(Refusal::new(
                    400,
                    format!(
                        "snapshot_dir {} is not an absolute path",
                        body.snapshot_dir.display()
                    ),
                ));
            }
            Ok(ApiRequest::CreateSnapshot {
                dir: body.snapshot_dir,
            })
        }
        ("/vm" | "/snapshot/create", _) => Err(Refusal::new(
            405,
            format!("method {method} is not allowed on {path}"),
        )),
        _ => Err(Refusal::new(404, format!("no such resource {path:?}"))),
    }
}

/// Reads one request from `stream` and routes it.
///
/// # Errors
/// A [`Refusal`] for a malformed, oversized or unknown request; an I/O
/// error ends the connection without an answer (400 with the reason).
pub fn read_request(stream: &mut impl Read) -> Result<ApiRequest, Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_len = loop {
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        if end.map_or(buf.len(), |end| end + 4) > MAX_HEAD {
            return Err(Refusal::new(
                431,
                format!("request head over {MAX_HEAD} bytes"),
            ));
        }
        if let Some(end) = end {
            break end + 4;
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| Refusal::new(400, format!("cannot read the request: {e}")))?;
        if n == 0 {
            return Err(Refusal::new(400, "the request ended before its head did"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&buf[..head_len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::new(400, "incomplete request head")),
        Err(e) => return Err(Refusal::new(400, format!("malformed request: {e}"))),
    }
    let method = request.method.unwrap_or_default().to_string();
    let path = request.path.unwrap_or_default().to_string();
    let mut length = 0usize;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| Refusal::new(400, "invalid Content-Length"))?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Refusal::new(411, "chunked bodies are not accepted"));
        }
    }
    if length > MAX_BODY {
        return Err(Refusal::new(
            413,
            format!("body of {length} bytes, the most is {MAX_BODY}"),
        ));
    }
    let mut body = buf.split_off(head_len);
    if body.len() > length {
        return Err(Refusal::new(400, "more bytes than Content-Length says"));
    }
    let missing = length - body.len();
    let mut rest = vec![0u8; missing];
    stream
        .read_exact(&mut rest)
        .map_err(|e| Refusal::new(400, format!("cannot read the body: {e}")))?;
    body.extend_from_slice(&rest);
    route(&method, &path, &body)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    }
}

/// Writes a response with an optional JSON body; the connection closes
/// after it.
///
/// # Errors
/// The write failed (the client went away).
pub fn write_response(
    stream: &mut impl Write,
    status: u16,
    body: Option<&serde_json::Value>,
) -> std::io::Result<()> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        reason(status),
        body.len()
    );
    if !body.is_empty() {
        out.push_str("Content-Type: application/json\r\n");
    }
    out.push_str("\r\n");
    out.push_str(&body);
    stream.write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<ApiRequest, Refusal> {
        read_request(&mut raw.as_bytes())
    }

    fn request(method: &str, path: &str, body: &str) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn test_every_request_parses() {
        assert_eq!(parse(&request("GET", "/vm", "")), Ok(ApiRequest::State));
        assert_eq!(
            parse(&request("PATCH", "/vm", r#"{"state":"Paused"}"#)),
            Ok(ApiRequest::Pause)
        );
        assert_eq!(
            parse(&request("PATCH", "/vm", r#"{"state":"Resumed"}"#)),
            Ok(ApiRequest::Resume)
        );
        assert_eq!(
            parse(&request(
                "PUT",
                "/snapshot/create",
                r#"{"snapshot_dir":"/tmp/s"}"#
            )),
            Ok(ApiRequest::CreateSnapshot {
                dir: PathBuf::from("/tmp/s")
            })
        );
    }

    #[test]
    fn test_bad_requests_are_refused_with_their_status() {
        let status = |raw: &str| match parse(raw) {
            Ok(request) => panic!("{raw:?} parsed as {request:?}"),
            Err(refusal) => refusal.status,
        };
        assert_eq!(status(&request("GET", "/nope", "")), 404);
        assert_eq!(status(&request("DELETE", "/vm", "")), 405);
        assert_eq!(status(&request("PATCH", "/vm", r#"{"state":"Gone"}"#)), 400);
        assert_eq!(status(&request("PATCH", "/vm", r#"{"state":1}"#)), 400);
        assert_eq!(
            status(&request("PATCH", "/vm", r#"{"state":"Paused","x":1}"#)),
            400
        );
        assert_eq!(
            status(&request(
                "PUT",
                "/snapshot/create",
                r#"{"snapshot_dir":"rel"}"#
            )),
            400
        );
        assert_eq!(status("GET /vm HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status("PUT /vm HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status("PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        assert_eq!(status("GET /vm HTTP/1.1\r\n"), 400);
        assert_eq!(status("\u{1}\u{2} / HTTP/1.1\r\n\r\n"), 400);
        let long = format!("GET /vm HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(&long), 431);
        assert_eq!(
            status("PATCH /vm HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}"),
            400
        );
    }

    #[test]
    fn test_response_layout() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            400,
            Some(&serde_json::json!({"fault_message": "x"})),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\n{\"fault_message\":\"x\"}"),
            "{text}"
        );
        let mut out = Vec::new();
        write_response(&mut out, 204, None).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Content-Length: 0\r\n\r\n"));
    }
}
