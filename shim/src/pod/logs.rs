// SPDX-License-Identifier: Apache-2.0
//! A pod's logs as the shim reads them: the agent's log lines, which the
//! guest sends over vsock and which are bounded before they reach the
//! shim's log, and the end of a log file quoted in an error message.

use std::path::Path;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::UnixListener;

/// The longest agent log line kept (the guest writes them).
const MAX_LOG_LINE: usize = 8192;
/// Agent log connections served at once.
const MAX_LOG_CONNECTIONS: usize = 4;
/// Agent log lines the shim's log takes in a burst, and then per second.
const LOG_LINES_BURST: u32 = 1000;
const LOG_LINES_PER_SECOND: u32 = 100;
/// How much of a log file's end an error message quotes.
const LOG_TAIL: usize = 300;

/// The end of a log file on one line, for error messages. The guest writes
/// the console, so bytes that are not UTF-8 are shown replaced.
pub(super) fn tail(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let start = bytes.len().saturating_sub(4 * LOG_TAIL);
    let text = String::from_utf8_lossy(bytes.get(start..).unwrap_or_default());
    let text = text.trim_end();
    if text.is_empty() {
        return None;
    }
    let start = text.len().saturating_sub(LOG_TAIL);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    Some(text[start..].replace('\n', " | "))
}

/// Copies the agent's log lines into the shim's log. The guest writes them,
/// so they are bounded: at most [`MAX_LOG_LINE`] bytes a line (the rest of a
/// longer one is dropped), [`MAX_LOG_CONNECTIONS`] connections at a time, and
/// [`LOG_LINES_PER_SECOND`] lines a second after a burst of
/// [`LOG_LINES_BURST`] (what is over is counted and reported, not logged).
pub(super) async fn forward_agent_logs(listener: UnixListener, pod: String) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_LOG_CONNECTIONS));
    let rate = std::sync::Arc::new(std::sync::Mutex::new(LineRate::new(Instant::now())));
    while let Ok((stream, _)) = listener.accept().await {
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(pod, "agent log: too many connections; refusing one");
            continue;
        };
        let pod = pod.clone();
        let rate = rate.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut reader = BufReader::new(stream);
            let mut line = Vec::with_capacity(256);
            loop {
                line.clear();
                match read_bounded_line(&mut reader, &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let admitted = match rate.lock() {
                            Ok(mut rate) => rate.admit(Instant::now()),
                            Err(_) => break,
                        };
                        if let Some(dropped) = admitted.dropped_before {
                            tracing::warn!(pod, "agent: {dropped} log lines dropped (rate limit)");
                        }
                        if admitted.log {
                            let text = String::from_utf8_lossy(&line);
                            tracing::info!(pod, "agent: {}", text.trim_end());
                        }
                    }
                }
            }
        });
    }
}

/// A token bucket over the agent's log lines.
#[derive(Debug)]
struct LineRate {
    tokens: u32,
    refilled: Instant,
    dropped: u64,
}

/// What [`LineRate::admit`] decides for one line.
#[derive(Debug, PartialEq, Eq)]
struct Admitted {
    /// Whether the line is logged.
    log: bool,
    /// Lines dropped since the last logged one, reported before it.
    dropped_before: Option<u64>,
}

impl LineRate {
    fn new(now: Instant) -> Self {
        LineRate {
            tokens: LOG_LINES_BURST,
            refilled: now,
            dropped: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> Admitted {
        let elapsed = now.saturating_duration_since(self.refilled);
        let earned = elapsed.as_millis() * u128::from(LOG_LINES_PER_SECOND) / 1000;
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(LOG_LINES_BURST);
            self.refilled = now;
        }
        if self.tokens == 0 {
            self.dropped += 1;
            return Admitted {
                log: false,
                dropped_before: None,
            };
        }
        self.tokens -= 1;
        let dropped = std::mem::take(&mut self.dropped);
        Admitted {
            log: true,
            dropped_before: (dropped > 0).then_some(dropped),
        }
    }
}

/// Reads one line into `line`, keeping at most [`MAX_LOG_LINE`] bytes of it;
/// returns how many bytes it consumed (0 at the end of the stream).
async fn read_bounded_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut consumed = 0;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(consumed);
        }
        let (chunk, done) = match buffer.iter().position(|&b| b == b'\n') {
            Some(end) => (&buffer[..=end], true),
            None => (buffer, false),
        };
        let room = MAX_LOG_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = chunk.len();
        reader.consume(used);
        consumed += used;
        if done {
            return Ok(consumed);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn test_agent_log_lines_are_bounded() {
        let mut input = vec![b'x'; 3 * MAX_LOG_LINE];
        input.extend_from_slice(b"\nshort\nend");
        let mut reader = BufReader::new(&input[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_bounded_line(&mut reader, &mut line).await.unwrap(),
            3 * MAX_LOG_LINE + 1
        );
        assert_eq!(line.len(), MAX_LOG_LINE);
        line.clear();
        read_bounded_line(&mut reader, &mut line).await.unwrap();
        assert_eq!(line, b"short\n");
        line.clear();
        assert_eq!(read_bounded_line(&mut reader, &mut line).await.unwrap(), 3);
        assert_eq!(line, b"end");
        line.clear();
        assert_eq!(read_bounded_line(&mut reader, &mut line).await.unwrap(), 0);
    }

    #[test]
    fn test_agent_log_lines_over_the_rate_are_counted_not_logged() {
        let start = Instant::now();
        let mut rate = LineRate::new(start);
        for _ in 0..LOG_LINES_BURST {
            assert!(rate.admit(start).log);
        }
        assert!(!rate.admit(start).log);
        assert!(!rate.admit(start).log);
        let later = start + Duration::from_millis(20);
        assert_eq!(
            rate.admit(later),
            Admitted {
                log: true,
                dropped_before: Some(2)
            }
        );
        assert!(rate.admit(later).log);
        assert!(!rate.admit(later).log, "20 ms earn two lines, not more");
    }

    #[test]
    fn test_log_tails_are_one_line() {
        let path = std::env::temp_dir().join(format!("vmpod-tail-{}", std::process::id()));
        std::fs::write(&path, "first\nsecond\n").unwrap();
        assert_eq!(tail(&path).unwrap(), "first | second");
        std::fs::write(&path, "\n").unwrap();
        assert!(tail(&path).is_none());
        std::fs::write(&path, b"guest \xff bytes\n").unwrap();
        assert_eq!(tail(&path).unwrap(), "guest \u{fffd} bytes");
        std::fs::remove_file(&path).unwrap();
    }
}
