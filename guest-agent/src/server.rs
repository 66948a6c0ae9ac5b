// SPDX-License-Identifier: Apache-2.0
//! The ttrpc service: each request checked and handed to the sandbox, each
//! failure returned as a status whose code says whose fault it was and
//! whose message names the problem. The agent keeps serving whatever a
//! request did.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ttrpc::r#async::{Server, TtrpcContext};
use ttrpc::Code;
use vmpod_agent_api::messages as api;
use vmpod_agent_api::service::{create_agent_service, AgentService};

use crate::container::ContainerError;
use crate::identity::{Identity, IdentityError, Machine};
use crate::listen::{ListenAddress, ListenError};
use crate::network::{Network, NetworkError};
use crate::sandbox::{PodSettings, Sandbox, SandboxError};
use crate::stdio::StdioError;

/// How often GetOOMEvent looks at the containers' `memory.events`.
const OOM_POLL: Duration = Duration::from_millis(100);

/// The status for a failed request.
fn status(err: &SandboxError) -> ttrpc::Error {
    let code = match err {
        SandboxError::NoSandbox => Code::FAILED_PRECONDITION,
        SandboxError::SandboxExists(_) | SandboxError::ContainerExists(_) => Code::ALREADY_EXISTS,
        SandboxError::InvalidSandbox(_) => Code::INVALID_ARGUMENT,
        SandboxError::NoContainer(_) => Code::NOT_FOUND,
        SandboxError::Container(err) => match err {
            ContainerError::Id { .. }
            | ContainerError::Json { .. }
            | ContainerError::Plan(_)
            | ContainerError::Rootfs(_)
            | ContainerError::Signal(_) => Code::INVALID_ARGUMENT,
            ContainerError::NoProcess { .. } => Code::NOT_FOUND,
            ContainerError::DuplicateExec { .. } => Code::ALREADY_EXISTS,
            ContainerError::IncorrectStatus { .. }
            | ContainerError::Exited(_)
            | ContainerError::Stdio(StdioError::NoStream(_)) => Code::FAILED_PRECONDITION,
            ContainerError::Cgroup(crate::container::cgroup::CgroupError::NoController {
                ..
            })
            | ContainerError::Cgroup(crate::container::cgroup::CgroupError::UnifiedKey(_))
            | ContainerError::Cgroup(crate::container::cgroup::CgroupError::Value(_)) => {
                Code::INVALID_ARGUMENT
            }
            _ => Code::INTERNAL,
        },
        SandboxError::Cgroup(_) | SandboxError::Os { .. } => Code::INTERNAL,
    };
    let message = vmpod_sys::error::chain(err);
    tracing::info!("request failed: {message}");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn stdio_status(err: StdioError) -> ttrpc::Error {
    status(&SandboxError::Container(ContainerError::Stdio(err)))
}

fn invalid(message: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(Code::INVALID_ARGUMENT, message))
}

