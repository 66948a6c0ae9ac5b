// SPDX-License-Identifier: Apache-2.0
//! `vmpod-jailer`: runs `vmpod-vm` confined — in the pod's cgroup and
//! network namespace, in new mount, PID, IPC and UTS namespaces, in a
//! per-pod root, as a per-pod uid/gid with only the virtio-fs capabilities,
//! with `NoNewPrivs` — and ends as it ends (the same exit code, or killed by
//! the same signal).
//!
//! Exit status of the jailer's own failures: 2 for usage errors, 1 when the
//! jail cannot be made (one line on stderr saying why).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vmpod_jailer::cgroup::CgroupPath;
use vmpod_jailer::ids::IdRange;
use vmpod_jailer::launch::{self, Ended, JailSpec};
use vmpod_jailer::privileges::Limits;
use vmpod_jailer::root::{Bind, RootSpec};

/// Run vmpod-vm confined: the arguments after `--` are vmpod-vm's, with
/// paths as the jail sees them (the binds' JAIL sides).
#[derive(Debug, Parser)]
#[command(name = "vmpod-jailer", version, about)]
struct Cli {
    /// The vmpod-vm binary (a host path).
    #[arg(long, value_name = "PATH")]
    exec_file: PathBuf,
    /// The directory the jail's root is built on; made if missing, and then
    /// removed when the VM ends.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The uids/gids to lease the jail's id from (uid = gid), none of them 0.
    #[arg(long, value_name = "FIRST-LAST")]
    ids: IdRange,
    /// Where the id leases are kept (one locked file per id in use).
    #[arg(long, value_name = "DIR")]
    lock_dir: PathBuf,
    /// The pod's cgroup: an OCI cgroupsPath (/a/b or slice:prefix:name).
    #[arg(long, value_name = "PATH", value_parser = parse_cgroup)]
    cgroup: Option<CgroupPath>,
    /// The network namespace to run in (a bind-mounted namespace file);
    /// without it, a new one with loopback only.
    #[arg(long, value_name = "PATH")]
    netns: Option<PathBuf>,
    /// A persistent tap of that namespace to give to the jail's uid/gid, so
    /// that vmpod-vm can attach it without CAP_NET_ADMIN; repeat for more.
    #[arg(long, value_name = "NAME")]
    tap: Vec<String>,
    /// A host file or directory bound read-only at JAIL; repeat for more.
    #[arg(long, value_name = "HOST:JAIL")]
    ro_bind: Vec<Bind>,
    /// A host file or directory (with its sub-mounts) bound writable at JAIL
    /// (a read-only mount stays read-only); repeat for more.
    #[arg(long, value_name = "HOST:JAIL")]
    bind: Vec<Bind>,
    /// The VMM's open-file limit.
    #[arg(long, value_name = "N", default_value_t = 65536,
          value_parser = clap::value_parser!(u64).range(64..=1_048_576))]
    open_files: u64,
    /// The VMM's address-space limit in MiB: the guest's RAM and the VMM's own.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(64..=16_777_216))]
    address_space: u64,
    /// vmpod-vm's arguments.
    #[arg(last = true, value_name = "VMPOD-VM ARGS")]
    args: Vec<OsString>,
}

fn parse_cgroup(text: &str) -> Result<CgroupPath, String> {
    CgroupPath::parse(text).map_err(|err| err.to_string())
}

/// The command line, or exit: help and version as clap prints them, an
/// error on one line (clap lists missing flags on lines of their own).
fn parse_cli() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|err| {
        if !err.use_stderr() {
            err.exit();
        }
        eprintln!(
            "{}",
            vmpod_sys::error::first_paragraph(&err.render().to_string())
        );
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    if let Err(message) = check(&cli) {
        eprintln!("vmpod-jailer: error: {message}");
        return ExitCode::from(2);
    }
    let spec = JailSpec {
        exec_file: cli.exec_file,
        args: cli.args,
        ids: cli.ids,
        lock_dir: cli.lock_dir,
        cgroup: cli.cgroup,
        netns: cli.netns,
        taps: cli.tap,
        root: RootSpec {
            dir: cli.root,
            read_only: cli.ro_bind,
            writable: cli.bind,
        },
        limits: Limits {
            open_files: cli.open_files,
            address_space: cli.address_space << 20,
        },
    };
    match launch::run(&spec) {
        Ok(Ended::Exited(code)) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Ok(Ended::Killed(signal)) => die_of(signal),
        Err(err) => {
            eprintln!("vmpod-jailer: error: {}", vmpod_sys::error::chain(&err));
            ExitCode::from(1)
        }
    }
}

/// What the flags name must be there, before anything is made.
fn check(cli: &Cli) -> Result<(), String> {
    let paths = [("--exec-file", &cli.exec_file, false)]
        .into_iter()
        .chain(cli.netns.iter().map(|p| ("--netns", p, false)))
        .chain(cli.ro_bind.iter().map(|b| ("--ro-bind", &b.host, false)))
        .chain(cli.bind.iter().map(|b| ("--bind", &b.host, false)));
    for (flag, path, _) in paths {
        if std::fs::symlink_metadata(path).is_err() {
            return Err(format!(
                "{flag} {}: no such file or directory",
                path.display()
            ));
        }
    }
    for (flag, dir) in [("--root", &cli.root), ("--lock-dir", &cli.lock_dir)] {
        if !dir.is_absolute() {
            return Err(format!("{flag} {}: not an absolute path", dir.display()));
        }
    }
    let mut targets = std::collections::HashSet::new();
    for bind in cli.ro_bind.iter().chain(&cli.bind) {
        if !targets.insert(&bind.jail) {
            return Err(format!(
                "{} is bound twice in the jail",
                bind.jail.display()
            ));
        }
    }
    if let Some(tap) = cli.tap.iter().find(|tap| !vmpod_sys::ifname::is_valid(tap)) {
        return Err(format!("--tap {tap:?}: not an interface name"));
    }
    if cli.args.is_empty() {
        return Err("no vmpod-vm arguments after --".into());
    }
    Ok(())
}

/// Ends the jailer by `signal`, as the VMM ended (without a core dump).
fn die_of(signal: i32) -> ExitCode {
    // SAFETY: resets the signal's action to the default, unblocks it and
    // raises it at this single-threaded process; RLIMIT_CORE 0 first.
    unsafe {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    // A signal whose default is not to end the process.
    ExitCode::from(u8::try_from(128 + signal).unwrap_or(1))
}
