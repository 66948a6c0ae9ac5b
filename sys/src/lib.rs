// SPDX-License-Identifier: Apache-2.0
//! Small host-side helpers that more than one vmpod crate needs, written
//! once here so that the VMM, the shim, the agent and the tests agree on
//! them. It depends on nothing of vmpod's, so any crate may use it.

pub mod command;
pub mod error;
pub mod id;
pub mod ifname;
pub mod mac;
pub mod mount;
pub mod mountinfo;
pub mod netns;
pub mod openat;
pub mod unix_socket;