/// The status for a failed network request.
fn network_status(err: &NetworkError) -> ttrpc::Error {
    let code = match err {
        NetworkError::Invalid(_) => Code::INVALID_ARGUMENT,
        NetworkError::NoInterface(_) | NetworkError::NoDevice(_) => Code::NOT_FOUND,
        NetworkError::Netlink { .. } => Code::FAILED_PRECONDITION,
        NetworkError::Socket(_) => Code::INTERNAL,
    };
    let message = vmpod_sys::error::chain(err);
    tracing::info!("request failed: {message}");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

/// The status for a guest that could not be made the pod's.
fn identity_status(err: &IdentityError) -> ttrpc::Error {
    let code = match err {
        IdentityError::Network(err) => return network_status(err),
        IdentityError::Invalid(_) => Code::INVALID_ARGUMENT,
        IdentityError::NoEntropy { .. } => Code::FAILED_PRECONDITION,
        IdentityError::Os { .. } => Code::INTERNAL,
    };
    let message = vmpod_sys::error::chain(err);
    tracing::info!("request failed: {message}");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

/// The agent's service.
#[derive(Debug)]
struct Agent {
    sandbox: Arc<Sandbox>,
    network: Network,
    machine: Machine,
}

type Reply<T> = ttrpc::Result<T>;

#[async_trait]
impl AgentService for Agent {
    async fn check(&self, _: &TtrpcContext, _: api::CheckRequest) -> Reply<api::CheckResponse> {
        let mut reply = api::CheckResponse::new();
        reply.serving = true;
        Ok(reply)
    }

    async fn version(
        &self,
        _: &TtrpcContext,
        _: api::VersionRequest,
    ) -> Reply<api::VersionResponse> {
        let mut reply = api::VersionResponse::new();
        reply.agent_version = env!("CARGO_PKG_VERSION").to_owned();
        reply.api_version = vmpod_agent_api::API_VERSION;
        Ok(reply)
    }

    async fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: api::CreateSandboxRequest,
    ) -> Reply<api::Empty> {
        // The identity is checked and virtio-rng read before anything
        // changes, and applied once the sandbox is set up (its hostname
        // checked), before CreateSandbox returns: no container can run on
        // a template's random pool, clock or MACs.
        let identity = Identity::check(req.host_time_ns, &req.seed, &req.interface_macs)
            .map_err(|e| identity_status(&e))?;
        let hwrng = self.machine.hwrng.clone();
        let checked = identity.clone();
        let entropy = tokio::task::spawn_blocking(move || checked.entropy(&hwrng))
            .await
            .unwrap_or_else(|err| {
                Err(IdentityError::Os {
                    what: "reading the hardware RNG",
                    source: std::io::Error::other(err.to_string()),
                })
            })
            .map_err(|e| identity_status(&e))?;
        tracing::debug!("sandbox {}: entropy read", req.sandbox_id);
        let settings = PodSettings {
            hostname: req.hostname,
            dns: req.dns,
            shared_pid_namespace: req.shared_pid_namespace,
            sysctls: req.sysctls,
            shm_size: req.shm_size,
        };
        self.sandbox
            .create(&req.sandbox_id, &settings, &req.shared_mounts)
            .map_err(|e| status(&e))?;
        tracing::debug!("sandbox {}: created", req.sandbox_id);
        if let Err(err) = identity
            .apply(&entropy, &settings.hostname, &self.machine, &self.network)
            .await
        {
            self.sandbox.destroy().await;
            return Err(identity_status(&err));
        }
        tracing::debug!("sandbox {}: the guest is the pod's", req.sandbox_id);
        Ok(api::Empty::new())
    }

    async fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        _: api::DestroySandboxRequest,
    ) -> Reply<api::Empty> {
        self.sandbox
            .destroy_checked()
            .await
            .map_err(|e| status(&e))?;
        Ok(api::Empty::new())
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> Reply<api::Empty> {
        let rootfs = req
            .rootfs
            .into_option()
            .ok_or_else(|| invalid("rootfs is missing".into()))?;
        self.sandbox
            .create_container(req.container_id, req.oci_spec, rootfs)
            .await
            .map_err(|e| status(&e))?;
        Ok(api::Empty::new())
    }

    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::Empty> {
        self.sandbox
            .start_container(req.container_id)
            .await
            .map_err(|e| status(&e))?;
        Ok(api::Empty::new())
    }

    async fn prepare_template(
        &self,
        _: &TtrpcContext,
        req: api::PrepareTemplateRequest,
    ) -> Reply<api::Empty> {
        let started = std::time::Instant::now();
        let (length, warmed) = self
            .sandbox
            .prepare_template(req.linux)
            .await
            .map_err(|e| status(&e))?;
        let percpu = warmed
            .percpu_kib
            .map_or_else(|| "unknown".to_owned(), |kib| format!("{kib} KiB"));
        tracing::info!(
            "template prepared in {:.1} s: device program of {length} instructions loaded ahead; \
             a pod's cgroups made and removed, per-CPU memory {} at {percpu}",
            started.elapsed().as_secs_f64(),
            if warmed.settled {
                "settled"
            } else {
                "still changing"
            }
        );
        Ok(api::Empty::new())
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> Reply<api::Empty> {
        self.sandbox
            .remove_container(req.container_id, req.force)
            .await
            .map_err(|e| status(&e))?;
        Ok(api::Empty::new())
    }

    async fn pause_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::Empty> {
        self.sandbox
            .pause_container(req.container_id)
            .await
            .map_err(|e| status(&e))?;
        Ok(api::Empty::new())
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::Empty> {
        self.sandbox
            .resume_container(req.container_id)
            .await
            .map_err(|e| status(&e))?;
        Ok(api::Empty::new())
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> Reply<api::Empty> {
        self.sandbox
            .update_container(req.container_id, req.resources)
            .await
            .map_err(|e| status(&e))?;
        Ok(api::Empty::new())
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::StatsContainerResponse> {
        let cgroup = self
            .sandbox
            .container_cgroup(&req.container_id)
            .map_err(|e| status(&e))?;
        let mut reply = api::StatsContainerResponse::new();
        if let Some(usage) = cgroup.value("memory.current") {
            let mut memory = api::MemoryStats::new();
            memory.usage = usage;
            memory.limit = cgroup.value("memory.max").unwrap_or(0);
            memory.max_usage = cgroup.value("memory.peak").unwrap_or(0);
            memory.oom_kills = cgroup.oom_kills();
            reply.memory = Some(memory).into();
        }
        if let Some(usage) = cgroup.keyed("cpu.stat", "usage_usec") {
            let mut cpu = api::CpuStats::new();
            cpu.usage_usec = usage;
            cpu.user_usec = cgroup.keyed("cpu.stat", "user_usec").unwrap_or(0);
            cpu.system_usec = cgroup.keyed("cpu.stat", "system_usec").unwrap_or(0);
            cpu.nr_throttled = cgroup.keyed("cpu.stat", "nr_throttled").unwrap_or(0);
            cpu.throttled_usec = cgroup.keyed("cpu.stat", "throttled_usec").unwrap_or(0);
            reply.cpu = Some(cpu).into();
        }
        if let Some(current) = cgroup.value("pids.current") {
            let mut pids = api::PidsStats::new();
            pids.current = current;
            pids.limit = cgroup.value("pids.max").unwrap_or(0);
            reply.pids = Some(pids).into();
        }
        Ok(reply)
    }

    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: api::ContainerRequest,
    ) -> Reply<api::ListProcessesResponse> {
        let cgroup = self
            .sandbox
            .container_cgroup(&req.container_id)
            .map_err(|e| status(&e))?;
        let mut reply = api::ListProcessesResponse::new();
        reply.pids = cgroup.pids();
        Ok(reply)
    }

    async fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: api::GetOOMEventRequest,
    ) -> Reply<api::OOMEvent> {
        loop {
            if let Some(id) = self.sandbox.next_oom() {
                let mut event = api::OOMEvent::new();
                event.container_id = id;
                return Ok(event);
            }
            tokio::time::sleep(OOM_POLL).await;
        }
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> Reply<api::Empty> {
        self.sandbox
            .exec_process(req.container_id, req.exec_id, req.process)
            .await
            .map_err(|e| status(&e))?;
        Ok(api::Empty::new())
    }

    async fn signal_process(
        &self,
        _: &TtrpcContext,
        req: api::SignalProcessRequest,
    ) -> Reply<api::Empty> {
        self.sandbox
            .signal_process(req.container_id, req.exec_id, req.signal, req.all)
            .await
            .map_err(|e| status(&e))?;
        Ok(api::Empty::new())
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: api::ProcessRequest,
    ) -> Reply<api::WaitProcessResponse> {
        let exit = self
            .sandbox
            .wait_process(&req.container_id, &req.exec_id)
            .await
            .map_err(|e| status(&e))?;
        let mut reply = api::WaitProcessResponse::new();
        reply.exit_status = exit.status;
        reply.exited_at_ns = exit.at_ns;
        Ok(reply)
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: api::WriteStreamRequest,
    ) -> Reply<api::WriteStreamResponse> {
        let (_, streams) = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| status(&e))?;
        let len = streams.write_stdin(&req.data).await.map_err(stdio_status)?;
        let mut reply = api::WriteStreamResponse::new();
        reply.len = len as u32;
        Ok(reply)
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: api::ReadStreamRequest,
    ) -> Reply<api::ReadStreamResponse> {
        let (_, streams) = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| status(&e))?;
        let mut reply = api::ReadStreamResponse::new();
        reply.data = streams
            .read_stdout(req.len as usize)
            .await
            .map_err(stdio_status)?;
        Ok(reply)
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: api::ReadStreamRequest,
    ) -> Reply<api::ReadStreamResponse> {
        let (_, streams) = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| status(&e))?;
        let mut reply = api::ReadStreamResponse::new();
        reply.data = streams
            .read_stderr(req.len as usize)
            .await
            .map_err(stdio_status)?;
        Ok(reply)
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: api::ProcessRequest) -> Reply<api::Empty> {
        let (_, streams) = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| status(&e))?;
        streams.close_stdin().await.map_err(stdio_status)?;
        Ok(api::Empty::new())
    }

    async fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: api::TtyWinResizeRequest,
    ) -> Reply<api::Empty> {
        let (_, streams) = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .map_err(|e| status(&e))?;
        let rows = u16::try_from(req.rows)
            .map_err(|_| invalid(format!("rows {} is too large", req.rows)))?;
        let columns = u16::try_from(req.columns)
            .map_err(|_| invalid(format!("columns {} is too large", req.columns)))?;
        streams.resize(rows, columns).map_err(stdio_status)?;
        Ok(api::Empty::new())
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: api::UpdateInterfaceRequest,
    ) -> Reply<api::Interface> {
        let interface = req
            .interface
            .into_option()
            .ok_or_else(|| invalid("interface is missing".into()))?;
        self.network
            .update_interface(&interface)
            .await
            .map_err(|e| network_status(&e))
    }

    async fn update_routes(
        &self,
        _: &TtrpcContext,
        req: api::UpdateRoutesRequest,
    ) -> Reply<api::Routes> {
        let routes = req.routes.into_option().unwrap_or_default();
        let mut reply = api::Routes::new();
        reply.routes = self
            .network
            .update_routes(&routes.routes)
            .await
            .map_err(|e| network_status(&e))?;
        Ok(reply)
    }

    async fn add_neighbours(
        &self,
        _: &TtrpcContext,
        req: api::AddNeighboursRequest,
    ) -> Reply<api::Empty> {
        self.network
            .add_neighbours(&req.neighbours)
            .await
            .map_err(|e| network_status(&e))?;
        Ok(api::Empty::new())
    }
}

