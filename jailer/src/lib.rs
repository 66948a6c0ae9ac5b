// SPDX-License-Identifier: Apache-2.0
//! `vmpod-jailer`'s pieces: confining `vmpod-vm` as Firecracker's jailer
//! confines Firecracker. The shim uses [`cgroup`] to move itself into the
//! pod's cgroup and [`ids`] to clean up after a killed jail.

pub mod cgroup;
pub mod ids;
pub mod launch;
pub mod privileges;
pub mod root;
pub mod tap;
