// SPDX-License-Identifier: Apache-2.0
//! Exec, which records another process of a container for Start to run, and
//! the requests on a process's stdio: ResizePty and CloseIO.

use containerd_shim::api::{CloseIORequest, Empty, ExecProcessRequest, ResizePtyRequest};
use containerd_shim::protos::events::task::TaskExecAdded;
use containerd_shim::protos::topics;
use ttrpc::Code;
use vmpod_agent_api::ProcessId;

use super::error::{agent_status, check_id, status, MAX_EXEC_ID_LEN};
use super::TaskService;
use crate::io::StdioPaths;
use crate::process::Process;

impl TaskService {
    /// Exec: a valid exec id and OCI process, in a container whose init has
    /// not ended; TaskExecAdded follows.
    pub(super) async fn add_exec(&self, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        check_id("exec", &req.exec_id, MAX_EXEC_ID_LEN)?;
        let spec = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .filter(|value| !value.is_empty())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "exec without a process spec"))?;
        if serde_json::from_slice::<oci_spec::runtime::Process>(&spec).is_err() {
            return Err(status(
                Code::INVALID_ARGUMENT,
                "exec: the process spec is not an OCI process (JSON)",
            ));
        }
        self.with_container(&req.id, |container| {
            container.check_exec(&req.id, &req.exec_id)?;
            let stdio = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            // The agent keeps a process until its container goes, and
            // containerd may reuse an exec id once it deleted the exec:
            // each exec gets an agent id of its own.
            let agent_id = format!("{}.{}", req.exec_id, self.next_exec());
            container.execs.insert(
                req.exec_id.clone(),
                Process::new(ProcessId::exec(&req.id, &agent_id), stdio, Some(spec)),
            );
            Ok(())
        })?;
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(Empty::new())
    }

    /// ResizePty: the agent resizes the process's terminal.
    pub(super) async fn resize_pty_of(&self, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let handle = self.handle_for(&req.id)?;
        let process_id = self.with_container(&req.id, |container| {
            Ok(container.process(&req.exec_id)?.id.clone())
        })?;
        handle
            .agent
            .resize_tty(&process_id, req.height, req.width)
            .await
            .map_err(agent_status)?;
        Ok(Empty::new())
    }

    /// CloseIO: the process's stdin ends once what containerd wrote is passed on.
    pub(super) fn close_io_of(&self, req: &CloseIORequest) -> ttrpc::Result<Empty> {
        self.with_container(&req.id, |container| {
            if req.stdin {
                container.process(&req.exec_id)?.close_stdin();
            }
            Ok(Empty::new())
        })
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim::api::Status;
    use protobuf::well_known_types::any::Any;
    use protobuf::MessageField;

    use super::*;
    use crate::task::fake::{refusal, Harness};

    fn exec_with(id: &str, exec_id: &str, spec: Option<&[u8]>) -> ExecProcessRequest {
        ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: spec.map_or_else(MessageField::none, |value| {
                MessageField::some(Any {
                    value: value.to_vec(),
                    ..Default::default()
                })
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn test_exec_adds_a_created_process_and_publishes_exec_added() {
        let harness = Harness::new();
        harness.started("c1").await;
        let calls = harness.agent.calls().len();
        harness.exec("c1", "e1").await.unwrap();
        assert_eq!(harness.status("c1", "e1").unwrap(), Status::CREATED);
        let event = harness.events.one::<TaskExecAdded>();
        assert_eq!(
            (event.container_id.as_str(), event.exec_id.as_str()),
            ("c1", "e1")
        );
        // Nothing reaches the agent before Start.
        assert_eq!(harness.agent.calls().len(), calls);
        assert_eq!(
            refusal(harness.exec("c1", "e1").await),
            (Code::ALREADY_EXISTS, "exec \"e1\" exists".into())
        );
        assert_eq!(
            refusal(harness.exec("c9", "e1").await),
            (Code::NOT_FOUND, "container \"c9\" not found".into())
        );
    }

    #[tokio::test]
    async fn test_exec_refuses_bad_ids_and_specs() {
        let harness = Harness::new();
        harness.started("c1").await;
        let (code, message) = refusal(harness.exec("c1", ".e").await);
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(
            message.starts_with("exec \".e\": want 1 to 100"),
            "{message}"
        );
        assert_eq!(
            refusal(harness.service.add_exec(exec_with("c1", "e1", None)).await),
            (Code::INVALID_ARGUMENT, "exec without a process spec".into())
        );
        assert_eq!(
            refusal(
                harness
                    .service
                    .add_exec(exec_with("c1", "e1", Some(b"[1]")))
                    .await
            ),
            (
                Code::INVALID_ARGUMENT,
                "exec: the process spec is not an OCI process (JSON)".into()
            )
        );
        assert!(harness.events.all::<TaskExecAdded>().is_empty());
    }

    #[tokio::test]
    async fn test_exec_in_an_exited_container_is_failed_precondition() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness
            .agent
            .exit(&vmpod_agent_api::ProcessId::init("c1"), 0);
        harness
            .events
            .wait_for::<containerd_shim::protos::events::task::TaskExit>(1)
            .await;
        assert_eq!(
            refusal(harness.exec("c1", "e1").await),
            (
                Code::FAILED_PRECONDITION,
                "container \"c1\" has exited".into()
            )
        );
    }

    #[tokio::test]
    async fn test_a_reused_exec_id_gets_a_new_agent_id() {
        let harness = Harness::new();
        harness.started("c1").await;
        harness.exec("c1", "e1").await.unwrap();
        harness
            .service
            .delete_process(containerd_shim::api::DeleteRequest {
                id: "c1".into(),
                exec_id: "e1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        harness.exec("c1", "e1").await.unwrap();
        harness.start("c1", "e1").await.unwrap();
        assert!(harness.agent.called("ExecProcess c1/e1.1"));
    }

    #[tokio::test]
    async fn test_resize_pty_reaches_the_process() {
        let harness = Harness::new();
        harness.started("c1").await;
        let resize = |exec_id: &str| ResizePtyRequest {
            id: "c1".into(),
            exec_id: exec_id.into(),
            width: 80,
            height: 24,
            ..Default::default()
        };
        harness.service.resize_pty_of(resize("")).await.unwrap();
        assert!(harness.agent.called("TtyWinResize c1/ 24x80"));
        assert_eq!(
            refusal(harness.service.resize_pty_of(resize("e1")).await),
            (Code::NOT_FOUND, "exec \"e1\" not found".into())
        );
        harness
            .agent
            .refuse("TtyWinResize", Code::FAILED_PRECONDITION, "no terminal");
        assert_eq!(
            refusal(harness.service.resize_pty_of(resize("")).await).0,
            Code::FAILED_PRECONDITION
        );
    }

    /// A FIFO at `path`, as containerd makes for a process's stdio.
    fn fifo(path: &std::path::Path) {
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    }

    #[tokio::test]
    async fn test_close_io_passes_the_input_on_and_closes_stdin() {
        let harness = Harness::new();
        let bundle = harness.bundle("c1");
        let stdin = bundle.join("stdin");
        fifo(&stdin);
        harness
            .service
            .create_task(containerd_shim::api::CreateTaskRequest {
                id: "c1".into(),
                bundle: bundle.display().to_string(),
                stdin: stdin.display().to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
        harness.start("c1", "").await.unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&stdin)
            .and_then(|mut writer| std::io::Write::write_all(&mut writer, b"input"))
            .unwrap();
        let close = CloseIORequest {
            id: "c1".into(),
            stdin: true,
            ..Default::default()
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !harness.agent.called("CloseStdin"),
            "{:?}",
            harness.agent.calls()
        );
        harness.service.close_io_of(&close).unwrap();
        for _ in 0..500 {
            if harness.agent.called("CloseStdin c1/") {
                assert!(
                    harness.agent.called("WriteStdin c1/"),
                    "{:?}",
                    harness.agent.calls()
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("stdin not closed: {:?}", harness.agent.calls());
    }

    #[tokio::test]
    async fn test_close_io_names_the_process() {
        let harness = Harness::new();
        harness.started("c1").await;
        let close = |exec_id: &str| CloseIORequest {
            id: "c1".into(),
            exec_id: exec_id.into(),
            stdin: true,
            ..Default::default()
        };
        harness.service.close_io_of(&close("")).unwrap();
        assert_eq!(
            refusal(harness.service.close_io_of(&close("e1"))),
            (Code::NOT_FOUND, "exec \"e1\" not found".into())
        );
        let mut unknown = close("");
        unknown.id = "c9".into();
        assert_eq!(
            refusal(harness.service.close_io_of(&unknown)).0,
            Code::NOT_FOUND
        );
    }
}