/// Failures to start serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address is taken.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// ttrpc could not bind or start.
    #[error(transparent)]
    Ttrpc(#[from] ttrpc::Error),
    /// rtnetlink could not be opened.
    #[error(transparent)]
    Network(#[from] NetworkError),
}

/// Starts serving on `listen`.
///
/// # Errors
///
/// [`ServeError`] when the address cannot be bound.
pub async fn start(
    listen: &ListenAddress,
    sandbox: Arc<Sandbox>,
    machine: Machine,
) -> Result<Server, ServeError> {
    listen.prepare()?;
    let network = Network::new()?;
    if let Err(err) = network.loopback_up().await {
        tracing::warn!("{}", vmpod_sys::error::Chain(&err));
    }
    let service = create_agent_service(Arc::new(Agent {
        sandbox,
        network,
        machine,
    }));
    let mut server = Server::new()
        .bind(&listen.ttrpc_address())?
        .register_service(service);
    server.start().await?;
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spawn::SpawnError;

    fn text(error: ttrpc::Error) -> (Code, String) {
        match error {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_owned()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_a_failed_step_reads_as_its_whole_chain_once() {
        let err = SandboxError::Container(ContainerError::Spawn(SpawnError::Child {
            step: "mounting /run/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        }));
        assert_eq!(
            text(status(&err)),
            (
                Code::INTERNAL,
                "starting the process: mounting /run/x: No such file or directory (os error 2)"
                    .to_owned()
            )
        );
    }

    #[test]
    fn test_a_refused_route_reads_as_the_kernels_answer_once() {
        let mut answer = rtnetlink::packet_core::ErrorMessage::default();
        answer.code = std::num::NonZeroI32::new(-libc::EINVAL);
        let err = NetworkError::Netlink {
            what: "adding route to 198.18.10.0/24".into(),
            source: rtnetlink::Error::NetlinkError(answer),
        };
        assert_eq!(
            text(network_status(&err)),
            (
                Code::FAILED_PRECONDITION,
                "adding route to 198.18.10.0/24: Received a netlink error message \
                 Invalid argument (os error 22)"
                    .to_owned()
            )
        );
    }
}
