// SPDX-License-Identifier: Apache-2.0
//! Building a microVM from a snapshot instead of a kernel: the same
//! devices with new back ends, and the saved state put back in order
//! (VM, legacy devices, virtio transports, vCPUs, then the interrupts that
//! were pending).

use std::path::Path;
use std::time::Instant;

use super::{
    attach_legacy_devices, build_cmdline, cmdline_text, create_virtio_devices, lock,
    resolve_cpu_template, serial_output, BuildMicrovmError,
};
use crate::arch::cpuid::build_vcpu_cpuid;
use crate::config::VmConfig;
use crate::device_manager::mmio::{allocate_slots, attach_restored_virtio_device, MmioDeviceError};
use crate::devices::bus::Bus;
use crate::exit::ExitNotifier;
use crate::microvm::{Microvm, MicrovmParts};
use crate::snapshot::{read_snapshot, SnapshotError, SnapshotIdentity, MEMORY_FILE};
use crate::vstate::kvm::KvmContext;
use crate::vstate::memory::guest_memory_from_file;
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;

/// Builds a microVM from the snapshot in `dir` instead of booting: the
/// configuration must describe the VM the snapshot was taken of (same
/// kernel, initrd, command line, memory, vCPUs, CPU template and device
/// kinds), and gives the devices their back ends anew (serial output,
/// taps, vsock socket, shared directories, disks). Guest memory is the
/// snapshot's memory file, mapped copy-on-write.
///
/// # Errors
/// A [`BuildMicrovmError`]: [`BuildMicrovmError::Snapshot`] for a missing,
/// damaged or mismatched snapshot (an input error), others as for a boot.
pub fn restore_microvm(
    config: &VmConfig,
    dir: &Path,
    launched: Instant,
) -> Result<Microvm, BuildMicrovmError> {
    // The snapshot first: a missing or damaged one is the user's to fix,
    // whatever the host.
    let (state, memory_file) = read_snapshot(dir)?;
    let kvm = KvmContext::open()?;
    if usize::from(config.vcpus) > kvm.max_vcpus() {
        return Err(BuildMicrovmError::TooManyVcpus {
            asked: config.vcpus,
            max: kvm.max_vcpus(),
        });
    }
    let template = resolve_cpu_template(&kvm, config.cpu_template)?;
    let identity_error = |source| SnapshotError::Identity {
        path: dir.to_path_buf(),
        source,
    };
    let this =
        SnapshotIdentity::of_hashing_in_parallel(config, template).map_err(identity_error)?;
    state.identity.check(&this).map_err(identity_error)?;
    let mem = guest_memory_from_file(config.memory_mib << 20, &memory_file).map_err(|source| {
        SnapshotError::MapMemory {
            path: dir.join(MEMORY_FILE),
            source,
        }
    })?;
    tracing::debug!(
        "snapshot read and memory mapped after {:?}",
        launched.elapsed()
    );

    let virtio = create_virtio_devices(config)?;
    let slots = allocate_slots(virtio.len())?;
    let switches: Vec<String> = slots.iter().map(|slot| slot.cmdline_switch()).collect();
    let cmdline = build_cmdline(&config.cmdline, template, &switches)?;

    let serial_out = serial_output(config)?;
    let vm = Vm::new(&kvm, &mem)?;
    vm.restore_state(&state.vm)?;
    let exit = ExitNotifier::new();
    let mut pio = Bus::new();
    let mut mmio = Bus::new();
    let legacy = attach_legacy_devices(
        &vm,
        &mut pio,
        &mut mmio,
        serial_out,
        &exit,
        launched,
        Some((&state.serial, &state.i8042)),
    )?;
    let mut subscribers = Vec::with_capacity(virtio.len());
    let mut transports = Vec::with_capacity(virtio.len());
    for ((slot, (device, subscriber)), saved) in
        slots.iter().copied().zip(virtio).zip(&state.devices)
    {
        transports.push(attach_restored_virtio_device(
            &vm, &mut mmio, &mem, slot, device, saved,
        )?);
        subscribers.push(subscriber);
    }

    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for (index, saved) in (0..config.vcpus).zip(&state.vcpus) {
        let vcpu = Vcpu::new(&vm, index)?;
        let cpuid = build_vcpu_cpuid(kvm.supported_cpuid(), template, index, config.vcpus)?;
        vcpu.configure_for_restore(&cpuid)?;
        vcpu.restore_state(saved)?;
        vcpus.push(vcpu);
    }
    // The interrupt controllers' saved state overwrote what the devices
    // raised as they were restored: raise what is pending once more.
    for (slot, transport) in slots.iter().zip(&transports) {
        lock(transport)
            .raise_pending_interrupt()
            .map_err(|e| MmioDeviceError::Restore(slot.base, e))?;
    }
    lock(&legacy.serial)
        .raise_pending_interrupt()
        .map_err(BuildMicrovmError::EventFd)?;
    tracing::info!(
        "restored from {} after {:?}",
        dir.display(),
        launched.elapsed()
    );
    Ok(Microvm::new(MicrovmParts {
        vm,
        mem,
        vcpus,
        pio,
        mmio,
        exit,
        config: config.clone(),
        cpu_template: template,
        cmdline: cmdline_text(&cmdline),
        devices: subscribers,
        transports,
        legacy,
    }))
}
