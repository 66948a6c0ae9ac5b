// SPDX-License-Identifier: Apache-2.0
//! The pod VM as the task layer sees it: launched by a pod's first
//! container, stopped after its last. [`Launcher`] and [`PodVm`] are the seam
//! between the Task API and [`Pod`], so that the verbs run against a fake VM
//! in tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use async_trait::async_trait;
use oci_spec::runtime::LinuxResources;
use tokio::sync::watch;
use ttrpc::Code;

use super::error::{launch_status, status};
use super::{lock, Agent, TaskService};
use crate::config::Config;
use crate::pod::{Pod, PodError};
use crate::sizing::{self, VmSize};
use crate::spec::PodSpec;

/// The pod's running VM, as requests need it.
#[derive(Debug, Clone)]
pub struct PodHandle {
    /// The agent in the VM.
    pub agent: Arc<dyn Agent>,
    /// The `vmpod-vm` process: what containerd is told is every task's pid.
    pub vmm_pid: u32,
    /// Set once `vmpod-vm` has ended: how.
    pub vm_exit: watch::Receiver<Option<String>>,
    /// Its vCPUs and memory, which every container of the pod must fit.
    pub size: VmSize,
    /// Set once the shim stops the VM: its end is then expected.
    pub stopping: Arc<AtomicBool>,
    /// The host tmpfs whose binds at `/dev/shm` are the pod's `/dev/shm`
    /// in the guest; none when the pod has none.
    pub shm_source: Option<PathBuf>,
}

impl PodHandle {
    /// Whether the VM ends within `grace`. An agent call that fails
    /// because the VM died fails before the VM is reaped (its channel
    /// closes first): this tells that failure from the agent's own.
    pub async fn vm_ends_within(&self, grace: std::time::Duration) -> bool {
        let mut vm_exit = self.vm_exit.clone();
        tokio::time::timeout(grace, vm_exit.wait_for(Option::is_some))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }
}

/// A launched pod VM.
#[async_trait]
pub trait PodVm: Send + Sync + std::fmt::Debug {
    /// The pod's id (its first container's).
    fn id(&self) -> &str;
    /// The pod's host directory: its share's containers' parts go below
    /// (see [`crate::share`]).
    fn dir(&self) -> PathBuf;
    /// What requests need of the running VM.
    fn handle(&self) -> PodHandle;
    /// Stops the VM and removes what it had on the host. Retry-safe: after
    /// a failure, a second call finishes what the first left.
    ///
    /// # Errors
    /// The pod's directory could not be removed.
    async fn shut_down(&mut self) -> std::io::Result<()>;
}

/// Boots pod VMs.
#[async_trait]
pub trait Launcher: Send + Sync + std::fmt::Debug {
    /// Boots the VM of pod `id` in `namespace`, of `size`, as the `spec` of
    /// its first container says; see [`Pod::launch`].
    ///
    /// # Errors
    /// [`PodError`] naming the step that failed; nothing of the pod is left.
    async fn launch(
        &self,
        config: &Config,
        namespace: &str,
        id: &str,
        size: VmSize,
        spec: &PodSpec,
    ) -> Result<Box<dyn PodVm>, PodError>;
}

/// The real launcher: `vmpod-vm` and the agent in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct VmLauncher;

#[async_trait]
impl Launcher for VmLauncher {
    async fn launch(
        &self,
        config: &Config,
        namespace: &str,
        id: &str,
        size: VmSize,
        spec: &PodSpec,
    ) -> Result<Box<dyn PodVm>, PodError> {
        let pod = Pod::launch(config, namespace, id, size, spec).await?;
        Ok(Box::new(pod))
    }
}

#[async_trait]
impl PodVm for Pod {
    fn id(&self) -> &str {
        &self.id
    }

    fn dir(&self) -> PathBuf {
        self.dir.root.clone()
    }

