// SPDX-License-Identifier: Apache-2.0
//! `vmpod install`, `uninstall` and `check`: vmpod on a node. `install` puts
//! the binaries, the guest kernel and the agent initrd in standard places,
//! writes the shim's config file and registers the runtime with containerd's
//! CRI plugin, all beneath a root directory (the host's `/`, or `/host` in
//! the DaemonSet), recording what it did so that `uninstall` can leave the
//! node as it was. `check` reports what the node lacks. docs/install.md has
//! the files touched and why.

pub mod artifacts;
pub mod check;
pub mod containerd;
pub mod files;
pub mod install;
pub mod layout;
pub mod record;
pub mod restart;
pub mod shim_config;
pub mod uninstall;
