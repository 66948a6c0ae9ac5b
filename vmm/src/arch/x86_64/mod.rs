// SPDX-License-Identifier: Apache-2.0
//! x86_64: memory layout, boot protocols, CPUID, MP table and vCPU state.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
