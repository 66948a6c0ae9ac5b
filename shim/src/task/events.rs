// SPDX-License-Identifier: Apache-2.0
//! The task events containerd expects, and the watchers of a running pod VM
//! that publish the ones no request causes: a container's OOM, and the exits
//! of processes the VM's end takes with it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::topics;
use containerd_shim::publisher::RemotePublisher;
use protobuf::{MessageDyn, MessageField};

use super::{lock, Containers, PodHandle, TaskService};
use crate::process::{Exit, LOST_STATUS};

/// Where task events go: containerd's event service, or a recorder in tests.
#[async_trait]
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Publishes `event` on `topic`. A failure is logged, not returned: the
    /// request that caused the event has happened either way.
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// containerd's event service, in the shim's namespace.
pub struct ContainerdEvents {
    publisher: RemotePublisher,
    namespace: String,
}

impl std::fmt::Debug for ContainerdEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerdEvents")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl ContainerdEvents {
    /// Events of `namespace` through `publisher`.
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        ContainerdEvents {
            publisher,
            namespace: namespace.to_owned(),
        }
    }
}

#[async_trait]
impl EventSink for ContainerdEvents {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(err) = self
            .publisher
            .publish(
                ttrpc::context::Context::default(),
                topic,
                &self.namespace,
                event,
            )
            .await
        {
            tracing::warn!(topic, "publish: {err}");
        }
    }
}

/// TaskExit of the init process (empty `exec_id`) or an exec.
pub(super) fn task_exit(container_id: &str, exec_id: &str, pid: u32, exit: &Exit) -> TaskExit {
    TaskExit {
        container_id: container_id.to_owned(),
        id: if exec_id.is_empty() {
            container_id.to_owned()
        } else {
            exec_id.to_owned()
        },
        pid,
        exit_status: exit.status,
        exited_at: MessageField::some(exit.at.clone()),
        ..Default::default()
    }
}

impl TaskService {
    /// Runs after the pod VM started: OOM events and the VM's end.
    pub(super) fn watch_pod(&self, handle: &PodHandle) {
        let agent = handle.agent.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Ok(container_id) = agent.next_oom_event().await {
                let event = TaskOOM {
                    container_id,
                    ..Default::default()
                };
                events
                    .publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(event))
                    .await;
            }
        });
        tokio::spawn(end_with_vm(
            handle.clone(),
            self.containers.clone(),
            self.events.clone(),
        ));
    }
}

/// Once the VM ends, gives the processes still waiting for Start their exit
/// (the started ones get theirs through their monitors) and publishes it.
async fn end_with_vm(handle: PodHandle, containers: Containers, events: Arc<dyn EventSink>) {
    let mut vm_exit = handle.vm_exit;
    let Ok(why) = vm_exit
        .wait_for(Option::is_some)
        .await
        .map(|why| why.clone())
    else {
        return;
    };
    let why = why.unwrap_or_default();
    // An end the shim did not ask for is warned of by the pod, with the
    // VM's log; here it is the processes' end.
    if handle.stopping.load(Ordering::SeqCst) {
        tracing::info!("the pod VM stopped: {why}");
    } else {
        tracing::info!("the pod VM ended: {why}; its processes exit with {LOST_STATUS}");
    }
    let mut exits = Vec::new();
    for (container_id, container) in lock(&containers).iter() {
        for (exec_id, process) in container.processes() {
            if container.status_of(process).ends_with_vm() {
                let exit = Exit::now(LOST_STATUS);
                process.set_exit(exit.clone());
                exits.push(task_exit(container_id, exec_id, handle.vmm_pid, &exit));
            }
        }
    }
    for event in exits {
        events
            .publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim::api::Status;

    use super::*;
    use crate::task::fake::{Harness, VMM_PID};

    #[test]
    fn test_task_exit_names_the_init_by_its_container() {
        let exit = Exit::at_nanos(2, 3_000_000_004);
        let init = task_exit("c1", "", 7, &exit);
        assert_eq!((init.container_id.as_str(), init.id.as_str()), ("c1", "c1"));
        assert_eq!((init.pid, init.exit_status), (7, 2));
        assert_eq!((init.exited_at.seconds, init.exited_at.nanos), (3, 4));
        assert_eq!(task_exit("c1", "e1", 7, &exit).id, "e1");
    }

    #[tokio::test]
    async fn test_an_oom_in_the_guest_is_published() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.agent.oom("c1");
        let ooms = harness.events.wait_for::<TaskOOM>(1).await;
        assert_eq!(ooms[0].container_id, "c1");
        assert!(harness
            .events
            .topics()
            .contains(&topics::TASK_OOM_EVENT_TOPIC.to_owned()));
    }

    #[tokio::test]
    async fn test_the_vms_end_exits_the_processes_waiting_for_start() {
        let harness = Harness::new();
        harness.created("c1").await;
        harness.start("c1", "").await.unwrap();
        harness.exec("c1", "e1").await.unwrap();
        harness.launcher.end_vm("signal: 9 (SIGKILL)");
        let exits = harness.events.wait_for::<TaskExit>(2).await;
        let exec_exit = exits.iter().find(|exit| exit.id == "e1").unwrap();
        assert_eq!(
            (
                exec_exit.container_id.as_str(),
                exec_exit.pid,
                exec_exit.exit_status
            ),
            ("c1", VMM_PID, LOST_STATUS)
        );
        assert_eq!(harness.status("c1", "e1").unwrap(), Status::STOPPED);
        assert_eq!(harness.status("c1", "").unwrap(), Status::STOPPED);
    }
}
