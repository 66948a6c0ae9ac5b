// SPDX-License-Identifier: Apache-2.0
//! Where a task's process is in its life, and what each verb may do to it
//! there (youki's `ContainerStatus::can_*`): the checks and their refusals
//! are written here once instead of in each handler.
//!
//! ```text
//! Created --start--> Running <--pause/resume--> Paused
//!    |                  |                          |
//!    +---- exit (or the VM's end) -----------------+--> Stopped
//! ```

use std::collections::HashMap;

use ttrpc::Code;

use super::error::status;
use crate::process::Process;
use crate::share::ContainerShare;

/// A process's status, as containerd's State reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Made, waiting for Start.
    Created,
    /// Started and not ended.
    Running,
    /// Started, and its container frozen.
    Paused,
    /// Ended (its exit recorded).
    Stopped,
}

impl TaskStatus {
    /// Start runs only what has not run yet.
    pub fn can_start(self) -> bool {
        self == TaskStatus::Created
    }

    /// Kill reaches anything that has not ended, started or not.
    pub fn can_signal(self) -> bool {
        self != TaskStatus::Stopped
    }

    /// Delete takes what never ran or has ended, not what still runs.
    pub fn can_delete(self) -> bool {
        matches!(self, TaskStatus::Created | TaskStatus::Stopped)
    }

    /// Exec adds processes to a container whose init has not ended.
    pub fn can_exec_in(self) -> bool {
        self != TaskStatus::Stopped
    }

    /// Whether the VM's end is the process's exit: nothing watches a process
    /// before it starts (a started one's monitor records its exit).
    pub fn ends_with_vm(self) -> bool {
        self == TaskStatus::Created
    }
}

impl From<TaskStatus> for containerd_shim::api::Status {
    fn from(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Created => containerd_shim::api::Status::CREATED,
            TaskStatus::Running => containerd_shim::api::Status::RUNNING,
            TaskStatus::Paused => containerd_shim::api::Status::PAUSED,
            TaskStatus::Stopped => containerd_shim::api::Status::STOPPED,
        }
    }
}

/// One container of the pod.
#[derive(Debug)]
pub(super) struct Container {
    /// containerd's bundle directory.
    pub(super) bundle: String,
    /// Its part of the pod's share.
    pub(super) share: ContainerShare,
    /// Its init process.
    pub(super) init: Process,
    /// Its exec'd processes by containerd's exec id.
    pub(super) execs: HashMap<String, Process>,
    /// Whether the agent froze it (Pause, until Resume).
    pub(super) paused: bool,
}

impl Container {
    /// The init process (empty `exec_id`) or exec `exec_id`.
    pub(super) fn process(&self, exec_id: &str) -> Result<&Process, ttrpc::Error> {
        if exec_id.is_empty() {
            Ok(&self.init)
        } else {
            self.execs
                .get(exec_id)
                .ok_or_else(|| exec_not_found(exec_id))
        }
    }

    /// As [`Container::process`], to change it.
    pub(super) fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process, ttrpc::Error> {
        if exec_id.is_empty() {
            Ok(&mut self.init)
        } else {
            self.execs
                .get_mut(exec_id)
                .ok_or_else(|| exec_not_found(exec_id))
        }
    }

    /// The status of one of this container's processes.
    pub(super) fn status_of(&self, process: &Process) -> TaskStatus {
        process.status(self.paused)
    }

    /// The process Start may start: FAILED_PRECONDITION once it was.
    pub(super) fn startable(&self, exec_id: &str) -> Result<&Process, ttrpc::Error> {
        let process = self.process(exec_id)?;
        if !self.status_of(process).can_start() {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{:?} was started already", process.id),
            ));
        }
        Ok(process)
    }

    /// The process Kill may signal: NOT_FOUND once it ended.
    pub(super) fn signalable(&self, exec_id: &str) -> Result<&Process, ttrpc::Error> {
        let process = self.process(exec_id)?;
        if !self.status_of(process).can_signal() {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        Ok(process)
    }

    /// Refuses Delete of the init process (empty `exec_id`) or exec
    /// `exec_id` while it runs: FAILED_PRECONDITION.
    pub(super) fn check_deletable(&self, exec_id: &str) -> Result<(), ttrpc::Error> {
        let process = self.process(exec_id)?;
        if self.status_of(process).can_delete() {
            return Ok(());
        }
        let what = if exec_id.is_empty() {
            format!("container {:?}", process.id.container_id)
        } else {
            format!("exec {exec_id:?}")
        };
        Err(status(
            Code::FAILED_PRECONDITION,
            format!("{what} is running"),
        ))
    }

    /// Refuses Exec of `exec_id` in a container whose init has ended
    /// (FAILED_PRECONDITION) or that has such an exec (ALREADY_EXISTS).
    pub(super) fn check_exec(&self, container_id: &str, exec_id: &str) -> Result<(), ttrpc::Error> {
        if !self.status_of(&self.init).can_exec_in() {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("container {container_id:?} has exited"),
            ));
        }
        if self.execs.contains_key(exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {exec_id:?} exists"),
            ));
        }
        Ok(())
    }

    /// Every process of the container, with its exec id (empty: init).
    pub(super) fn processes(&self) -> impl Iterator<Item = (&str, &Process)> {
        std::iter::once(("", &self.init)).chain(
            self.execs
                .iter()
                .map(|(exec_id, process)| (exec_id.as_str(), process)),
        )
    }
}

