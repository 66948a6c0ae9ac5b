// SPDX-License-Identifier: Apache-2.0
//! Starting a pod's VM up to its agent serving: restored from the template
//! of its shape when there is one, else booted cold — and then, with
//! templates on, snapshotted as that shape's template before it becomes the
//! pod's (before CreateSandbox: the guest has not mounted the share yet,
//! and holds nothing of any pod). A failed restore falls back to a cold
//! boot with one warning and removes the template (the cold boot makes
//! it anew); a failed snapshot is a warning, and one that ended the VM
//! boots it cold again: neither fails the pod.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vmpod_agent_api::{AgentClient, AGENT_VSOCK_PORT, API_VERSION};

use super::jail::{self, Launch, VmPaths};
use super::logs::tail;
use super::prune;
use super::template::{self, Template, TemplateError, TemplateInputs};
use super::{spawn_vmm, vm_api, vmm_command, PodDir, PodError, PodLaunch, Vmm, CONNECT_RETRY};
use crate::config::Config;
use crate::network::PodNetwork;
use crate::sizing::VmSize;

/// How long a restored VM's agent may take to answer before the restore
/// counts as failed and the VM boots cold (a restore that works answers
/// in well under a second on hardware-virtualised hosts, a few seconds
/// where the guest kernel is emulated).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);

/// A pod VM whose agent serves and speaks this shim's API version.
pub(super) struct Booted {
    pub(super) agent: AgentClient,
    pub(super) vmm: Vmm,
}

/// Starts the pod's VM — restored from its shape's template, or booted
/// cold (leaving a template with templates on) — and waits for its agent.
/// A VM that fails is stopped.
///
/// # Errors
/// The cold boot's [`PodError`].
pub(super) async fn boot(pod: PodLaunch<'_>) -> Result<Booted, PodError> {
    let PodLaunch {
        config,
        id,
        dir,
        size,
        network,
        ..
    } = pod;
    let template = match &config.templates {
        Some(templates) => find(config, templates, id, size, network).await,
        None => None,
    };
    if let Some(template) = template.as_ref().filter(|template| template.exists()) {
        match restore(pod, template).await {
            Ok(booted) => return Ok(booted),
            Err(why) => tracing::warn!(
                pod = id,
                template = %template.key,
                "restoring the pod VM from its template failed, booting it cold: {why}"
            ),
        }
    }
    // The VM becomes the template unless there is one, or another pod
    // is making it.
    let making = template
        .filter(|template| !template.exists())
        .and_then(|template| Some((template.claim()?, template)));
    let launch = match making {
        Some(_) => Launch::ColdWithApi,
        None => Launch::Cold,
    };
    let booted = boot_cold(pod, launch).await?;
    let Some((claim, template)) = making else {
        return Ok(booted);
    };
    if template.exists() {
        return Ok(booted);
    }
    let key = template.key.clone();
    let started = Instant::now();
    match make_template(pod, &booted.agent, template).await {
        Ok(true) => tracing::info!(
            pod = id,
            template = %key,
            seconds = started.elapsed().as_secs_f64(),
            "template made of the pod VM"
        ),
        Ok(false) => tracing::info!(
            pod = id,
            template = %key,
            "another pod made the template first; this pod's snapshot is dropped"
        ),
        Err(why) => {
            tracing::warn!(pod = id, template = %key, "no template made: {why}");
            drop(claim);
            // A snapshot that ended the VM leaves no VM for the pod: it
            // boots cold once more, without making a template.
            if let Some(status) = ended_within(&booted.vmm, VM_END_GRACE).await {
                tracing::warn!(
                    pod = id,
                    template = %key,
                    "the pod VM ended while it was snapshotted ({status}); its log ends: {}; \
                     booting it cold again",
                    tail(&dir.vmm_log()).unwrap_or_default()
                );
                stop_for_another_launch(booted.vmm, dir).await;
                return boot_cold(pod, Launch::Cold).await;
            }
        }
    }
    Ok(booted)
}

/// Boots the pod's VM cold and waits for its agent; a VM whose agent does
/// not serve is stopped.
async fn boot_cold(pod: PodLaunch<'_>, launch: Launch<'_>) -> Result<Booted, PodError> {
    let PodLaunch {
        config, id, dir, ..
    } = pod;
    let command = vmm_command(pod, launch).map_err(|e| *e)?;
    let vmm = spawn_vmm(command, pod).map_err(|e| *e)?;
    match wait_for_agent(id, dir, &vmm, config.agent_timeout).await {
        Ok(agent) => Ok(Booted { agent, vmm }),
        Err(err) => {
            stop(vmm).await;
            Err(err)
        }
    }
}

