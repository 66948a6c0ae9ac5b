// SPDX-License-Identifier: Apache-2.0
//! Start: the agent starts a container's init or an exec, and a monitor
//! copies its stdio and records its exit (TaskExit) once the output is
//! drained.

use std::sync::Arc;

use containerd_shim::api::{StartRequest, StartResponse};
use containerd_shim::protos::events::task::{TaskExecStarted, TaskStart};
use containerd_shim::protos::topics;
use tokio::sync::watch;
use ttrpc::Code;
use vmpod_agent_api::ProcessId;

use super::error::{agent_status, host_status};
use super::events::task_exit;
use super::{EventSink, PodHandle, TaskService};
use crate::io::Copies;
use crate::process::{Exit, Process, LOST_STATUS};

impl TaskService {
    /// Start: the process must be Created; TaskStart (init) or
    /// TaskExecStarted (exec) follows.
    pub(super) async fn start_process(&self, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let handle = self.handle_for(&req.id)?;
        let (process_id, exec_spec) = self.with_container(&req.id, |container| {
            let process = container.startable(&req.exec_id)?;
            Ok((process.id.clone(), process.exec_spec.clone()))
        })?;
        // Started first, watched after: the agent keeps output and exit
        // status until they are read, and a failed start leaves nothing to watch.
        match exec_spec {
            Some(spec) => handle.agent.exec_process(&process_id, spec).await,
            None => handle.agent.start_container(&req.id).await,
        }
        .map_err(agent_status)?;
        self.with_container(&req.id, |container| {
            let process = container.process_mut(&req.exec_id)?;
            process.set_started();
            self.monitor(&handle, &req.id, &req.exec_id, process)
        })?;
        if req.exec_id.is_empty() {
            let event = TaskStart {
                container_id: req.id.clone(),
                pid: handle.vmm_pid,
                ..Default::default()
            };
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(event))
                .await;
        } else {
            let event = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: handle.vmm_pid,
                ..Default::default()
            };
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(event))
                .await;
        }
        Ok(StartResponse {
            pid: handle.vmm_pid,
            ..Default::default()
        })
    }

    /// Starts copying the process's stdio and a monitor that records its exit
    /// (after the output is drained) and publishes TaskExit.
    fn monitor(
        &self,
        handle: &PodHandle,
        container_id: &str,
        exec_id: &str,
        process: &Process,
    ) -> Result<(), ttrpc::Error> {
        let copies = Copies::start(&handle.agent, &process.id, &process.stdio)
            .map_err(|err| host_status(Code::INVALID_ARGUMENT, &err))?;
        process.set_copies(&copies);
        let monitor = Monitor {
            handle: handle.clone(),
            process: process.id.clone(),
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            exit: process.exit_sender(),
            events: self.events.clone(),
        };
        tokio::spawn(monitor.run(copies));
        Ok(())
    }
}

/// How long a monitor whose wait failed waits for the VM's end, which
/// explains the failure (the jailer reaps `vmpod-vm`, the shim its jailer).
const VM_END_AFTER_LOST_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What watches one started process until its exit.
struct Monitor {
    handle: PodHandle,
    process: ProcessId,
    container_id: String,
    exec_id: String,
    exit: Arc<watch::Sender<Option<Exit>>>,
    events: Arc<dyn EventSink>,
}

