// SPDX-License-Identifier: Apache-2.0
//! A process's stdio: containerd's FIFOs on the host copied to and from the
//! process's streams in the agent. Output is pulled from the agent and
//! written to the FIFO, so a reader that stops reading stops the process's
//! writes; input is pushed until containerd closes it (CloseIO).

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use vmpod_agent_api::ProcessId;

use crate::task::Agent;

/// The most one read from the agent asks for.
const READ_CHUNK: u32 = 64 * 1024;

/// containerd's FIFO paths for one process (empty: not wanted).
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    /// The process's input.
    pub stdin: String,
    /// Its output.
    pub stdout: String,
    /// Its error output (unused with a terminal, which carries both).
    pub stderr: String,
    /// One terminal instead of three streams.
    pub terminal: bool,
}

/// The copies of one running process.
#[derive(Debug)]
pub struct Copies {
    output: Vec<JoinHandle<()>>,
    stdin: Option<JoinHandle<()>>,
    close_stdin: Arc<Notify>,
}

/// Failures of opening containerd's FIFOs.
#[derive(Debug, thiserror::Error)]
#[error("open {path}")]
pub struct OpenError {
    /// The FIFO that could not be opened.
    path: String,
    /// The system's reason.
    source: std::io::Error,
}

impl Copies {
    /// Opens the FIFOs and starts copying between them and `process` in the agent.
    ///
    /// # Errors
    /// A FIFO cannot be opened.
    pub fn start(
        agent: &Arc<dyn Agent>,
        process: &ProcessId,
        paths: &StdioPaths,
    ) -> Result<Copies, OpenError> {
        // Opened read-write, a FIFO neither waits for nor loses its other end:
        // containerd's client may attach after the process started.
        let opened = |path: &str| -> Result<Option<pipe::Sender>, OpenError> {
            if path.is_empty() {
                return Ok(None);
            }
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(path)
                .map(Some)
                .map_err(|source| OpenError {
                    path: path.to_owned(),
                    source,
                })
        };
        let stdout = opened(&paths.stdout)?;
        let stderr = if paths.terminal {
            None
        } else {
            opened(&paths.stderr)?
        };
        let stdin = if paths.stdin.is_empty() {
            None
        } else {
            Some(
                pipe::OpenOptions::new()
                    .read_write(true)
                    .open_receiver(&paths.stdin)
                    .map_err(|source| OpenError {
                        path: paths.stdin.clone(),
                        source,
                    })?,
            )
        };

        let mut output = vec![tokio::spawn(copy_output(
            agent.clone(),
            process.clone(),
            Stream::Stdout,
            stdout,
        ))];
        if !paths.terminal {
            output.push(tokio::spawn(copy_output(
                agent.clone(),
                process.clone(),
                Stream::Stderr,
                stderr,
            )));
        }
        let close_stdin = Arc::new(Notify::new());
        let stdin = stdin.map(|fifo| {
            tokio::spawn(copy_input(
                agent.clone(),
                process.clone(),
                fifo,
                close_stdin.clone(),
            ))
        });
        Ok(Copies {
            output,
            stdin,
            close_stdin,
        })
    }

    /// What ends the input once what containerd wrote so far is passed on
    /// (`notify_one`).
    pub fn stdin_closer(&self) -> Arc<Notify> {
        self.close_stdin.clone()
    }

    /// Waits until the process's output is drained (the agent reported the
    /// end of every stream) and stops the input copy.
    pub async fn drain(self) {
        for copy in self.output {
            let _ = copy.await;
        }
        if let Some(stdin) = self.stdin {
            stdin.abort();
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

/// Pulls one output stream from the agent until its end. Without a FIFO the
/// output is read and dropped, so that the process does not block on it.
async fn copy_output(
    agent: Arc<dyn Agent>,
    process: ProcessId,
    stream: Stream,
    mut fifo: Option<pipe::Sender>,
) {
    loop {
        let read = match stream {
            Stream::Stdout => agent.read_stdout(&process, READ_CHUNK).await,
            Stream::Stderr => agent.read_stderr(&process, READ_CHUNK).await,
        };
        let data = match read {
            Ok(data) if !data.is_empty() => data,
            Ok(_) => break,
            Err(err) => {
                tracing::debug!(?process, ?stream, "output ends: {err}");
                break;
            }
        };
        if let Some(writer) = fifo.as_mut() {
            if let Err(err) = writer.write_all(&data).await {
                tracing::warn!(?process, ?stream, "output FIFO: {err}; dropping the rest");
                fifo = None;
            }
        }
    }
}

/// Pushes the FIFO's data to the process until CloseIO, then closes its stdin.
async fn copy_input(
    agent: Arc<dyn Agent>,
    process: ProcessId,
    fifo: pipe::Receiver,
    close: Arc<Notify>,
) {
    let mut buffer = vec![0u8; READ_CHUNK as usize];
    loop {
        tokio::select! {
            ready = fifo.readable() => {
                if ready.is_err() {
                    break;
                }
                match fifo.try_read(&mut buffer) {
                    Ok(0) => break,
                    Ok(len) => {
                        if write_all(agent.as_ref(), &process, &buffer[..len]).await.is_err() {
                            return;
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            _ = close.notified() => {
                // containerd's writer closed before asking: all it wrote is
                // in the FIFO now.
                while let Ok(len) = fifo.try_read(&mut buffer) {
                    if len == 0 || write_all(agent.as_ref(), &process, &buffer[..len]).await.is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
    if let Err(err) = agent.close_stdin(&process).await {
        tracing::debug!(?process, "close stdin: {err}");
    }
}

async fn write_all(
    agent: &dyn Agent,
    process: &ProcessId,
    mut data: &[u8],
) -> Result<(), vmpod_agent_api::ClientError> {
    while !data.is_empty() {
        let written = agent.write_stdin(process, data).await?;
        data = &data[written.min(data.len())..];
        if written == 0 {
            break;
        }
    }
    Ok(())
}
