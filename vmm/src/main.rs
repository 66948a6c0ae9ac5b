// SPDX-License-Identifier: Apache-2.0
//! `vmpod-vm`: boots a Linux kernel in a KVM microVM and shows its console.
//!
//! Exit status: 0 when the guest resets or powers off, 1 when the VM or the
//! host fails at run time, 2 for usage and configuration errors, 3 when a
//! thread made a system call its seccomp filter does not allow.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use vmm::api::{parse_address, ApiSocket};
use vmm::arch::cpuid::CpuTemplate;
use vmm::builder::{build_microvm, restore_microvm};
use vmm::config::{
    host_memory_mib, ConfigLayer, DiskConfig, FsConfig, NetConfig, SerialTarget, VsockConfig,
};
use vmm::seccomp::{install_sigsys_handler, set_no_new_privs, SeccompError, SeccompFilters};

/// Exit status for run-time failures (host, KVM, guest).
const EXIT_RUNTIME: u8 = 1;
/// Exit status for usage and configuration errors.
const EXIT_USAGE: u8 = 2;

/// Boot a Linux kernel in a KVM microVM.
#[derive(Debug, Parser)]
#[command(name = "vmpod-vm", version, about)]
struct Cli {
    /// Guest kernel: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initial ramdisk (uncompressed cpio recommended).
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line (replaces the default).
    #[arg(long, value_name = "STR")]
    cmdline: Option<String>,
    /// Number of vCPUs (1-32).
    #[arg(long, value_name = "N")]
    vcpus: Option<u16>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// Serial console: stdout, file:PATH or none.
    #[arg(long, value_name = "TARGET")]
    serial: Option<SerialTarget>,
    /// The most a file console keeps (its newest output), in bytes.
    #[arg(long, value_name = "BYTES")]
    console_max_bytes: Option<u64>,
    /// CPU template; `auto` probes the host.
    #[arg(long, value_name = "NAME")]
    cpu_template: Option<CpuTemplate>,
    /// Give the guest a virtio-rng device (entropy from the host).
    #[arg(long)]
    rng: bool,
    /// A virtio-blk disk from a raw image; repeat for more disks.
    #[arg(long, value_name = "path=IMG[,readonly]")]
    disk: Vec<DiskConfig>,
    /// A virtio-net interface on a host tap; repeat for more.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,create]")]
    net: Vec<NetConfig>,
    /// The virtio-vsock device and its host-side Unix socket.
    #[arg(long, value_name = "cid=N,socket=PATH")]
    vsock: Option<VsockConfig>,
    /// A host directory shared through virtio-fs; repeat for more.
    #[arg(long, value_name = "tag=TAG,dir=DIR[,readonly]")]
    fs: Vec<FsConfig>,
    /// Serve the control API (pause, resume, snapshot, state) on a Unix
    /// socket, created here and removed at exit.
    #[arg(long, value_name = "unix:PATH")]
    api: Option<String>,
    /// Start from the snapshot in DIR instead of booting. The other
    /// settings must describe the VM the snapshot was taken of; the device
    /// back ends (serial, taps, vsock socket, shares) are this launch's.
    #[arg(long, value_name = "DIR")]
    restore: Option<PathBuf>,
    /// TOML file with the same settings (flags override it).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Seccomp filters (seccompiler JSON, one filter per thread: main,
    /// devices, vcpu) instead of the built-in ones.
    #[arg(long, value_name = "FILE", conflicts_with = "no_seccomp")]
    seccomp_filter: Option<PathBuf>,
    /// Run without seccomp filters. UNSAFE: a guest escaping into the VMM
    /// reaches every system call; for debugging and benchmarks only.
    #[arg(long)]
    no_seccomp: bool,
}

impl Cli {
    fn layer(&self) -> ConfigLayer {
        ConfigLayer {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            vcpus: self.vcpus,
            memory: self.memory,
            serial: self.serial.clone(),
            console_max_bytes: self.console_max_bytes,
            cpu_template: self.cpu_template,
            rng: self.rng.then_some(true),
            disk: (!self.disk.is_empty()).then(|| self.disk.clone()),
            net: (!self.net.is_empty()).then(|| self.net.clone()),
            vsock: self.vsock.clone(),
            fs: (!self.fs.is_empty()).then(|| self.fs.clone()),
        }
    }
}

/// The filters the threads will run under, `None` with `--no-seccomp`;
/// with filters, the SIGSYS handler is in place. Sets `NoNewPrivs` either
/// way: vmpod-vm never needs to gain privileges.
fn seccomp_filters(cli: &Cli) -> Result<Option<SeccompFilters>, SeccompError> {
    set_no_new_privs().map_err(SeccompError::NoNewPrivs)?;
    if cli.no_seccomp {
        tracing::warn!("--no-seccomp: the VM runs without seccomp filters");
        return Ok(None);
    }
    let filters = match &cli.seccomp_filter {
        Some(path) => SeccompFilters::from_file(path)?,
        None => SeccompFilters::builtin()?,
    };
    install_sigsys_handler()?;
    Ok(Some(filters))
}

/// The status of a failure: the user's input, or the host.
fn exit_code(input_error: bool) -> u8 {
    if input_error {
        EXIT_USAGE
    } else {
        EXIT_RUNTIME
    }
}

fn fail(code: u8, error: &anyhow::Error) -> ExitCode {
    eprintln!("vmpod-vm: error: {error:#}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let launched = Instant::now();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,fuse_backend_rs=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();

    let file_layer = match &cli.config {
        Some(path) => match ConfigLayer::from_file(path) {
            Ok(layer) => layer,
            Err(e) => return fail(EXIT_USAGE, &e.into()),
        },
        None => ConfigLayer::default(),
    };
    let config = match file_layer
        .overridden_by(cli.layer())
        .validate(host_memory_mib())
    {
        Ok(config) => config,
        Err(e) => return fail(EXIT_USAGE, &e.into()),
    };

    let filters = match seccomp_filters(&cli) {
        Ok(filters) => filters,
        Err(e) => return fail(exit_code(e.is_input_error()), &e.into()),
    };

    // Bound before the VM is built, so that a socket in the way fails the
    // launch early; a launch refused later drops it, which removes it.
    let api = match cli
        .api
        .as_deref()
        .map(|value| parse_address(value).and_then(|path| ApiSocket::bind(&path)))
        .transpose()
    {
        Ok(api) => api,
        Err(e) => return fail(EXIT_USAGE, &e.into()),
    };
    let built = match &cli.restore {
        Some(dir) => restore_microvm(&config, dir, launched),
        None => build_microvm(&config, launched),
    };
    let microvm = match built {
        Ok(microvm) => microvm,
        Err(e) => return fail(exit_code(e.is_input_error()), &e.into()),
    };
    tracing::info!(
        "starting {} vCPU(s), {} MiB, CPU template {}, command line: {}",
        config.vcpus,
        config.memory_mib,
        microvm.cpu_template(),
        microvm.cmdline()
    );
    let running = match microvm.start(filters.as_ref(), api) {
        Ok(running) => running,
        Err(e) => return fail(EXIT_RUNTIME, &e.into()),
    };
    let end = running.wait();
    if end.is_clean() {
        tracing::info!("{end}; exiting");
        ExitCode::SUCCESS
    } else {
        fail(EXIT_RUNTIME, &anyhow::anyhow!(end))
    }
}
