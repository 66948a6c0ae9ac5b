// SPDX-License-Identifier: Apache-2.0
//! Requests on a running container as a whole: Pause and Resume (TaskPaused,
//! TaskResumed), Update of its resources, Stats of its cgroup and Pids.

use containerd_shim::api::{Empty, PidsResponse, StatsResponse, UpdateTaskRequest};
use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim::protos::topics;
use containerd_shim::protos::types::task::ProcessInfo;
use protobuf::well_known_types::any::Any;
use protobuf::MessageField;
use ttrpc::Code;
use vmpod_agent_api::messages::StatsContainerResponse;

use super::error::{agent_status, status};
use super::TaskService;

/// The type URL containerd decodes cgroup v2 metrics by.
const METRICS_V2_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

impl TaskService {
    /// Pause (`paused`) or Resume: the agent freezes or thaws the container,
    /// and TaskPaused or TaskResumed follows.
    pub(super) async fn set_paused(&self, id: &str, paused: bool) -> ttrpc::Result<Empty> {
        let handle = self.handle_for(id)?;
        if paused {
            handle.agent.pause_container(id).await
        } else {
            handle.agent.resume_container(id).await
        }
        .map_err(agent_status)?;
        if let Some(container) = self.containers().get_mut(id) {
            container.paused = paused;
        }
        let container_id = id.to_owned();
        if paused {
            let event = TaskPaused {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(event))
                .await;
        } else {
            let event = TaskResumed {
                container_id,
                ..Default::default()
            };
            self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(event))
                .await;
        }
        Ok(Empty::new())
    }

    /// Update: new OCI `LinuxResources` (JSON) for the container, within
    /// the pod VM's size.
    pub(super) async fn update_resources(&self, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let handle = self.handle_for(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "update without resources"))?;
        let parsed: oci_spec::runtime::LinuxResources = serde_json::from_slice(&resources)
            .map_err(|_| {
                status(
                    Code::INVALID_ARGUMENT,
                    "update: the resources are not OCI LinuxResources (JSON)",
                )
            })?;
        // The VM's size is fixed at boot: a limit beyond it would be a
        // promise the guest cannot keep, as at create.
        crate::sizing::check_fits(&req.id, handle.size, Some(&parsed))
            .map_err(|err| status(Code::INVALID_ARGUMENT, err))?;
        handle
            .agent
            .update_container(&req.id, resources)
            .await
            .map_err(agent_status)?;
        Ok(Empty::new())
    }

    /// Stats: the container's cgroup figures as containerd's cgroup v2 metrics.
    pub(super) async fn container_stats(&self, id: &str) -> ttrpc::Result<StatsResponse> {
        let handle = self.handle_for(id)?;
        let stats = handle
            .agent
            .stats_container(id)
            .await
            .map_err(agent_status)?;
        let any = Any::pack(&metrics(&stats)).map_err(|err| status(Code::INTERNAL, err))?;
        Ok(StatsResponse {
            stats: MessageField::some(Any {
                type_url: METRICS_V2_TYPE_URL.into(),
                value: any.value,
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Pids: the guest pids of the container's processes.
    pub(super) async fn list_pids(&self, id: &str) -> ttrpc::Result<PidsResponse> {
        let handle = self.handle_for(id)?;
        let pids = handle
            .agent
            .list_processes(id)
            .await
            .map_err(agent_status)?;
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }
}

/// The agent's figures in containerd's cgroup v2 form.
fn metrics(stats: &StatsContainerResponse) -> Metrics {
    let mut metrics = Metrics::new();
    if let Some(pids) = stats.pids.as_ref() {
        metrics.pids = MessageField::some(PidsStat {
            current: pids.current,
            limit: pids.limit,
            ..Default::default()
        });
    }
    if let Some(cpu) = stats.cpu.as_ref() {
        metrics.cpu = MessageField::some(CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        });
    }
    if let Some(memory) = stats.memory.as_ref() {
        metrics.memory = MessageField::some(MemoryStat {
            usage: memory.usage,
            usage_limit: memory.limit,
            max_usage: memory.max_usage,
            ..Default::default()
        });
        metrics.memory_events = MessageField::some(MemoryEvents {
            oom_kill: memory.oom_kills,
            ..Default::default()
        });
    }
    metrics
}

#[cfg(test)]
mod tests {
    use containerd_shim::api::Status;
    use protobuf::Message;
    use vmpod_agent_api::messages::{CpuStats, MemoryStats, PidsStats};

    use super::*;
    use crate::task::fake::{lock_stats, refusal, Harness};

    #[tokio::test]
    async fn test_pause_and_resume_set_the_status_and_publish() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.service.set_paused("c1", true).await.unwrap();
        assert!(harness.agent.called("PauseContainer c1"));
        assert_eq!(harness.status("c1", "").unwrap(), Status::PAUSED);
        assert_eq!(harness.events.one::<TaskPaused>().container_id, "c1");
        harness.service.set_paused("c1", false).await.unwrap();
        assert!(harness.agent.called("ResumeContainer c1"));
        assert_eq!(harness.status("c1", "").unwrap(), Status::RUNNING);
        assert_eq!(harness.events.one::<TaskResumed>().container_id, "c1");
    }

    #[tokio::test]
    async fn test_a_refused_pause_changes_nothing() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness
            .agent
            .refuse("PauseContainer", Code::FAILED_PRECONDITION, "not running");
        assert_eq!(
            refusal(harness.service.set_paused("c1", true).await),
            (
                Code::FAILED_PRECONDITION,
                "agent PauseContainer: not running".into()
            )
        );
        assert_eq!(harness.status("c1", "").unwrap(), Status::RUNNING);
        assert!(harness.events.all::<TaskPaused>().is_empty());
        assert_eq!(
            refusal(harness.service.set_paused("c9", false).await),
            (Code::NOT_FOUND, "container \"c9\" not found".into())
        );
    }

    #[tokio::test]
    async fn test_update_passes_only_oci_resources() {
        let harness = Harness::new();
        harness.started("c1").await;
        let update = |resources: Option<&[u8]>| UpdateTaskRequest {
            id: "c1".into(),
            resources: resources.map_or_else(MessageField::none, |value| {
                MessageField::some(Any {
                    value: value.to_vec(),
                    ..Default::default()
                })
            }),
            ..Default::default()
        };
        let resources = br#"{"pids": {"limit": 10}}"#;
        harness
            .service
            .update_resources(update(Some(resources)))
            .await
            .unwrap();
        assert!(harness
            .agent
            .called(r#"UpdateContainer c1 {"pids": {"limit": 10}}"#));
        assert_eq!(
            refusal(harness.service.update_resources(update(None)).await),
            (Code::INVALID_ARGUMENT, "update without resources".into())
        );
        assert_eq!(
            refusal(harness.service.update_resources(update(Some(b"7"))).await),
            (
                Code::INVALID_ARGUMENT,
                "update: the resources are not OCI LinuxResources (JSON)".into()
            )
        );
        harness
            .agent
            .refuse("UpdateContainer", Code::INVALID_ARGUMENT, "cpu.max: bad");
        assert_eq!(
            refusal(
                harness
                    .service
                    .update_resources(update(Some(resources)))
                    .await
            )
            .0,
            Code::INVALID_ARGUMENT
        );
    }

    #[tokio::test]
    async fn test_an_update_beyond_the_pod_vm_is_refused_before_the_agent() {
        let harness = Harness::new();
        harness.started("c1").await;
        let update = UpdateTaskRequest {
            id: "c1".into(),
            resources: MessageField::some(Any {
                value: br#"{"memory": {"limit": 1099511627776}}"#.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (code, message) = refusal(harness.service.update_resources(update).await);
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(
            message.starts_with("container \"c1\": its memory limit of 1048576 MiB exceeds"),
            "{message}"
        );
        assert!(!harness.agent.called("UpdateContainer"));
    }

    #[tokio::test]
    async fn test_stats_are_cgroup_v2_metrics() {
        let harness = Harness::new();
        harness.started("c1").await;
        {
            let mut stats = lock_stats(&harness);
            stats.pids = MessageField::some(PidsStats {
                current: 3,
                limit: 100,
                ..Default::default()
            });
            stats.cpu = MessageField::some(CpuStats {
                usage_usec: 10,
                user_usec: 6,
                system_usec: 4,
                nr_throttled: 1,
                throttled_usec: 2,
                ..Default::default()
            });
            stats.memory = MessageField::some(MemoryStats {
                usage: 4096,
                limit: 8192,
                max_usage: 5000,
                oom_kills: 1,
                ..Default::default()
            });
        }
        let response = harness.service.container_stats("c1").await.unwrap();
        assert_eq!(response.stats.type_url, METRICS_V2_TYPE_URL);
        let metrics = Metrics::parse_from_bytes(&response.stats.value).unwrap();
        assert_eq!((metrics.pids.current, metrics.pids.limit), (3, 100));
        assert_eq!(
            (
                metrics.cpu.usage_usec,
                metrics.cpu.user_usec,
                metrics.cpu.system_usec,
                metrics.cpu.nr_throttled,
                metrics.cpu.throttled_usec
            ),
            (10, 6, 4, 1, 2)
        );
        assert_eq!(
            (
                metrics.memory.usage,
                metrics.memory.usage_limit,
                metrics.memory.max_usage
            ),
            (4096, 8192, 5000)
        );
        assert_eq!(metrics.memory_events.oom_kill, 1);
        harness
            .agent
            .refuse("StatsContainer", Code::NOT_FOUND, "no cgroup");
        assert_eq!(
            refusal(harness.service.container_stats("c1").await).0,
            Code::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn test_pids_are_the_guests() {
        let harness = Harness::new();
        harness.started("c1").await;
        let response = harness.service.list_pids("c1").await.unwrap();
        let pids: Vec<u32> = response
            .processes
            .iter()
            .map(|process| process.pid)
            .collect();
        assert_eq!(pids, [1, 7]);
        assert!(harness.agent.called("ListProcesses c1"));
        assert_eq!(
            refusal(harness.service.list_pids("c9").await).0,
            Code::NOT_FOUND
        );
    }
}
