// SPDX-License-Identifier: Apache-2.0
//! The host's `/dev/kvm`: opened once, checked for what vmpod relies on.

use std::sync::Arc;

use kvm_bindings::{CpuId, KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// Capabilities vmpod cannot run without.
const REQUIRED_CAPS: [(Cap, &str); 6] = [
    (Cap::Irqchip, "in-kernel irqchip"),
    (Cap::UserMemory, "user memory regions"),
    (Cap::SetTssAddr, "TSS address"),
    (Cap::Pit2, "in-kernel PIT"),
    (Cap::Irqfd, "irqfd"),
    (Cap::ExtCpuid, "extended CPUID"),
];

/// Errors opening or checking `/dev/kvm`.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The device node is missing or not accessible.
    #[error("Cannot open /dev/kvm (is KVM available and are you allowed to use it?)")]
    Open(#[source] kvm_ioctls::Error),
    /// The node answers no KVM ioctl (e.g. something else mounted there).
    #[error("/dev/kvm is not a KVM device")]
    NotKvm,
    /// An API version other than the stable one.
    #[error("/dev/kvm speaks API version {0}, vmpod needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A capability vmpod relies on is absent.
    #[error("/dev/kvm lacks a required capability: {0}")]
    MissingCapability(&'static str),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("Cannot read the CPUID KVM supports")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// `KVM_GET_MSR_INDEX_LIST` failed.
    #[error("Cannot read the list of MSRs KVM saves and restores")]
    MsrIndexList(#[source] kvm_ioctls::Error),
}

/// An open, checked `/dev/kvm` and what it reported.
#[derive(Debug)]
pub struct KvmContext {
    kvm: Kvm,
    max_vcpus: usize,
    supported_cpuid: CpuId,
    msr_index_list: Arc<[u32]>,
}

impl KvmContext {
    /// Opens `/dev/kvm` and checks its API version and required capabilities.
    ///
    /// # Errors
    /// A [`KvmError`] naming what is missing.
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if version < 0 {
            return Err(KvmError::NotKvm);
        }
        if version != KVM_API_VERSION as i32 {
            return Err(KvmError::ApiVersion(version));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(cap) {
                return Err(KvmError::MissingCapability(name));
            }
        }
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)?;
        let msr_index_list = kvm
            .get_msr_index_list()
            .map_err(KvmError::MsrIndexList)?
            .as_slice()
            .into();
        let max_vcpus = kvm.get_max_vcpus();
        Ok(KvmContext {
            kvm,
            max_vcpus,
            supported_cpuid,
            msr_index_list,
        })
    }

    /// The `Kvm` handle, to create VMs from.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The most vCPUs one VM may have on this host.
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// `KVM_GET_SUPPORTED_CPUID`, the starting point of every vCPU's table.
    pub fn supported_cpuid(&self) -> &CpuId {
        &self.supported_cpuid
    }

    /// `KVM_GET_MSR_INDEX_LIST`: the MSRs a vCPU's saved state holds, read
    /// once and shared by every VM made from this context.
    pub fn msr_index_list(&self) -> &Arc<[u32]> {
        &self.msr_index_list
    }
}
