// SPDX-License-Identifier: Apache-2.0
//! `./run.sh`, vmpod's main job: a command in a busybox container in its own
//! pod VM, through the real containerd with the vmpod runtime, on this
//! terminal. It starts a private containerd (its own root, state and
//! socket, as the tests do), imports a busybox image built from Debian's
//! `busybox-static`, and runs `ctr run --rm --runtime io.containerd.vmpod.v2`
//! with the arguments as the command (an interactive `sh` on a terminal by
//! default, `uname -a` otherwise). The pod's console and logs are kept in
//! the printed directory until the run ends.

use std::io::IsTerminal;
use std::process::ExitCode;

use vmpod_integration_tests::containerd::{Containerd, RUNTIME};
use vmpod_integration_tests::host_faults::{pod_console, ConsoleWatch};

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pod_run: {err}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode, String> {
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let mut command: Vec<String> = std::env::args().skip(1).collect();
    if command.is_empty() {
        command = if terminal {
            vec!["sh".into()]
        } else {
            vec!["uname".into(), "-a".into()]
        };
    }

    let work = std::env::temp_dir().join(format!("vmpod-run-{}", std::process::id()));
    let mut containerd = Containerd::with_vmpod_shim(&work, "", true)?;
    let image = containerd.import_busybox()?;
    let console = pod_console(&work.join("pods"), "vmpod-run");
    eprintln!(
        "pod_run: booting a pod VM for {command:?} (about a minute where guest CPL0 is emulated); \
         its console: {}",
        console.display()
    );
    // Followed while the pod lives: `--rm` removes its directory.
    let watch = ConsoleWatch::start(&console);
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
    if terminal {
        args.push("-t");
    }
    args.extend([image.as_str(), "vmpod-run"]);
    args.extend(command.iter().map(String::as_str));
    let status = containerd
        .ctr_command(&args)
        .status()
        .map_err(|e| format!("ctr: {e}"))?;
    if let Some(fault) = watch.fault(status.code()) {
        eprintln!(
            "pod_run: the command died of the host fault some KVM hosts show ({fault}; \
             docs/kvm-hosts.md, \"Known host faults\"): run it again"
        );
    }
    containerd.stop()?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(status
        .code()
        .and_then(|code| u8::try_from(code).ok())
        .map_or(ExitCode::FAILURE, ExitCode::from))
}
