// SPDX-License-Identifier: Apache-2.0
//! `vmpod check`: what a node lacks for vmpod, one plain line per check
//! (`ok` or `missing`, what, and why), read from the node beneath a root.
//! Devices, cgroups and files are looked at beneath the root; the kernel's
//! system calls are the running kernel's, which is the node's own.

mod kernel;
mod node;

use std::fmt;

use crate::layout::Root;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The node has it (or does not need it).
    Ok,
    /// The node lacks it; vmpod will not work until it has it.
    Missing,
}

/// One check's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// How it came out.
    pub status: Status,
    /// What was checked.
    pub what: String,
    /// What was found, or why it is missing.
    pub why: String,
}

impl Line {
    fn ok(what: impl Into<String>, why: impl Into<String>) -> Self {
        Line {
            status: Status::Ok,
            what: what.into(),
            why: why.into(),
        }
    }

    fn missing(what: impl Into<String>, why: impl Into<String>) -> Self {
        Line {
            status: Status::Missing,
            what: what.into(),
            why: why.into(),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match self.status {
            Status::Ok => "ok",
            Status::Missing => "missing",
        };
        write!(f, "{status:<8}{}: {}", self.what, self.why)
    }
}

/// Every check of the node beneath `root`, in a fixed order.
pub fn run(root: &Root) -> Vec<Line> {
    let mut lines = vec![
        node::kvm(root),
        node::tun(root),
        Line::ok(
            "/dev/vhost-vsock",
            "not needed (vmpod's vsock is hybrid: Unix sockets on the host)",
        ),
    ];
    lines.extend(kernel::syscalls());
    lines.push(node::cgroups(root));
    lines.push(node::containerd_version(root));
    lines.push(node::containerd_registration(root));
    lines.extend(node::installed_files(root));
    lines
}

/// Whether every line is ok.
pub fn all_ok(lines: &[Line]) -> bool {
    lines.iter().all(|line| line.status == Status::Ok)
}
