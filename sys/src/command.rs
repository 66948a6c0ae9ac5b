// SPDX-License-Identifier: Apache-2.0
//! Running a command with a deadline, its output captured: the VMM's and
//! the integration tests' runs of `vmpod-vm`, `ctr` and the tools they
//! use, where a hung command must fail the test instead of hanging it.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often the deadline is checked.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code, `None` if killed by a signal.
    pub status: Option<i32>,
    /// Standard output (invalid UTF-8 replaced).
    pub stdout: String,
    /// Standard error (invalid UTF-8 replaced).
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether the deadline killed it.
    pub timed_out: bool,
}

/// Runs `cmd` to completion, or until `timeout` passes and it is killed,
/// with `input` (if any) as its standard input, which is closed after it
/// (without input, standard input is `/dev/null`).
///
/// # Errors
/// The command cannot be spawned, or waited for after it was killed.
pub fn run_with_timeout(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<Outcome> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(mut pipe), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_vec();
        // Not joined: a command that never reads its input must not block
        // us; the write fails once the command is gone.
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let readers = [
        child
            .stdout
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    ]
    .map(|pipe| std::thread::spawn(move || read_lossy(pipe)));
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let [stdout, stderr] = readers.map(|reader| reader.join().unwrap_or_default());
    Ok(Outcome {
        status: status.code(),
        stdout,
        stderr,
        elapsed: start.elapsed(),
        timed_out,
    })
}

/// All of `pipe` as text; what cannot be read is left out.
fn read_lossy(pipe: Option<Box<dyn Read + Send>>) -> String {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn test_output_and_status_are_captured() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            None,
            LONG,
        )
        .unwrap();
        assert_eq!(
            (out.status, out.stdout.as_str(), out.stderr.as_str()),
            (Some(3), "out\n", "err\n")
        );
        assert!(!out.timed_out);
    }

    #[test]
    fn test_input_is_given_then_closed() {
        let out = run_with_timeout(&mut Command::new("cat"), Some(b"to cat\n"), LONG).unwrap();
        assert_eq!((out.status, out.stdout.as_str()), (Some(0), "to cat\n"));
    }

    #[test]
    fn test_without_input_stdin_is_empty() {
        let out = run_with_timeout(&mut Command::new("cat"), None, LONG).unwrap();
        assert_eq!((out.status, out.stdout.as_str()), (Some(0), ""));
    }

    #[test]
    fn test_input_a_command_never_reads_does_not_block() {
        let input = vec![b'x'; 1 << 20];
        let out = run_with_timeout(&mut Command::new("true"), Some(&input), LONG).unwrap();
        assert_eq!(out.status, Some(0));
    }

    #[test]
    fn test_a_command_past_its_deadline_is_killed() {
        let timeout = Duration::from_millis(200);
        let out = run_with_timeout(Command::new("sleep").arg("30"), None, timeout).unwrap();
        assert!(out.timed_out);
        assert_eq!(out.status, None);
        assert!(out.elapsed >= timeout && out.elapsed < LONG, "{out:?}");
    }

    #[test]
    fn test_a_missing_program_is_an_error() {
        let err =
            run_with_timeout(&mut Command::new("/nonexistent/vmpod"), None, LONG).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
