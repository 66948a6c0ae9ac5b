// SPDX-License-Identifier: Apache-2.0
//! How guest drivers reach virtio devices.

pub mod mmio;

pub use mmio::MmioTransport;