    fn handle(&self) -> PodHandle {
        PodHandle {
            agent: Arc::new(self.agent.clone()),
            vmm_pid: self.vmm_pid,
            vm_exit: self.vm_exit.clone(),
            size: self.size,
            stopping: self.stopping.clone(),
            shm_source: self.shm_source.clone(),
        }
    }

    async fn shut_down(&mut self) -> std::io::Result<()> {
        Pod::shut_down(self).await
    }
}

/// The pod a create runs in.
pub(super) struct PodForCreate {
    /// Its VM.
    pub(super) handle: PodHandle,
    /// Its host directory.
    pub(super) dir: PathBuf,
    /// Whether this create launched it (and so stops it when it fails).
    pub(super) launched: bool,
}

/// What a create asks of its pod, from the container's spec.
pub(super) struct PodRequest<'a> {
    /// The pod (the CRI sandbox id, or the container's own id).
    pub(super) pod_id: &'a str,
    /// The container being created.
    pub(super) container_id: &'a str,
    /// The container's annotations: what sizes a new pod VM.
    pub(super) annotations: &'a HashMap<String, String>,
    /// The container's limits, which must fit the pod VM.
    pub(super) resources: Option<&'a LinuxResources>,
    /// What a new pod VM is launched with (network, cgroup, hostname).
    pub(super) spec: &'a PodSpec,
}

impl TaskService {
    /// Boots the pod VM if this is the pod's first container; refuses a
    /// container of another pod, one whose pod does not run, and one whose
    /// limits do not fit the pod VM.
    pub(super) async fn pod_for(
        &self,
        request: &PodRequest<'_>,
    ) -> Result<PodForCreate, ttrpc::Error> {
        let PodRequest {
            pod_id,
            container_id,
            annotations,
            resources,
            spec,
        } = *request;
        let refuse = |err: String| status(Code::INVALID_ARGUMENT, err);
        let config = self
            .config
            .as_ref()
            .map_err(|err| status(Code::FAILED_PRECONDITION, err))?;
        let mut pod = self.pod.lock().await;
        if let Some(pod) = pod.as_ref() {
            if pod.id() != pod_id {
                return Err(status(
                    Code::INVALID_ARGUMENT,
                    format!(
                        "container {container_id:?} names pod {pod_id:?}, this shim runs pod {:?}",
                        pod.id()
                    ),
                ));
            }
            let handle = self.handle()?;
            sizing::check_fits(container_id, handle.size, resources).map_err(refuse)?;
            return Ok(PodForCreate {
                handle,
                dir: pod.dir(),
                launched: false,
            });
        }
        if pod_id != container_id {
            return Err(status(
                Code::NOT_FOUND,
                format!("container {container_id:?} names pod {pod_id:?}, which does not run"),
            ));
        }
        let size = sizing::vm_size(config.size_limits(), annotations, resources).map_err(refuse)?;
        sizing::check_fits(container_id, size, resources).map_err(refuse)?;
        let launched = self
            .launcher
            .launch(config, &self.namespace, pod_id, size, spec)
            .await
            .map_err(launch_status)?;
        let handle = launched.handle();
        let dir = launched.dir();
        *pod = Some(launched);
        *lock(&self.handle) = Some(handle.clone());
        self.watch_pod(&handle);
        Ok(PodForCreate {
            handle,
            dir,
            launched: true,
        })
    }

    /// Stops the pod VM and removes its directory. Called on the last delete
    /// and when the shim is told to stop. The pod is kept when its removal
    /// fails, so that a retried Delete finishes it.
    ///
    /// # Errors
    /// The pod's directory could not be removed (also logged).
    pub async fn shut_down_pod(&self) -> std::io::Result<()> {
        let mut pod = self.pod.lock().await;
        lock(&self.handle).take();
        let Some(running) = pod.as_mut() else {
            return Ok(());
        };
        if let Err(err) = running.shut_down().await {
            tracing::warn!(pod = running.id(), "removing the pod's directory: {err}");
            return Err(err);
        }
        *pod = None;
        Ok(())
    }
}
