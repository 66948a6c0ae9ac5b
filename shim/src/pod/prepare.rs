// SPDX-License-Identifier: Apache-2.0
//! Making a template ahead of the first pod (`vmpod prepare-template`), so
//! that the first pod of the shape restores too. The VM is booted as a
//! pod's would be, in a pod directory under `<state-dir>/.prepare/` (no
//! containerd namespace starts with a dot), with as many interfaces as the
//! pods will have: taps joined to veths in a network namespace of its own
//! (their peers in another), which lives only as long as this process holds
//! it (and the VM its taps). The VM is snapshotted once its agent serves
//! and stopped; nothing of it is left, whether that worked or not (the
//! directory of a run that was killed is removed by the next).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rtnetlink::{LinkUnspec, LinkVeth};

use super::boot::{make_template, stop, template_of, wait_for_agent};
use super::jail::{kill_jail_leftovers, Launch};
use super::logs::forward_agent_logs;
use super::template::{Template, TemplateError};
use super::{
    host_error, listen, spawn_vmm, tear_down_network, vmm_command, PodDir, PodError, PodLaunch,
};
use crate::config::Config;
use crate::network::{netns, NetworkError, PodNetwork};
use crate::sizing::{vm_size, VmSize};
use crate::spec::BASE_DEVICE_RULES;

/// The namespace of the pod directories of templates being prepared.
pub const PREPARE_NAMESPACE: &str = ".prepare";
/// The most interfaces a template may be prepared with.
pub const MAX_INTERFACES: usize = 16;

/// A template made or found by [`prepare_template`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Its key.
    pub key: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Whether this call made it (`false`: it was there already).
    pub made: bool,
    /// How long making it took.
    pub took: Duration,
}

