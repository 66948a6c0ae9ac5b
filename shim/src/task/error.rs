// SPDX-License-Identifier: Apache-2.0
//! The ttrpc statuses the task layer answers with: a code containerd acts on
//! and one line naming the problem.

use ttrpc::Code;
use vmpod_agent_api::ClientError;
use vmpod_sys::error::chain;

use crate::network::NetworkError;
use crate::pod::PodError;

/// Longest container id accepted (as the agent: ids name files and cgroups).
pub(super) const MAX_ID_LEN: usize = 128;
/// Longest exec id accepted: the agent's id for it adds `.` and a number.
pub(super) const MAX_EXEC_ID_LEN: usize = 100;

/// A ttrpc status of `code` with `message`.
pub(super) fn status(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

/// NOT_FOUND for container `id`, which this shim does not have.
pub(super) fn not_found(id: &str) -> ttrpc::Error {
    status(Code::NOT_FOUND, format!("container {id:?} not found"))
}

/// A failure of this shim's own host work: `code` and the error's chain on
/// one line.
pub(super) fn host_status(code: Code, err: &(dyn std::error::Error + 'static)) -> ttrpc::Error {
    status(code, chain(err))
}

/// An agent failure as containerd should see it: the agent's own status
/// code and message when it refused, UNAVAILABLE when it could not be reached.
pub(super) fn agent_status(err: ClientError) -> ttrpc::Error {
    status(err.agent_code().unwrap_or(Code::UNAVAILABLE), chain(&err))
}

/// A failed pod launch as containerd should see it: bad input (the spec's
/// namespace, its routes, the guest's refusal of them) by its own code, so
/// that a caller does not retry what cannot succeed; the rest UNAVAILABLE.
pub(super) fn launch_status(err: PodError) -> ttrpc::Error {
    let code = match &err {
        PodError::Exists { .. } => Code::ALREADY_EXISTS,
        PodError::Network {
            source: NetworkError::Namespace { source, .. },
            ..
        } if source.kind() == std::io::ErrorKind::NotFound => Code::NOT_FOUND,
        PodError::Network {
            source: NetworkError::Namespace { .. } | NetworkError::Route { .. },
            ..
        } => Code::INVALID_ARGUMENT,
        PodError::Network {
            source: NetworkError::Vanished { .. },
            ..
        }
        | PodError::Version { .. } => Code::FAILED_PRECONDITION,
        PodError::GuestNetwork { source, .. } => source.agent_code().unwrap_or(Code::UNAVAILABLE),
        _ => Code::UNAVAILABLE,
    };
    host_status(code, &err)
}

/// Checks a container or exec id of at most `max` bytes, as the agent will:
/// ids name directories in the share and in the guest.
pub(super) fn check_id(what: &str, id: &str, max: usize) -> Result<(), ttrpc::Error> {
    if vmpod_sys::id::is_valid(id, max) {
        Ok(())
    } else {
        Err(status(
            Code::INVALID_ARGUMENT,
            format!("{what} {id:?}: want 1 to {max} of {}", vmpod_sys::id::RULE),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ids_that_could_name_other_paths_are_refused() {
        for good in ["c1", "a.b-c_d", &"x".repeat(MAX_ID_LEN)] {
            assert!(check_id("container", good, MAX_ID_LEN).is_ok(), "{good}");
        }
        let too_long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", "ä", &too_long] {
            let err = check_id("container", bad, MAX_ID_LEN).unwrap_err();
            assert!(err.to_string().contains("want 1 to 128"), "{bad}: {err}");
        }
        // An exec's agent id (`<id>.<number>`) stays within the agent's limit.
        let longest = format!("{}.{}", "x".repeat(MAX_EXEC_ID_LEN), u64::MAX);
        assert!(longest.len() <= MAX_ID_LEN);
        let too_long = "x".repeat(MAX_EXEC_ID_LEN + 1);
        assert!(check_id("exec", &too_long, MAX_EXEC_ID_LEN).is_err());
    }

    #[test]
    fn test_an_id_refusal_states_the_rule() {
        match check_id("exec", "a/b", MAX_EXEC_ID_LEN).unwrap_err() {
            ttrpc::Error::RpcStatus(status) => {
                assert_eq!(status.code(), Code::INVALID_ARGUMENT);
                assert_eq!(
                    status.message(),
                    "exec \"a/b\": want 1 to 100 of [A-Za-z0-9_.-], not starting with '.'"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_agent_refusals_keep_their_code() {
        let refused = ClientError::Rpc {
            method: "StartContainer",
            source: ttrpc::Error::RpcStatus(ttrpc::get_status(
                Code::NOT_FOUND,
                "no such container",
            )),
        };
        match agent_status(refused) {
            ttrpc::Error::RpcStatus(status) => {
                assert_eq!(status.code(), Code::NOT_FOUND);
                assert!(status.message().contains("no such container"));
            }
            other => panic!("{other:?}"),
        }
        let lost = ClientError::Rpc {
            method: "WaitProcess",
            source: ttrpc::Error::LocalClosed,
        };
        match agent_status(lost) {
            ttrpc::Error::RpcStatus(status) => assert_eq!(status.code(), Code::UNAVAILABLE),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn test_launch_failures_say_whether_a_retry_can_help() {
        let code = |err: PodError| match launch_status(err) {
            ttrpc::Error::RpcStatus(status) => (status.code(), status.message().to_owned()),
            other => panic!("{other:?}"),
        };
        let pod = || "p".to_owned();
        let missing = PodError::Network {
            pod: pod(),
            source: NetworkError::Namespace {
                path: "/nonexistent".into(),
                source: std::io::ErrorKind::NotFound.into(),
            },
        };
        assert_eq!(code(missing).0, Code::NOT_FOUND);
        let route = PodError::Network {
            pod: pod(),
            source: NetworkError::Route {
                netns: "/var/run/netns/n".into(),
                destination: "default".into(),
                why: "has several next hops",
            },
        };
        assert_eq!(code(route).0, Code::INVALID_ARGUMENT);
        let refused = PodError::GuestNetwork {
            pod: pod(),
            source: ClientError::Rpc {
                method: "UpdateRoutes",
                source: ttrpc::Error::RpcStatus(ttrpc::get_status(
                    Code::FAILED_PRECONDITION,
                    "adding route to default: Invalid argument",
                )),
            },
        };
        let (refused_code, message) = code(refused);
        assert_eq!(refused_code, Code::FAILED_PRECONDITION);
        assert_eq!(
            message,
            "pod p: configuring the guest's network: agent UpdateRoutes: \
             adding route to default: Invalid argument"
        );
        let timeout = PodError::Timeout {
            pod: pod(),
            seconds: 1,
            log: String::new(),
        };
        assert_eq!(code(timeout).0, Code::UNAVAILABLE);
    }

    #[test]
    fn test_a_host_failure_is_one_line_with_its_cause() {
        let err = PodError::Host {
            pod: "p".into(),
            what: "create",
            path: "/run/vmpod/p".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        match launch_status(err) {
            ttrpc::Error::RpcStatus(status) => {
                assert_eq!(status.code(), Code::UNAVAILABLE);
                assert_eq!(
                    status.message(),
                    "pod p: create /run/vmpod/p: permission denied"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
