// SPDX-License-Identifier: Apache-2.0
//! The shim binary containerd starts. Its command line is containerd's shim
//! protocol (Go-style flags and an action), not one of our own design.

use std::ffi::OsString;
use std::io::{Read, Write};

use vmpod_shim::lifecycle::{self, RUNTIME_ID};

/// containerd's own bound on what it pipes to `start`.
const MAX_START_INPUT: u64 = 10 << 20;

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    // One thread: the pod VM is spawned from it and dies with it (its
    // parent-death signal follows the spawning thread).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => fail(err),
    };
    let flags = match containerd_shim::parse(&args) {
        Ok(flags) => flags,
        Err(err) => fail(err),
    };
    let result = runtime.block_on(async {
        match flags.action.as_str() {
            "start" => {
                let mut input = Vec::new();
                std::io::stdin()
                    .take(MAX_START_INPUT)
                    .read_to_end(&mut input)?;
                if lifecycle::is_bootstrap(&input, &flags) {
                    // containerd ≥ 2.3: the crate answers the handshake; it
                    // reads the message from stdin again.
                    refeed_stdin(input)?;
                    run_through_crate().await;
                } else {
                    let address = lifecycle::start_legacy(&flags, &input).await?;
                    std::io::stdout().write_all(address.as_bytes())?;
                }
                Ok(())
            }
            "delete" => {
                run_through_crate().await;
                Ok(())
            }
            _ if flags.info || flags.version => {
                run_through_crate().await;
                Ok(())
            }
            _ => lifecycle::serve(&args).await.map_err(anyhow::Error::from),
        }
    });
    if let Err(err) = result {
        fail(err);
    }
}

async fn run_through_crate() {
    containerd_shim::asynchronous::run::<lifecycle::VmpodShim>(RUNTIME_ID, None).await;
}

/// Puts `input` back on stdin through a pipe.
fn refeed_stdin(input: Vec<u8>) -> std::io::Result<()> {
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills the two-element array.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fds[0] is the pipe's read end, just made; stdin is replaced by it.
    if unsafe { libc::dup2(fds[0], libc::STDIN_FILENO) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are ours; the write end moves into the File.
    let mut writer = unsafe {
        libc::close(fds[0]);
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1])
    };
    // A thread, so that input larger than the pipe's buffer cannot block us.
    std::thread::spawn(move || {
        let _ = writer.write_all(&input);
    });
    Ok(())
}

fn fail(err: impl std::fmt::Display) -> ! {
    eprintln!("{RUNTIME_ID}: {err:#}");
    std::process::exit(1);
}
