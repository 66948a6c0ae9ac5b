// SPDX-License-Identifier: Apache-2.0
//! `vmpod`: install, uninstall and check vmpod on a node, and prepare its
//! pod VM template (docs/install.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vmpod_installer::check;
use vmpod_installer::containerd::Version;
use vmpod_installer::install::{install, InstallOptions};
use vmpod_installer::layout::Root;
use vmpod_installer::restart;
use vmpod_installer::uninstall::uninstall;
use vmpod_shim::config::{Config, DEFAULT_CONFIG_PATH};
use vmpod_shim::pod::{prepare_template, MAX_INTERFACES};

/// vmpod on a node: its files, its registration with containerd, and what
/// the node lacks.
#[derive(Debug, Parser)]
#[command(name = "vmpod", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install the binaries, the guest kernel, the agent initrd and
    /// /etc/vmpod/config.toml, and register the runtime with containerd.
    Install {
        /// Install beneath this directory instead of /.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Restart containerd (systemctl) once installed.
        #[arg(long)]
        restart_containerd: bool,
        /// Take the artifacts from these directories, in order (default:
        /// this executable's directory, the guest kernel's cache, target/).
        #[arg(long, value_name = "DIR")]
        from: Vec<PathBuf>,
        /// Once installed, make the template pod VM of one-interface pods
        /// (as prepare-template does); only with --root /.
        #[arg(long)]
        prepare_template: bool,
    },
    /// Remove what install put there and restore the files it changed.
    Uninstall {
        /// Uninstall beneath this directory instead of /.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Restart containerd (systemctl) once uninstalled.
        #[arg(long)]
        restart_containerd: bool,
    },
    /// Report what the node lacks, one line per check; fails if anything does.
    Check {
        /// Check the node beneath this directory instead of /.
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Make the template pod VM of the shape pods get (the config's default
    /// size, N network interfaces) ahead of the first pod, so that the first
    /// pod restores too (docs/shim.md, "Templates").
    PrepareTemplate {
        /// The shim's config file.
        #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// The pods' network interfaces: a CRI pod has one (its CNI's eth0),
        /// a pod without a network namespace none.
        #[arg(
            long,
            default_value_t = 1,
            value_parser = clap::value_parser!(u8).range(0..=MAX_INTERFACES as i64)
        )]
        interfaces: u8,
    },
}

/// The command line, or exit: help and version as clap prints them, an
/// error on one line (status 2).
fn parse_cli() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|err| {
        if !err.use_stderr() {
            err.exit();
        }
        eprintln!(
            "vmpod: {}",
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
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("vmpod: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Install {
            root,
            restart_containerd,
            from,
            prepare_template,
        } => {
            if prepare_template && root != Path::new("/") {
                anyhow::bail!(
                    "install: --prepare-template needs --root / (the template is made on this node)"
                );
            }
            if prepare_template {
                need_root()?;
            }
            run_install(InstallOptions {
                root: Root::new(root),
                from,
                restart_containerd,
            })?;
            if prepare_template {
                run_prepare(Path::new(DEFAULT_CONFIG_PATH), 1)
                    .context("install: vmpod is installed, but")?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall {
            root,
            restart_containerd,
        } => run_uninstall(&Root::new(root), restart_containerd),
        Command::Check { root } => {
            let lines = check::run(&Root::new(root));
            for line in &lines {
                println!("{line}");
            }
            Ok(if check::all_ok(&lines) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::PrepareTemplate { config, interfaces } => {
            need_root()?;
            run_prepare(&config, interfaces.into())
        }
    }
}

/// Templates are made as the shim makes them: as root (network namespaces,
/// taps, the jail).
fn need_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("prepare-template: needs root, as the shim");
    }
    Ok(())
}

/// Makes the template of pods with `interfaces` interfaces under the shim's
/// config at `config`, and says which and where.
fn run_prepare(config: &Path, interfaces: usize) -> anyhow::Result<ExitCode> {
    let config = Config::load(config).context("prepare-template")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("prepare-template: the async runtime")?;
    let prepared = runtime
        .block_on(prepare_template(&config, interfaces))
        .context("prepare-template")?;
    if prepared.made {
        println!(
            "template {}: made in {} ({:.1} s)",
            prepared.key,
            prepared.dir.display(),
            prepared.took.as_secs_f64()
        );
    } else {
        println!(
            "template {}: already in {}",
            prepared.key,
            prepared.dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn run_install(opts: InstallOptions) -> anyhow::Result<()> {
    let installed = install(&opts).context("install")?;
    for entry in &installed.record.files {
        let how = if entry.backup.is_some() {
            "replaced"
        } else {
            "installed"
        };
        println!("{how} {}", entry.path.display());
    }
    let version = match installed.containerd {
        Version::V2 => 2,
        Version::V3 => 3,
    };
    println!("registered the runtime handler vmpod with containerd (config version {version})");
    if opts.restart_containerd {
        println!("restarted containerd");
    }
    Ok(())
}

fn run_uninstall(root: &Root, restart_containerd: bool) -> anyhow::Result<ExitCode> {
    if restart_containerd {
        restart::find(root, "systemctl").context("uninstall: cannot restart containerd")?;
    }
    let done = uninstall(root).context("uninstall")?;
    if !done.was_installed {
        println!(
            "nothing to uninstall under {} (no install record)",
            root.dir().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for path in &done.restored {
        println!("restored {}", path.display());
    }
    for path in &done.removed {
        println!("removed {}", path.display());
    }
    for path in &done.unregistered {
        println!(
            "removed vmpod from {} (changed since install: the other changes kept)",
            path.display()
        );
    }
    for path in &done.kept_dirs {
        println!(
            "kept {} (it holds files vmpod did not install)",
            path.display()
        );
    }
    if restart_containerd {
        restart::restart_containerd(root)
            .context("uninstalled, but restarting containerd failed")?;
        println!("restarted containerd");
    }
    Ok(ExitCode::SUCCESS)
}