/// The template of the pod VM's shape in `templates`; `None` (with a
/// warning) when its inputs cannot be read — the pod then boots cold.
async fn find(
    config: &Config,
    templates: &Path,
    id: &str,
    size: VmSize,
    network: Option<&PodNetwork>,
) -> Option<Template> {
    let nets = network.map_or(0, |network| network.endpoints.len());
    let (config, templates) = (config.clone(), templates.to_path_buf());
    let found =
        tokio::task::spawn_blocking(move || template_of(&config, &templates, size, nets)).await;
    match found {
        Ok(Ok(template)) => Some(template),
        Ok(Err(err)) => {
            tracing::warn!(
                pod = id,
                "no template: its inputs: {}",
                vmpod_sys::error::chain(&err)
            );
            None
        }
        Err(err) => {
            tracing::warn!(pod = id, "no template: {err}");
            None
        }
    }
}

/// The template in `templates` of a pod VM of `size` with `nets`
/// interfaces (hashing the files it is made of, hence blocking).
///
/// # Errors
/// A file of its inputs cannot be read.
pub(super) fn template_of(
    config: &Config,
    templates: &Path,
    size: VmSize,
    nets: usize,
) -> Result<Template, TemplateError> {
    let inputs = TemplateInputs::of(
        config,
        templates,
        size,
        jail::guest_cmdline(&config.log_level),
        jail::device_kinds(nets),
    )?;
    Ok(Template::new(templates, &inputs))
}

/// Restores the pod's VM from `template` and waits (at most
/// [`RESTORE_TIMEOUT`]) for its agent. On failure the VM is stopped, its
/// sockets and the template removed, and the reason returned, on one line.
async fn restore(pod: PodLaunch<'_>, template: &Template) -> Result<Booted, String> {
    let PodLaunch {
        config, id, dir, ..
    } = pod;
    let started = Instant::now();
    // Held until the agent serves (the template's files are open by then)
    // against pruning; the restore makes it the most recently used.
    let _held = template.hold();
    if let Err(err) = template.touch() {
        tracing::warn!(pod = id, template = %template.key, "{}", vmpod_sys::error::chain(&err));
    }
    let launch = Launch::Restore(&template.dir);
    let command = vmm_command(pod, launch).map_err(|err| vmpod_sys::error::chain(&*err))?;
    let vmm = spawn_vmm(command, pod).map_err(|err| vmpod_sys::error::chain(&*err))?;
    // Its end while restoring is this function's to report, once.
    vmm.quiet.store(true, Ordering::SeqCst);
    let deadline = RESTORE_TIMEOUT.min(config.agent_timeout);
    let err = match wait_for_agent(id, dir, &vmm, deadline).await {
        Ok(agent) => {
            vmm.quiet.store(false, Ordering::SeqCst);
            tracing::info!(
                pod = id,
                template = %template.key,
                seconds = started.elapsed().as_secs_f64(),
                "pod VM restored from its template"
            );
            return Ok(Booted { agent, vmm });
        }
        Err(err) => err,
    };
    stop_for_another_launch(vmm, dir).await;
    let refused = template::refusal(&dir.vmm_log());
    let mut why = match (&err, &refused) {
        (_, Some(line)) => format!("vmpod-vm refused it: {line}"),
        (PodError::Timeout { .. }, None) => {
            format!("its agent did not answer within {} s", deadline.as_secs())
        }
        (err, None) => vmpod_sys::error::chain(err),
    };
    // A template that failed once, refused or too slow, would cost every
    // later pod the same wait: it goes, and this pod's cold boot makes it
    // anew.
    match template.remove() {
        Ok(()) => why.push_str("; the template is removed"),
        Err(err) => why.push_str(&format!(
            "; removing the template: {}",
            vmpod_sys::error::chain(&err)
        )),
    }
    Err(why)
}

/// How long a VM that dropped its API connection may take to be seen
/// ended.
const VM_END_GRACE: Duration = Duration::from_secs(2);

/// How the VM ended, if it does within `grace`.
async fn ended_within(vmm: &Vmm, grace: Duration) -> Option<String> {
    let mut exit = vmm.exit.clone();
    let ended = tokio::time::timeout(grace, exit.wait_for(Option::is_some)).await;
    match ended {
        Ok(Ok(status)) => status.clone(),
        _ => None,
    }
}

/// Stops a VM that failed the pod and removes the sockets it leaves
/// behind, which would stop the pod's next `vmpod-vm` from binding them.
async fn stop_for_another_launch(vmm: Vmm, dir: &PodDir) {
    stop(vmm).await;
    for socket in [dir.vsock(), dir.api_socket()] {
        let _ = std::fs::remove_file(socket);
    }
}

