// SPDX-License-Identifier: Apache-2.0
//! Kill, the agent signalling a process that has not ended, and Wait, which
//! returns once the process's exit is recorded.

use containerd_shim::api::{Empty, KillRequest, WaitRequest, WaitResponse};
use protobuf::MessageField;
use ttrpc::Code;

use super::error::{agent_status, status};
use super::TaskService;
use crate::process::{Exit, LOST_STATUS};

impl TaskService {
    /// Kill: NOT_FOUND for a process that has ended.
    pub(super) async fn kill_process(&self, req: KillRequest) -> ttrpc::Result<Empty> {
        let handle = self.handle_for(&req.id)?;
        let process_id = self.with_container(&req.id, |container| {
            Ok(container.signalable(&req.exec_id)?.id.clone())
        })?;
        match handle
            .agent
            .signal_process(&process_id, req.signal, req.all)
            .await
        {
            Ok(()) => Ok(Empty::new()),
            // The process ended and its exit is on its way (its output is
            // still draining): containerd, as with runc's shim, takes
            // NOT_FOUND as "already finished" and waits for the exit.
            Err(err) if err.agent_code() == Some(Code::FAILED_PRECONDITION) => {
                Err(status(Code::NOT_FOUND, vmpod_sys::error::chain(&err)))
            }
            Err(err) => Err(agent_status(err)),
        }
    }

    /// Wait: the process's exit, once there is one.
    pub(super) async fn wait_exit(&self, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let mut exit = self.with_container(&req.id, |container| {
            Ok(container.process(&req.exec_id)?.exit_watch())
        })?;
        let exit = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| status(Code::NOT_FOUND, "the process went away"))?
            .clone()
            .unwrap_or_else(|| Exit::now(LOST_STATUS));
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use containerd_shim::protos::events::task::TaskExit;
    use vmpod_agent_api::ProcessId;

    use super::*;
    use crate::task::fake::{refusal, Harness, EXITED_AT_NS};

    fn kill(id: &str, exec_id: &str, signal: u32, all: bool) -> KillRequest {
        KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        }
    }

    fn wait(id: &str, exec_id: &str) -> WaitRequest {
        WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn test_kill_signals_the_process_in_the_agent() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.exec("c1", "e1").await.unwrap();
        harness
            .service
            .kill_process(kill("c1", "", 9, true))
            .await
            .unwrap();
        // An exec not started yet can be signalled too (the agent decides).
        harness
            .service
            .kill_process(kill("c1", "e1", 15, false))
            .await
            .unwrap();
        let calls = harness.agent.calls();
        assert!(
            calls.contains(&"SignalProcess c1/ 9 all=true".to_owned()),
            "{calls:?}"
        );
        assert!(
            calls.contains(&"SignalProcess c1/e1.0 15 all=false".to_owned()),
            "{calls:?}"
        );
        assert_eq!(
            refusal(
                harness
                    .service
                    .kill_process(kill("c1", "e9", 9, false))
                    .await
            ),
            (Code::NOT_FOUND, "exec \"e9\" not found".into())
        );
    }

    #[tokio::test]
    async fn test_kill_of_an_ended_process_is_not_found() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.agent.exit(&ProcessId::init("c1"), 0);
        harness.events.wait_for::<TaskExit>(1).await;
        assert_eq!(
            refusal(harness.service.kill_process(kill("c1", "", 9, false)).await),
            (Code::NOT_FOUND, "process already finished".into())
        );
        assert!(!harness.agent.called("SignalProcess"));
    }

    #[tokio::test]
    async fn test_kill_keeps_the_agents_refusal() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness
            .agent
            .refuse("SignalProcess", Code::INVALID_ARGUMENT, "bad signal");
        assert_eq!(
            refusal(
                harness
                    .service
                    .kill_process(kill("c1", "", 99, false))
                    .await
            ),
            (
                Code::INVALID_ARGUMENT,
                "agent SignalProcess: bad signal".into()
            )
        );
    }

    #[tokio::test]
    async fn test_kill_of_a_process_the_agent_saw_end_is_not_found() {
        // Its exit is still on its way to the shim (output draining).
        let harness = Harness::new();
        harness.started("c1").await;
        harness.agent.refuse(
            "SignalProcess",
            Code::FAILED_PRECONDITION,
            "process c1 has already exited",
        );
        assert_eq!(
            refusal(
                harness
                    .service
                    .kill_process(kill("c1", "", 15, false))
                    .await
            ),
            (
                Code::NOT_FOUND,
                "agent SignalProcess: process c1 has already exited".into()
            )
        );
    }

    #[tokio::test]
    async fn test_wait_returns_once_the_process_has_exited() {
        let harness = Harness::new();
        harness.started("c1").await;
        let service = &harness.service;
        let waiting = service.wait_exit(wait("c1", ""));
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "Wait returned before the exit"
        );
        harness.agent.exit(&ProcessId::init("c1"), 7);
        let response = waiting.await.unwrap();
        assert_eq!(response.exit_status, 7);
        assert_eq!(
            response.exited_at.seconds,
            Exit::at_nanos(7, EXITED_AT_NS).at.seconds
        );
        // And at once for a process that has exited.
        let again = service.wait_exit(wait("c1", "")).await.unwrap();
        assert_eq!(again.exit_status, 7);
        assert_eq!(
            refusal(service.wait_exit(wait("c1", "e1")).await),
            (Code::NOT_FOUND, "exec \"e1\" not found".into())
        );
    }

    #[tokio::test]
    async fn test_wait_for_a_process_never_started_ends_with_its_vm() {
        let harness = Harness::new();
        harness.created("c1").await;
        let waiting = harness.service.wait_exit(wait("c1", ""));
        harness.launcher.end_vm("signal: 9 (SIGKILL)");
        let response = waiting.await.unwrap();
        assert_eq!(response.exit_status, LOST_STATUS);
    }
}
