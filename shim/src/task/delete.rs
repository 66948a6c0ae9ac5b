// SPDX-License-Identifier: Apache-2.0
//! Delete: an exec's record, or a container: out of the agent, out of the
//! share, TaskDelete; the pod's last container takes the pod VM with it.

use std::path::Path;

use containerd_shim::api::{DeleteRequest, DeleteResponse};
use containerd_shim::protos::events::task::TaskDelete;
use containerd_shim::protos::topics;
use protobuf::MessageField;
use ttrpc::Code;

use super::error::{agent_status, host_status, not_found};
use super::{TaskService, POD_DIR_FILE};
use crate::process::{Exit, LOST_STATUS};

/// The pod's directory could not be removed with its last container.
#[derive(Debug, thiserror::Error)]
#[error("removing the pod's directory")]
struct PodRemoval(#[source] std::io::Error);

/// How long a Delete whose agent call failed waits to learn that the VM
/// ended (then the failure is the VM's death, not the agent's refusal).
const VM_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl TaskService {
    /// Delete: an exec (non-empty `exec_id`) or the container; either must
    /// not be running.
    pub(super) async fn delete_process(&self, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let vmm_pid = self.vmm_pid();
        let exit = if req.exec_id.is_empty() {
            self.delete_container(&req.id, vmm_pid).await?
        } else {
            self.delete_exec(&req.id, &req.exec_id)?
        };
        Ok(DeleteResponse {
            pid: vmm_pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    /// Forgets an exec that is not running; its exit, or 0 for one never started.
    fn delete_exec(&self, id: &str, exec_id: &str) -> Result<Exit, ttrpc::Error> {
        let exec = self.with_container(id, |container| {
            container.check_deletable(exec_id)?;
            Ok(container.execs.remove(exec_id))
        })?;
        Ok(exec
            .and_then(|exec| exec.exit())
            .unwrap_or_else(|| Exit::now(0)))
    }

    /// Removes a container that is not running, publishes TaskDelete and,
    /// with the pod's last container, stops the pod VM. Its exit: the
    /// recorded one, 0 for one never started, [`LOST_STATUS`] otherwise.
    async fn delete_container(&self, id: &str, vmm_pid: u32) -> Result<Exit, ttrpc::Error> {
        let (share, was_created) = self.with_container(id, |container| {
            container.check_deletable("")?;
            Ok((container.share.clone(), container.init.exit().is_none()))
        })?;
        let last = {
            let containers = self.containers();
            containers.len() == 1 && containers.contains_key(id)
        };
        // The pod's last container goes with its VM: no agent call, which
        // in a slow guest would cost seconds of the little time containerd
        // gives a sandbox's Delete.
        if !last {
            self.remove_from_agent(id).await?;
        }
        share
            .remove()
            .map_err(|err| host_status(Code::INTERNAL, &err))?;
        // The pod goes before its last container's record: when removing it
        // fails, the container stays, and a retried Delete finishes both.
        if last {
            self.shut_down_pod()
                .await
                .map_err(|err| host_status(Code::INTERNAL, &PodRemoval(err)))?;
        }
        let (exit, bundle) = {
            let mut containers = self.containers();
            let container = containers.remove(id).ok_or_else(|| not_found(id))?;
            let exit = container
                .init
                .exit()
                .unwrap_or_else(|| Exit::now(if was_created { 0 } else { LOST_STATUS }));
            (exit, container.bundle)
        };
        let _ = std::fs::remove_file(Path::new(&bundle).join(POD_DIR_FILE));
        let event = TaskDelete {
            container_id: id.to_owned(),
            pid: vmm_pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at.clone()),
            id: id.to_owned(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(exit)
    }

    /// Removes the container from a VM that runs; its refusal counts only
    /// if the VM does not end within [`VM_EXIT_GRACE`].
    async fn remove_from_agent(&self, id: &str) -> Result<(), ttrpc::Error> {
        let Ok(handle) = self.handle() else {
            return Ok(());
        };
        if handle.vm_exit.borrow().is_some() {
            return Ok(());
        }
        if let Err(err) = handle.agent.remove_container(id, true).await {
            // The VM may have died since the check: then there is nothing
            // left in it to remove.
            if !handle.vm_ends_within(VM_EXIT_GRACE).await {
                return Err(agent_status(err));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use containerd_shim::protos::events::task::TaskExit;
    use vmpod_agent_api::ProcessId;

    use super::*;
    use crate::task::fake::{refusal, Harness, VMM_PID};

    fn delete(id: &str, exec_id: &str) -> DeleteRequest {
        DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn test_delete_of_the_last_container_stops_the_pod() {
        let harness = Harness::new();
        harness.created("c1").await;
        let bundle = harness.bundle("c1");
        assert!(bundle.join(POD_DIR_FILE).exists());
        let response = harness
            .service
            .delete_process(delete("c1", ""))
            .await
            .unwrap();
        // Never started: it exits 0.
        assert_eq!((response.pid, response.exit_status), (VMM_PID, 0));
        // Its VM goes with it: no RemoveContainer first.
        assert!(!harness.agent.called("RemoveContainer"));
        let event = harness.events.one::<TaskDelete>();
        assert_eq!(
            (
                event.container_id.as_str(),
                event.id.as_str(),
                event.pid,
                event.exit_status
            ),
            ("c1", "c1", VMM_PID, 0)
        );
        assert_eq!(harness.launcher.shut_downs.load(Ordering::SeqCst), 1);
        assert!(!bundle.join(POD_DIR_FILE).exists());
        assert_eq!(harness.service.vmm_pid(), 0);
        assert_eq!(refusal(harness.status("c1", "")).0, Code::NOT_FOUND);
        assert_eq!(
            refusal(harness.service.delete_process(delete("c1", "")).await),
            (Code::NOT_FOUND, "container \"c1\" not found".into())
        );
    }

    #[tokio::test]
    async fn test_delete_of_a_running_container_is_failed_precondition() {
        let harness = Harness::new();
        harness.started("c1").await;
        assert_eq!(
            refusal(harness.service.delete_process(delete("c1", "")).await),
            (
                Code::FAILED_PRECONDITION,
                "container \"c1\" is running".into()
            )
        );
        assert!(!harness.agent.called("RemoveContainer"));
        assert!(harness.events.all::<TaskDelete>().is_empty());
    }

    #[tokio::test]
    async fn test_delete_after_the_exit_returns_it_and_keeps_the_pod_for_others() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.created_in_pod("c2", "c1").await;
        harness.agent.exit(&ProcessId::init("c1"), 3);
        harness.events.wait_for::<TaskExit>(1).await;
        let response = harness
            .service
            .delete_process(delete("c1", ""))
            .await
            .unwrap();
        assert_eq!(response.exit_status, 3);
        assert_eq!(harness.events.one::<TaskDelete>().exit_status, 3);
        assert_eq!(harness.launcher.shut_downs.load(Ordering::SeqCst), 0);
        assert!(!harness.shared("c1").join("c1").exists());
        assert!(harness.shared("c1").join("c2").exists());
        assert_eq!(harness.service.vmm_pid(), VMM_PID);
    }

    #[tokio::test]
    async fn test_a_container_whose_vm_ended_is_deleted_without_the_agent() {
        let harness = Harness::new();
        harness.created("c1").await;
        harness.launcher.end_vm("signal: 9 (SIGKILL)");
        harness.events.wait_for::<TaskExit>(1).await;
        let response = harness
            .service
            .delete_process(delete("c1", ""))
            .await
            .unwrap();
        assert_eq!(response.exit_status, LOST_STATUS);
        assert!(!harness.agent.called("RemoveContainer"));
        assert_eq!(harness.launcher.shut_downs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn test_a_refused_remove_fails_the_delete_while_the_vm_runs() {
        let harness = Harness::new();
        harness.created("c1").await;
        harness.created_in_pod("c2", "c1").await;
        harness
            .agent
            .refuse("RemoveContainer", Code::INTERNAL, "cgroup busy");
        assert_eq!(
            refusal(harness.service.delete_process(delete("c1", "")).await),
            (Code::INTERNAL, "agent RemoveContainer: cgroup busy".into())
        );
        assert_eq!(
            harness.status("c1", "").unwrap(),
            containerd_shim::api::Status::CREATED
        );
        assert!(harness.shared("c1").join("c1/rootfs").is_dir());
        assert!(harness.events.all::<TaskDelete>().is_empty());
    }

    #[tokio::test]
    async fn test_a_delete_that_failed_part_way_can_be_retried_to_the_end() {
        let harness = Harness::new();
        harness.created("c1").await;
        let pod = harness.shared("c1").parent().unwrap().to_owned();
        // Something the shim did not make, in a directory it did: the
        // container's removal fails after its mounts went.
        let stray = pod.join("mounts/c1/stray");
        std::fs::write(&stray, "").unwrap();
        let (code, message) = refusal(harness.service.delete_process(delete("c1", "")).await);
        assert_eq!(code, Code::INTERNAL);
        assert!(message.starts_with("remove "), "{message}");
        assert!(harness.events.all::<TaskDelete>().is_empty());
        assert_eq!(harness.launcher.shut_downs.load(Ordering::SeqCst), 0);
        std::fs::remove_file(&stray).unwrap();
        harness
            .service
            .delete_process(delete("c1", ""))
            .await
            .unwrap();
        assert_eq!(harness.launcher.shut_downs.load(Ordering::SeqCst), 1);
        assert!(!pod.exists());
        let state = std::fs::canonicalize(pod.parent().unwrap().parent().unwrap()).unwrap();
        assert!(vmpod_sys::mountinfo::points_below(&state)
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn test_a_delete_whose_pod_removal_failed_can_be_retried_to_the_end() {
        let harness = Harness::new();
        harness.created("c1").await;
        let pod = harness.shared("c1").parent().unwrap().to_owned();
        harness
            .launcher
            .failed_shut_downs
            .store(1, Ordering::SeqCst);
        let (code, message) = refusal(harness.service.delete_process(delete("c1", "")).await);
        assert_eq!(code, Code::INTERNAL);
        assert_eq!(
            message,
            "removing the pod's directory: injected removal failure"
        );
        assert!(harness.events.all::<TaskDelete>().is_empty());
        assert!(
            harness.status("c1", "").is_ok(),
            "the container must stay for the retry"
        );
        harness
            .service
            .delete_process(delete("c1", ""))
            .await
            .unwrap();
        assert_eq!(harness.launcher.shut_downs.load(Ordering::SeqCst), 2);
        assert_eq!(harness.events.all::<TaskDelete>().len(), 1);
        assert!(!pod.exists());
        assert_eq!(refusal(harness.status("c1", "")).0, Code::NOT_FOUND);
    }

    #[tokio::test]
    async fn test_delete_of_an_exec_forgets_it_unless_it_runs() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.exec("c1", "e1").await.unwrap();
        harness.exec("c1", "e2").await.unwrap();
        harness.start("c1", "e2").await.unwrap();
        let response = harness
            .service
            .delete_process(delete("c1", "e1"))
            .await
            .unwrap();
        assert_eq!((response.pid, response.exit_status), (VMM_PID, 0));
        assert_eq!(
            refusal(harness.status("c1", "e1")),
            (Code::NOT_FOUND, "exec \"e1\" not found".into())
        );
        assert_eq!(
            refusal(harness.service.delete_process(delete("c1", "e2")).await),
            (Code::FAILED_PRECONDITION, "exec \"e2\" is running".into())
        );
        harness.agent.exit(&ProcessId::exec("c1", "e2.1"), 4);
        harness.events.wait_for::<TaskExit>(1).await;
        let response = harness
            .service
            .delete_process(delete("c1", "e2"))
            .await
            .unwrap();
        assert_eq!(response.exit_status, 4);
        // An exec's delete is no container's: no TaskDelete, no agent call.
        assert!(harness.events.all::<TaskDelete>().is_empty());
        assert!(!harness.agent.called("RemoveContainer"));
    }
}
