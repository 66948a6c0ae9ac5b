// SPDX-License-Identifier: Apache-2.0
//! Wrappers around the KVM objects a microVM is made of.

pub mod kvm;
pub mod memory;
pub mod probe;
pub mod vcpu;
mod vcpu_handle;
pub mod vcpu_state;
pub mod vm;