fn exec_not_found(exec_id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("exec {exec_id:?} not found"))
}

#[cfg(test)]
mod tests {
    use vmpod_agent_api::ProcessId;

    use super::*;
    use crate::io::StdioPaths;
    use crate::process::Exit;

    fn container() -> Container {
        let mut execs = HashMap::new();
        execs.insert(
            "e1".to_owned(),
            Process::new(ProcessId::exec("c1", "e1.0"), StdioPaths::default(), None),
        );
        Container {
            bundle: "/b".into(),
            share: ContainerShare::new(std::path::Path::new("/nonexistent"), "c1"),
            init: Process::new(ProcessId::init("c1"), StdioPaths::default(), None),
            execs,
            paused: false,
        }
    }

    fn refusal(err: ttrpc::Error) -> (Code, String) {
        match err {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_owned()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_each_status_allows_its_verbs() {
        use TaskStatus::*;
        let verbs = |status: TaskStatus| {
            [
                status.can_start(),
                status.can_signal(),
                status.can_delete(),
                status.can_exec_in(),
                status.ends_with_vm(),
            ]
        };
        assert_eq!(verbs(Created), [true, true, true, true, true]);
        assert_eq!(verbs(Running), [false, true, false, true, false]);
        assert_eq!(verbs(Paused), [false, true, false, true, false]);
        assert_eq!(verbs(Stopped), [false, false, true, false, false]);
    }

    #[test]
    fn test_statuses_map_to_containerds() {
        use containerd_shim::api::Status;
        assert_eq!(Status::from(TaskStatus::Created), Status::CREATED);
        assert_eq!(Status::from(TaskStatus::Running), Status::RUNNING);
        assert_eq!(Status::from(TaskStatus::Paused), Status::PAUSED);
        assert_eq!(Status::from(TaskStatus::Stopped), Status::STOPPED);
    }

    #[test]
    fn test_a_container_refuses_verbs_its_processes_are_not_ready_for() {
        let mut container = container();
        assert_eq!(
            refusal(container.process("e2").unwrap_err()),
            (Code::NOT_FOUND, "exec \"e2\" not found".into())
        );
        assert!(container.startable("").is_ok());
        container.check_deletable("e1").unwrap();
        container.process_mut("").unwrap().set_started();
        container.process_mut("e1").unwrap().set_started();
        assert_eq!(
            refusal(container.startable("").unwrap_err()).0,
            Code::FAILED_PRECONDITION
        );
        assert_eq!(
            refusal(container.check_deletable("").unwrap_err()),
            (
                Code::FAILED_PRECONDITION,
                "container \"c1\" is running".into()
            )
        );
        assert_eq!(
            refusal(container.check_deletable("e1").unwrap_err()),
            (Code::FAILED_PRECONDITION, "exec \"e1\" is running".into())
        );
        assert_eq!(
            refusal(container.check_exec("c1", "e1").unwrap_err()),
            (Code::ALREADY_EXISTS, "exec \"e1\" exists".into())
        );
        container.paused = true;
        assert_eq!(container.status_of(&container.init), TaskStatus::Paused);
        assert!(container.signalable("").is_ok());
        container.init.set_exit(Exit::now(0));
        assert_eq!(
            refusal(container.signalable("").unwrap_err()),
            (Code::NOT_FOUND, "process already finished".into())
        );
        assert_eq!(
            refusal(container.check_exec("c1", "e2").unwrap_err()),
            (
                Code::FAILED_PRECONDITION,
                "container \"c1\" has exited".into()
            )
        );
        container.check_deletable("").unwrap();
        assert_eq!(container.processes().count(), 2);
    }
}