/// Why no template could be prepared; print it with
/// [`vmpod_sys::error::chain`].
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The configuration turns templates off.
    #[error("templates are off (templates = false in the config)")]
    Off,
    /// More interfaces than a template may have.
    #[error("{interfaces} interfaces: at most {MAX_INTERFACES}")]
    Interfaces {
        /// The number asked for.
        interfaces: usize,
    },
    /// The template's inputs (kernel, initrd, vmpod-vm) cannot be read.
    #[error("the template's inputs")]
    Inputs(#[source] TemplateError),
    /// Another process is making this template now.
    #[error("template {key}: another pod or prepare-template is making it")]
    Busy {
        /// The template's key.
        key: String,
    },
    /// The throwaway network namespace or a link in it cannot be made.
    #[error("a network namespace for the template's VM: {what}")]
    Namespace {
        /// The step.
        what: String,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
    /// An interface of the namespace cannot be made.
    #[error("a network namespace for the template's VM: {link}")]
    Link {
        /// The link's name.
        link: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// The taps of the template's VM cannot be set up.
    #[error("the template's VM network")]
    Network(#[source] NetworkError),
    /// The VM did not boot to its agent.
    #[error("the template's VM")]
    Pod(#[source] Box<PodError>),
    /// The VM served but its snapshot was not kept.
    #[error("template {key}: not made: {why}")]
    NotMade {
        /// The template's key.
        key: String,
        /// What failed, on one line.
        why: String,
    },
}

/// Makes the template of the pod VMs of `config`'s default size with
/// `interfaces` network interfaces (a CRI pod has one, its CNI's `eth0`),
/// unless it is there already: boots such a VM to its agent, snapshots it
/// (pruning the templates beyond `template-max`) and stops it. Nothing of
/// the VM is left afterwards: no process, pod directory, tap or namespace.
/// Needs root, as the shim.
///
/// # Errors
/// [`PrepareError`] naming what failed.
pub async fn prepare_template(
    config: &Config,
    interfaces: usize,
) -> Result<Prepared, PrepareError> {
    let templates = config.templates.clone().ok_or(PrepareError::Off)?;
    if interfaces > MAX_INTERFACES {
        return Err(PrepareError::Interfaces { interfaces });
    }
    let size = default_size(config);
    let shape = config.clone();
    let template =
        tokio::task::spawn_blocking(move || template_of(&shape, &templates, size, interfaces))
            .await
            .unwrap_or_else(|err| {
                Err(TemplateError::Io {
                    what: "hash the inputs of",
                    path: "the template".to_owned(),
                    source: std::io::Error::other(err),
                })
            })
            .map_err(PrepareError::Inputs)?;
    let started = Instant::now();
    let found = |made| Prepared {
        key: template.key.clone(),
        dir: template.dir.clone(),
        made,
        took: started.elapsed(),
    };
    if template.exists() {
        return Ok(found(false));
    }
    let claim = template.claim().ok_or_else(|| PrepareError::Busy {
        key: template.key.clone(),
    })?;
    if template.exists() {
        return Ok(found(false));
    }
    remove_leftovers(&config.state_dir);
    let id = format!("template-{}", std::process::id());
    let dir = PodDir::new(&config.state_dir, PREPARE_NAMESPACE, &id);
    if dir.root.exists() {
        return Err(PrepareError::Pod(Box::new(PodError::Exists {
            pod: id,
            path: dir.root.display().to_string(),
        })));
    }
    dir.create(config.share_limits)
        .map_err(|err| PrepareError::Pod(Box::new(host_error(&id, "create", &dir.root)(err))))?;
    let made = in_namespace(config, &id, &dir, size, interfaces, template.clone()).await;
    let _ = dir.remove();
    drop(claim);
    match made {
        Ok(true) => Ok(found(true)),
        // Another's snapshot took the place first: it is there.
        Ok(false) => Ok(found(false)),
        Err(err) => Err(err),
    }
}

/// Removes the pod directories of prepare-template runs that were killed
/// (their VMs died with them: parent-death signal): those named after a
/// process that is gone.
fn remove_leftovers(state_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(state_dir.join(PREPARE_NAMESPACE)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let pid = name
            .strip_prefix("template-")
            .and_then(|pid| pid.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let dir = PodDir::new(state_dir, PREPARE_NAMESPACE, name);
            let _ = kill_jail_leftovers(&dir);
            let _ = dir.remove();
        }
    }
}

/// The size a pod whose sandbox asks for nothing gets.
fn default_size(config: &Config) -> VmSize {
    vm_size(config.size_limits(), &HashMap::new(), None).unwrap_or(VmSize {
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
    })
}

/// [`boot_and_snapshot`] in a namespace of its own with `interfaces`
/// veths (none: no namespace, as a pod without one) whose peers are in a
/// second namespace; both namespaces are gone when this returns.
async fn in_namespace(
    config: &Config,
    id: &str,
    dir: &PodDir,
    size: VmSize,
    interfaces: usize,
    template: Template,
) -> Result<bool, PrepareError> {
    if interfaces == 0 {
        return boot_and_snapshot(config, id, dir, size, None, template).await;
    }
    let unshare = |_| {
        new_namespace().map_err(|source| PrepareError::Namespace {
            what: "unshare".to_owned(),
            source,
        })
    };
    let (namespace, peers) = (unshare(())?, unshare(())?);
    add_interfaces(&namespace, &peers, interfaces).await?;
    // The VMM (or its jailer) opens the namespace by this path: this
    // process's descriptor, which it holds until the VM is gone.
    let path = PathBuf::from(format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        namespace.as_raw_fd()
    ));
    let network = PodNetwork::set_up(&path)
        .await
        .map_err(PrepareError::Network)?;
    let made = boot_and_snapshot(config, id, dir, size, Some(&network), template).await;
    tear_down_network(id, Some(&network)).await;
    drop((namespace, peers));
    made
}

/// A new network namespace, held by the returned file only (a thread
/// unshares into it and ends).
fn new_namespace() -> std::io::Result<File> {
    std::thread::spawn(|| {
        // SAFETY: unshare moves only this thread, which ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
}

/// Adds `eth0`.. (up) to `namespace`, each a veth whose other end is in
/// `peers`: what the shim carries into the VM as a CNI's interfaces.
async fn add_interfaces(
    namespace: &File,
    peers: &File,
    interfaces: usize,
) -> Result<(), PrepareError> {
    let netlink = |namespace| {
        netns::netlink(namespace).map_err(|source| PrepareError::Namespace {
            what: "netlink".to_owned(),
            source,
        })
    };
    let (pod, peer) = (netlink(namespace)?, netlink(peers)?);
    for n in 0..interfaces {
        let (link, peer_link) = (format!("eth{n}"), format!("peer{n}"));
        let failed = |step: &str| {
            let link = format!("{link} ({step})");
            move |source| PrepareError::Link { link, source }
        };
        peer.link()
            .add(LinkVeth::new(&link, &peer_link).build())
            .execute()
            .await
            .map_err(failed("add"))?;
        peer.link()
            .set(
                LinkUnspec::new_with_name(&link)
                    .setns_by_fd(namespace.as_raw_fd())
                    .build(),
            )
            .execute()
            .await
            .map_err(failed("move"))?;
        peer.link()
            .set(LinkUnspec::new_with_name(&peer_link).up().build())
            .execute()
            .await
            .map_err(failed("bring its peer up"))?;
        pod.link()
            .set(LinkUnspec::new_with_name(&link).up().build())
            .execute()
            .await
            .map_err(failed("bring up"))?;
    }
    Ok(())
}

/// Boots the VM as a pod's (its agent's log socket too: the template is of
/// a VM that has connected it), makes it the template and stops it.
async fn boot_and_snapshot(
    config: &Config,
    id: &str,
    dir: &PodDir,
    size: VmSize,
    network: Option<&PodNetwork>,
    template: Template,
) -> Result<bool, PrepareError> {
    let pod = |err: PodError| PrepareError::Pod(Box::new(err));
    let log_socket = dir.log_socket();
    let logs =
        listen(&log_socket).map_err(|err| pod(host_error(id, "listen on", &log_socket)(err)))?;
    let forwarding = tokio::spawn(forward_agent_logs(logs, id.to_owned()));
    let launch = PodLaunch {
        config,
        id,
        dir,
        size,
        network,
        cgroup: None,
        device_rules: BASE_DEVICE_RULES,
    };
    let command = vmm_command(launch, Launch::ColdWithApi).map_err(|err| pod(*err))?;
    let vmm = spawn_vmm(command, launch).map_err(|err| pod(*err))?;
    let made = match wait_for_agent(id, dir, &vmm, config.agent_timeout).await {
        Ok(agent) => {
            let key = template.key.clone();
            make_template(launch, &agent, template)
                .await
                .map_err(|why| PrepareError::NotMade { key, why })
        }
        Err(err) => Err(pod(err)),
    };
    stop(vmm).await;
    forwarding.abort();
    made
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_the_directories_of_killed_runs_are_removed() {
        let state = std::env::temp_dir().join(format!("vmpod-prepare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let prepare = state.join(PREPARE_NAMESPACE);
        // No pid is above the kernel's limit (at most 2^22).
        let killed = prepare.join("template-4294967295");
        let running = prepare.join(format!("template-{}", std::process::id()));
        let other = prepare.join("notes");
        for dir in [&killed, &running, &other] {
            std::fs::create_dir_all(dir.join("run")).unwrap();
            std::fs::write(dir.join("vmm.log"), b"log").unwrap();
        }
        remove_leftovers(&state);
        assert!(!killed.exists(), "a killed run's directory stays");
        assert!(running.exists() && other.exists());
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn test_the_shape_is_the_default_size_of_a_pod_asking_for_nothing() {
        let config = Config {
            vcpus: 2,
            max_vcpus: 4,
            memory_mib: 384,
            max_memory_mib: 2048,
            templates: Some("/s/.templates".into()),
            ..Config::for_tests(
                Path::new("/k"),
                Path::new("/i"),
                Path::new("/vmpod-vm"),
                Path::new("/s"),
            )
        };
        assert_eq!(
            default_size(&config),
            VmSize {
                vcpus: 2,
                memory_mib: 384
            }
        );
    }
}
