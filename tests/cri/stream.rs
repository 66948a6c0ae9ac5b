// SPDX-License-Identifier: Apache-2.0
//! A client of containerd's streaming server, which serves the URLs the
//! CRI's Exec and Attach return: the kubelet's remote command protocol
//! over WebSocket, subprotocol `v4.channel.k8s.io`. Every binary message
//! starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the error
//! channel (a JSON `metav1.Status` when the command ends), 4 a terminal
//! resize (JSON `{"Width":…,"Height":…}`).

use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::http::HeaderValue;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::CriHarness;

/// The subprotocol asked for: binary frames, a status on the error channel.
pub const PROTOCOL: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// How long one read waits before the deadline is looked at again.
const POLL: Duration = Duration::from_millis(200);

/// One Exec or Attach session: what came back so far on each channel.
#[derive(Debug)]
pub struct Stream {
    socket: WebSocket<TcpStream>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: Vec<u8>,
    ended: bool,
}

impl CriHarness {
    /// Opens the streaming `url` an Exec or Attach returned. The server
    /// listens on the loopback of containerd's network namespace, where
    /// the connection is made.
    ///
    /// # Errors
    /// A message if the connection or the WebSocket handshake fails.
    pub fn open_stream(&self, url: &str) -> Result<Stream, String> {
        let ws_url = url
            .strip_prefix("http://")
            .map(|rest| format!("ws://{rest}"))
            .ok_or_else(|| format!("streaming URL {url:?} is not http://"))?;
        let mut request = ws_url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("streaming URL {url:?}: {e}"))?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .ok_or_else(|| format!("streaming URL {url:?} names no host"))?;
        let tcp = self
            .netns
            .run(|| TcpStream::connect(&authority))
            .map_err(|e| format!("connect to {authority} in containerd's namespace: {e}"))?;
        tcp.set_read_timeout(Some(POLL))
            .map_err(|e| format!("read timeout: {e}"))?;
        let (socket, response) = tungstenite::client(request, tcp)
            .map_err(|e| format!("WebSocket handshake with {url}: {e}"))?;
        let protocol = response.headers().get("Sec-WebSocket-Protocol");
        if protocol.and_then(|p| p.to_str().ok()) != Some(PROTOCOL) {
            return Err(format!("{url}: the server chose subprotocol {protocol:?}"));
        }
        Ok(Stream {
            socket,
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: Vec::new(),
            ended: false,
        })
    }
}

impl Stream {
    /// Sends `data` to the process's stdin (or terminal).
    ///
    /// # Errors
    /// A message if the message cannot be sent.
    pub fn write_stdin(&mut self, data: &[u8]) -> Result<(), String> {
        self.send(STDIN, data)
    }

    /// Asks for the terminal to be `width` columns by `height` rows.
    ///
    /// # Errors
    /// A message if the message cannot be sent.
    pub fn resize(&mut self, width: u16, height: u16) -> Result<(), String> {
        let size = serde_json::json!({"Width": width, "Height": height}).to_string();
        self.send(RESIZE, size.as_bytes())
    }

    fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), String> {
        let mut message = Vec::with_capacity(data.len() + 1);
        message.push(channel);
        message.extend_from_slice(data);
        self.socket
            .send(Message::Binary(message.into()))
            .map_err(|e| format!("send on channel {channel}: {e}"))
    }

    /// What came on stdout (the terminal's output with a tty).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// What came on stderr.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Reads until stdout contains `text`.
    ///
    /// # Errors
    /// A message with what came, if the stream ends or `timeout` passes
    /// first.
    pub fn wait_stdout(&mut self, text: &str, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while !self.stdout().contains(text) {
            if self.ended || Instant::now() > deadline {
                return Err(format!(
                    "{text:?} never came on stdout (ended: {}); stdout {:?}, stderr {:?}",
                    self.ended,
                    self.stdout(),
                    self.stderr()
                ));
            }
            self.read_one()?;
        }
        Ok(())
    }

    /// Reads until the server closes the stream; returns the exit code the
    /// error channel's status gives (0 for `Success`).
    ///
    /// # Errors
    /// A message if `timeout` passes first, or the status is not one of
    /// an ended command.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<i32, String> {
        let deadline = Instant::now() + timeout;
        while !self.ended {
            if Instant::now() > deadline {
                return Err(format!(
                    "no end within {timeout:?}; stdout {:?}, stderr {:?}",
                    self.stdout(),
                    self.stderr()
                ));
            }
            self.read_one()?;
        }
        exit_code(&self.status)
    }

    /// Closes the stream from this side (as a client detaching).
    ///
    /// # Errors
    /// A message if the close cannot be sent.
    pub fn close(mut self) -> Result<(), String> {
        if self.ended {
            return Ok(());
        }
        self.socket
            .close(None)
            .map_err(|e| format!("close the stream: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ended && Instant::now() < deadline {
            self.read_one()?;
        }
        Ok(())
    }

    /// Reads one message, or returns after [`POLL`] without one.
    fn read_one(&mut self) -> Result<(), String> {
        match self.socket.read() {
            Ok(Message::Binary(data)) => {
                let Some((&channel, payload)) = data.split_first() else {
                    return Ok(());
                };
                match channel {
                    STDOUT => self.stdout.extend_from_slice(payload),
                    STDERR => self.stderr.extend_from_slice(payload),
                    ERROR => self.status.extend_from_slice(payload),
                    other => return Err(format!("a message on channel {other}")),
                }
                Ok(())
            }
            Ok(Message::Close(_)) => {
                self.ended = true;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                self.ended = true;
                Ok(())
            }
            Err(e) => Err(format!("read the stream: {e}")),
        }
    }
}

/// The exit code a v4 error channel's `metav1.Status` gives: 0 for
/// `Success`, the `ExitCode` cause of a `NonZeroExitCode` failure.
///
/// # Errors
/// A message quoting any other status, or none.
pub fn exit_code(status: &[u8]) -> Result<i32, String> {
    let text = String::from_utf8_lossy(status);
    let value: Value =
        serde_json::from_slice(status).map_err(|_| format!("error channel: {text:?}"))?;
    if value["status"] == "Success" {
        return Ok(0);
    }
    if value["reason"] != "NonZeroExitCode" {
        return Err(format!("error channel: {text}"));
    }
    value["details"]["causes"]
        .as_array()
        .and_then(|causes| causes.iter().find(|cause| cause["reason"] == "ExitCode"))
        .and_then(|cause| cause["message"].as_str())
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("error channel: no exit code in {text}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_exit_code_reads_success_and_non_zero_exit_statuses() {
        assert_eq!(exit_code(br#"{"metadata":{},"status":"Success"}"#), Ok(0));
        let failure = br#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh], exit code 4","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"4"}]}}"#;
        assert_eq!(exit_code(failure), Ok(4));
        let other = br#"{"metadata":{},"status":"Failure","message":"boom"}"#;
        assert!(exit_code(other).unwrap_err().contains("boom"));
        assert!(exit_code(b"").is_err());
    }
}
