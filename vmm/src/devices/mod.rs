// SPDX-License-Identifier: Apache-2.0
//! Emulated devices and the buses that route guest port and MMIO accesses
//! to them.

pub mod boot_timer;
pub mod bus;
pub mod legacy;
pub mod virtio;
