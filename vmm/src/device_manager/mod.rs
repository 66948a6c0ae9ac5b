// SPDX-License-Identifier: Apache-2.0
//! Where devices go in the guest's address space and interrupt lines.

pub mod mmio;
