// SPDX-License-Identifier: Apache-2.0
//! How a request to the agent fails, and how that reads on one line.

/// Failures of [`AgentClient`](crate::AgentClient).
///
/// A failed connect gives its I/O error as the cause (`source()`),
/// printed after this error by `vmpod_sys::error::chain`. A failed request
/// is text, not a cause: a refusal's status message is already the
/// agent's whole chain on one line, and ttrpc's own errors print their
/// cause in their message (a chain would repeat it).
#[derive(Debug)]
pub enum ClientError {
    /// Cannot connect to the agent's socket.
    Connect {
        /// The socket.
        path: String,
        /// The connect error (no such socket, refused).
        source: std::io::Error,
    },
    /// The VMM did not accept the vsock connection to the agent's port.
    Handshake {
        /// The agent's vsock port.
        port: u32,
        /// What the VMM said or did.
        reason: String,
    },
    /// The agent answered with an error, or the connection failed.
    Rpc {
        /// The request.
        method: &'static str,
        /// The agent's status (its refusal) or the transport's error.
        source: ttrpc::Error,
    },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect { path, .. } => write!(f, "cannot connect to {path}"),
            ClientError::Handshake { port, reason } => {
                write!(f, "the VMM refused vsock port {port}: {reason}")
            }
            ClientError::Rpc {
                method,
                source: ttrpc::Error::RpcStatus(status),
            } => write!(f, "agent {method}: {}", status.message()),
            ClientError::Rpc { method, source } => write!(f, "agent {method}: {source}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Connect { source, .. } => Some(source),
            ClientError::Handshake { .. } | ClientError::Rpc { .. } => None,
        }
    }
}

impl ClientError {
    /// The agent's status for a request it refused, if that is what
    /// happened.
    fn refusal(&self) -> Option<&ttrpc::proto::Status> {
        match self {
            ClientError::Rpc {
                source: ttrpc::Error::RpcStatus(status),
                ..
            } => Some(status),
            _ => None,
        }
    }

    /// The agent's own message for a request it refused (its gRPC status
    /// message), if that is what happened.
    pub fn agent_message(&self) -> Option<&str> {
        self.refusal().map(ttrpc::proto::Status::message)
    }

    /// The agent's own status code for a request it refused, if that is
    /// what happened.
    pub fn agent_code(&self) -> Option<ttrpc::Code> {
        self.refusal().map(ttrpc::proto::Status::code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_a_refusal_reads_as_the_agents_message() {
        let refused = ClientError::Rpc {
            method: "UpdateRoutes",
            source: ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::FAILED_PRECONDITION,
                "adding route to 198.18.10.0/24: Invalid argument (os error 22)",
            )),
        };
        let text =
            "agent UpdateRoutes: adding route to 198.18.10.0/24: Invalid argument (os error 22)";
        assert_eq!(refused.to_string(), text);
        assert_eq!(vmpod_sys::error::chain(&refused), text);
        assert_eq!(refused.agent_code(), Some(ttrpc::Code::FAILED_PRECONDITION));
        assert!(refused.agent_message().unwrap().starts_with("adding route"));
    }

    #[test]
    fn test_a_transport_failure_reads_as_ttrpcs_message() {
        let lost = ClientError::Rpc {
            method: "WaitProcess",
            source: ttrpc::Error::LocalClosed,
        };
        let text = "agent WaitProcess: ttrpc err: local stream closed";
        assert_eq!(lost.to_string(), text);
        assert_eq!(vmpod_sys::error::chain(&lost), text);
        assert_eq!(lost.agent_code(), None);
        assert_eq!(lost.agent_message(), None);
    }

    #[test]
    fn test_a_failed_connect_names_the_socket_then_the_cause() {
        let err = ClientError::Connect {
            path: "/run/agent.sock".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(err.to_string(), "cannot connect to /run/agent.sock");
        assert_eq!(
            vmpod_sys::error::chain(&err),
            format!(
                "cannot connect to /run/agent.sock: {}",
                std::io::Error::from(std::io::ErrorKind::NotFound)
            )
        );
    }
}