impl Monitor {
    async fn run(self, copies: Copies) {
        let mut vm_exit = self.handle.vm_exit.clone();
        let waited = tokio::select! {
            waited = self.handle.agent.wait_process(&self.process) => Some(waited),
            _ = vm_exit.wait_for(Option::is_some) => None,
        };
        let exit = match waited {
            Some(Ok(waited)) => Exit::at_nanos(
                u32::try_from(waited.exit_status).unwrap_or(LOST_STATUS),
                waited.exited_at_ns,
            ),
            Some(Err(err)) => {
                // A VM's death is the pod's to log, once.
                if !self.handle.vm_ends_within(VM_END_AFTER_LOST_WAIT).await {
                    tracing::warn!(process = ?self.process, "wait: {err}");
                }
                Exit::now(LOST_STATUS)
            }
            None => Exit::now(LOST_STATUS),
        };
        // The exit counts once its output reached containerd, unless the VM is gone.
        tokio::select! {
            _ = copies.drain() => {}
            _ = vm_exit.wait_for(Option::is_some) => {}
        }
        let exited = self.exit.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(exit.clone());
                true
            } else {
                false
            }
        });
        if exited {
            let event = task_exit(
                &self.container_id,
                &self.exec_id,
                self.handle.vmm_pid,
                &exit,
            );
            self.events
                .publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim::api::Status;
    use containerd_shim::protos::events::task::TaskExit;

    use super::*;
    use crate::task::fake::{refusal, Harness, EXITED_AT_NS, VMM_PID};

    #[tokio::test]
    async fn test_start_runs_the_init_and_publishes_task_start() {
        let harness = Harness::new();
        harness.created("c1").await;
        assert_eq!(harness.start("c1", "").await.unwrap(), VMM_PID);
        assert!(harness.agent.called("StartContainer c1"));
        let event = harness.events.one::<TaskStart>();
        assert_eq!((event.container_id.as_str(), event.pid), ("c1", VMM_PID));
        assert_eq!(harness.status("c1", "").unwrap(), Status::RUNNING);
        // The monitor waits for the process and drains its output.
        harness.events.wait_for::<TaskStart>(1).await;
        for _ in 0..100 {
            if harness.agent.called("WaitProcess c1/") && harness.agent.called("ReadStdout c1/") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no monitor: {:?}", harness.agent.calls());
    }

    #[tokio::test]
    async fn test_a_second_start_is_failed_precondition() {
        let harness = Harness::new();
        harness.started("c1").await;
        let (code, message) = refusal(harness.start("c1", "").await);
        assert_eq!(code, Code::FAILED_PRECONDITION);
        assert!(message.ends_with("was started already"), "{message}");
        assert_eq!(harness.events.all::<TaskStart>().len(), 1);
    }

    #[tokio::test]
    async fn test_start_of_an_exec_runs_it_and_publishes_exec_started() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.exec("c1", "e1").await.unwrap();
        assert_eq!(harness.status("c1", "e1").unwrap(), Status::CREATED);
        assert_eq!(harness.start("c1", "e1").await.unwrap(), VMM_PID);
        assert!(harness.agent.called("ExecProcess c1/e1.0"));
        let event = harness.events.one::<TaskExecStarted>();
        assert_eq!(
            (
                event.container_id.as_str(),
                event.exec_id.as_str(),
                event.pid
            ),
            ("c1", "e1", VMM_PID)
        );
        assert_eq!(harness.status("c1", "e1").unwrap(), Status::RUNNING);
        assert_eq!(
            refusal(harness.start("c1", "e2").await),
            (Code::NOT_FOUND, "exec \"e2\" not found".into())
        );
    }

    #[tokio::test]
    async fn test_a_refused_start_leaves_the_process_created() {
        let harness = Harness::new();
        harness.created("c1").await;
        harness
            .agent
            .refuse("StartContainer", Code::FAILED_PRECONDITION, "no init");
        assert_eq!(
            refusal(harness.start("c1", "").await),
            (
                Code::FAILED_PRECONDITION,
                "agent StartContainer: no init".into()
            )
        );
        assert_eq!(harness.status("c1", "").unwrap(), Status::CREATED);
        assert!(harness.events.all::<TaskStart>().is_empty());
        assert!(!harness.agent.called("WaitProcess"));
    }

    #[tokio::test]
    async fn test_the_exit_is_recorded_once_and_published() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.agent.exit(&ProcessId::init("c1"), 3);
        let exits = harness.events.wait_for::<TaskExit>(1).await;
        let exit = &exits[0];
        assert_eq!(
            (
                exit.container_id.as_str(),
                exit.id.as_str(),
                exit.pid,
                exit.exit_status
            ),
            ("c1", "c1", VMM_PID, 3)
        );
        let at = Exit::at_nanos(3, EXITED_AT_NS).at;
        assert_eq!(exit.exited_at.seconds, at.seconds);
        assert_eq!(exit.exited_at.nanos, at.nanos);
        assert_eq!(harness.status("c1", "").unwrap(), Status::STOPPED);
        // The VM's end later changes nothing.
        harness.launcher.end_vm("exit status: 0");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(harness.events.all::<TaskExit>().len(), 1);
    }

    #[tokio::test]
    async fn test_a_wait_the_vms_end_broke_exits_once_the_vm_has_ended() {
        let harness = Harness::new();
        harness.created("c1").await;
        // As a killed VM breaks the agent's connection before it is reaped.
        harness
            .agent
            .refuse("WaitProcess", Code::UNAVAILABLE, "connection reset");
        harness.start("c1", "").await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(harness.events.all::<TaskExit>().is_empty());
        harness.launcher.end_vm("signal: 9 (SIGKILL)");
        let exits = harness.events.wait_for::<TaskExit>(1).await;
        assert_eq!(
            (exits[0].id.as_str(), exits[0].exit_status),
            ("c1", LOST_STATUS)
        );
        assert_eq!(harness.status("c1", "").unwrap(), Status::STOPPED);
    }

    #[tokio::test]
    async fn test_a_vm_that_ends_gives_started_processes_the_lost_status() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.exec("c1", "e1").await.unwrap();
        harness.start("c1", "e1").await.unwrap();
        harness.launcher.end_vm("signal: 9 (SIGKILL)");
        let exits = harness.events.wait_for::<TaskExit>(2).await;
        let mut ids: Vec<_> = exits
            .iter()
            .map(|exit| (exit.id.clone(), exit.exit_status))
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            [
                ("c1".to_owned(), LOST_STATUS),
                ("e1".to_owned(), LOST_STATUS)
            ]
        );
    }
}