/// Stops a VM and waits for its end.
pub(super) async fn stop(vmm: Vmm) {
    let _ = vmm.kill.send(());
    let mut exit = vmm.exit;
    let _ = exit.wait_for(Option::is_some).await;
}

/// Has the cold-booted VM's agent do ahead the guest kernel work its
/// restored pods would repeat (PrepareTemplate: the pod's device program,
/// a pod's cgroups; a failure is a warning), pauses the VM, has it
/// snapshot itself into the pod's sockets' directory, resumes it, and
/// moves the snapshot into place as `template`; then prunes the templates
/// beyond `template-max`. Returns whether this VM's snapshot became the
/// template (`false`: another's did first), or why it failed, on one line.
pub(super) async fn make_template(
    pod: PodLaunch<'_>,
    agent: &AgentClient,
    template: Template,
) -> Result<bool, String> {
    let PodLaunch {
        config,
        id,
        dir,
        device_rules,
        ..
    } = pod;
    if let Err(err) = agent.prepare_template(device_rules.to_vec()).await {
        tracing::warn!(
            pod = id,
            "the template is not prepared (its restored pods will redo that work): {}",
            vmpod_sys::error::chain(&err)
        );
    }
    let (socket, snapshot) = (dir.api_socket(), dir.snapshot());
    let seen_by_vm = match config.jail {
        Some(_) => VmPaths::jail().snapshot,
        None => snapshot.clone(),
    };
    let key = template.key.clone();
    let templates = template.dir.parent().map(Path::to_path_buf);
    let made = tokio::task::spawn_blocking(move || {
        if let Err(err) = vm_api::snapshot(&socket, &seen_by_vm) {
            let _ = std::fs::remove_dir_all(&snapshot);
            return Err(format!("snapshot: {}", vmpod_sys::error::chain(&err)));
        }
        template
            .keep(&snapshot)
            .map_err(|err| vmpod_sys::error::chain(&err))
    })
    .await
    .unwrap_or_else(|err| Err(err.to_string()));
    if let (Ok(true), Some(templates)) = (&made, templates) {
        prune(config, id, templates, key).await;
    }
    made
}

/// Removes the templates beyond `template-max` after `kept` was made
/// (see [`prune::prune`]); what fails is a warning.
async fn prune(config: &Config, id: &str, templates: PathBuf, kept: String) {
    let max = config.template_max;
    let sources = [
        config.kernel.clone(),
        config.initrd.clone(),
        config.vmm.clone(),
    ];
    let pruned = tokio::task::spawn_blocking(move || {
        let sources: Vec<&Path> = sources.iter().map(PathBuf::as_path).collect();
        prune::prune(&templates, max, &kept, &sources)
    })
    .await;
    match pruned {
        Ok(Ok(pruned)) => {
            if !pruned.templates.is_empty() {
                tracing::info!(
                    pod = id,
                    max,
                    "removed the least recently used templates: {}",
                    pruned.templates.join(", ")
                );
            }
        }
        Ok(Err(err)) => tracing::warn!(
            pod = id,
            "pruning the templates: {}",
            vmpod_sys::error::chain(&err)
        ),
        Err(err) => tracing::warn!(pod = id, "pruning the templates: {err}"),
    }
}

/// Connects to the agent of a starting VM (bounded by `deadline`) and
/// checks its version.
pub(super) async fn wait_for_agent(
    id: &str,
    dir: &PodDir,
    vmm: &Vmm,
    deadline: Duration,
) -> Result<AgentClient, PodError> {
    let started = Instant::now();
    let agent = loop {
        if let Some(status) = vmm.exit.borrow().clone() {
            return Err(PodError::VmExited {
                pod: id.to_owned(),
                status,
                log: tail(&dir.vmm_log())
                    .or_else(|| tail(&dir.console()))
                    .unwrap_or_default(),
            });
        }
        if let Ok(agent) = AgentClient::connect_hybrid_vsock(&dir.vsock(), AGENT_VSOCK_PORT).await {
            if matches!(agent.check().await, Ok(true)) {
                break agent;
            }
        }
        if started.elapsed() > deadline {
            return Err(PodError::Timeout {
                pod: id.to_owned(),
                seconds: deadline.as_secs(),
                log: tail(&dir.console()).unwrap_or_default(),
            });
        }
        tokio::time::sleep(CONNECT_RETRY).await;
    };
    tracing::info!(
        pod = id,
        seconds = started.elapsed().as_secs_f64(),
        "agent serving"
    );
    let version = agent.version().await.map_err(|source| PodError::Agent {
        pod: id.to_owned(),
        source,
    })?;
    if version.api_version != API_VERSION {
        return Err(PodError::Version {
            pod: id.to_owned(),
            agent: version.api_version,
            shim: API_VERSION,
        });
    }
    Ok(agent)
}
