// SPDX-License-Identifier: Apache-2.0
//! The shim binary containerd starts. Its command line is containerd's shim
//! protocol (Go-style flags and an action), not one of our own design.

use vmpod_shim::lifecycle::{serve, RUNTIME_ID};

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let action = args.iter().filter_map(|arg| arg.to_str()).any(|arg| {
        matches!(arg, "start" | "delete")
            || arg.trim_start_matches('-') == "info"
            || arg.trim_start_matches('-') == "v"
            || arg.trim_start_matches('-') == "version"
    });
    // One thread: the pod VM is spawned from it and dies with it (its
    // parent-death signal follows the spawning thread).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{RUNTIME_ID}: cannot start: {err}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        if action {
            containerd_shim::asynchronous::run::<vmpod_shim::lifecycle::VmpodShim>(
                RUNTIME_ID, None,
            )
            .await;
        } else if let Err(err) = serve(&args).await {
            eprintln!("{RUNTIME_ID}: {err:#}");
            std::process::exit(1);
        }
    });
}
