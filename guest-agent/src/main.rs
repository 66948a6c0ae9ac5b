// SPDX-License-Identifier: Apache-2.0
//! `vmpod-agent`: PID 1 in the pod VM. It sets up the guest's system file
//! systems, reaps every orphan, and serves the agent API over ttrpc on
//! vsock (or, on a host, on a Unix socket), building the pod's containers
//! in their own namespaces and cgroups.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use vmpod_agent::identity::Machine;
use vmpod_agent::listen::ListenAddress;
use vmpod_agent::logging::LogSink;
use vmpod_agent::reaper::Reaper;
use vmpod_agent::sandbox::{Sandbox, SandboxPaths};
use vmpod_agent::{pid1, server};

/// vmpod's guest agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Where to serve the API: `vsock:PORT` or `unix:PATH`. In the VM the
    /// default is vsock on the port of `vmpod.agent_port=` on the kernel
    /// command line, or 1024.
    #[arg(long)]
    listen: Option<ListenAddress>,
    /// The cgroup v2 directory under which the sandbox's cgroups go.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Where container root file systems are mounted.
    #[arg(long, default_value = "/run/vmpod-agent")]
    state_dir: PathBuf,
    /// The hardware RNG (virtio-rng) whose bytes reseed the guest's random
    /// pool at CreateSandbox.
    #[arg(long, default_value = "/dev/hwrng")]
    hwrng: PathBuf,
}

fn main() {
    // As PID 1 the kernel passes command-line words it does not know as
    // arguments: only take ours into account.
    let is_pid1 = std::process::id() == 1;
    let args = if is_pid1 {
        Args::parse_from(std::env::args().take(1))
    } else {
        Args::parse()
    };
    // As PID 1, the system comes first: the kernel command line (and with
    // it the log port) is readable once /proc is mounted.
    let options = if is_pid1 {
        if let Err(err) = pid1::set_up_system() {
            eprintln!(
                "vmpod-agent: error: setting up the guest: {}",
                vmpod_sys::error::Chain(&err)
            );
            pid1::power_off();
        }
        pid1::KernelOptions::read()
    } else {
        pid1::KernelOptions::default()
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(options.log_level.unwrap_or("info"))
            }),
        )
        .with_writer(LogSink::new(options.log_port))
        .with_ansi(false)
        .init();
    if let Err(err) = run(args, is_pid1, &options) {
        eprintln!("vmpod-agent: error: {err:#}");
        if is_pid1 {
            pid1::power_off();
        }
        std::process::exit(1);
    }
    if is_pid1 {
        pid1::power_off();
    }
}

fn run(args: Args, is_pid1: bool, options: &pid1::KernelOptions) -> anyhow::Result<()> {
    let listen = match args.listen {
        Some(listen) => listen,
        None if is_pid1 => ListenAddress::Vsock(options.agent_port),
        None => anyhow::bail!("--listen is required outside the VM"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        // Orphans and container processes end up as our children.
        pid1::become_subreaper().context("becoming the child subreaper")?;
        let reaper = Arc::new(Reaper::new());
        reaper.start().context("watching SIGCHLD")?;
        let paths = SandboxPaths::new(args.state_dir, args.cgroup_root);
        let sandbox = Sandbox::new(paths, reaper).context("preparing the sandbox")?;
        let machine = Machine {
            hwrng: args.hwrng,
            owned: is_pid1,
        };
        let mut server = server::start(&listen, sandbox.clone(), machine)
            .await
            .with_context(|| format!("serving on {listen}"))?;
        tracing::info!(
            "vmpod-agent {} serving on {listen}",
            env!("CARGO_PKG_VERSION")
        );
        let mut term = signal(SignalKind::terminate()).context("watching SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("watching SIGINT")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        let _ = server.shutdown().await;
        sandbox.destroy().await;
        listen.remove_socket();
        anyhow::Ok(())
    })
}
