// SPDX-License-Identifier: Apache-2.0
//! A built microVM, and the same VM once its vCPUs run.

use crate::arch::cpuid::CpuTemplate;
use crate::devices::bus::Bus;
use crate::event_loop::{EventLoop, EventLoopError, Subscriber};
use crate::exit::{ExitNotifier, VmExit};
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuHandle, VcpuIo};
use crate::vstate::vm::Vm;

/// A VM with its kernel loaded and vCPUs configured, not yet running.
pub struct Microvm {
    // Field order is drop order: vCPUs and the VM go before the memory
    // they were given.
    vcpus: Vec<Vcpu>,
    vm: Vm,
    mem: GuestMemoryMmap,
    pio: Bus,
    mmio: Bus,
    exit: ExitNotifier,
    cpu_template: CpuTemplate,
    cmdline: String,
    devices: Vec<Subscriber>,
}

impl std::fmt::Debug for Microvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microvm")
            .field("vcpus", &self.vcpus.len())
            .field("cpu_template", &self.cpu_template)
            .field("cmdline", &self.cmdline)
            .field("devices", &self.devices.len())
            .finish_non_exhaustive()
    }
}

/// Errors starting a built microVM.
#[derive(Debug, thiserror::Error)]
pub enum StartMicrovmError {
    /// A vCPU thread could not start.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// The device event loop could not start.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
}

impl Microvm {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vm: Vm,
        mem: GuestMemoryMmap,
        vcpus: Vec<Vcpu>,
        pio: Bus,
        mmio: Bus,
        exit: ExitNotifier,
        cpu_template: CpuTemplate,
        cmdline: String,
        devices: Vec<Subscriber>,
    ) -> Self {
        Microvm {
            vcpus,
            vm,
            mem,
            pio,
            mmio,
            exit,
            cpu_template,
            cmdline,
            devices,
        }
    }

    /// The CPU template in effect (never `auto`).
    pub fn cpu_template(&self) -> CpuTemplate {
        self.cpu_template
    }

    /// The kernel command line the guest was given.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Guest memory, e.g. for tests to place code in.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Starts the device event loop (when there are devices) and every vCPU.
    ///
    /// # Errors
    /// [`StartMicrovmError`] if a thread cannot start; the ones already
    /// started are stopped.
    pub fn start(self) -> Result<RunningMicrovm, StartMicrovmError> {
        let event_loop = if self.devices.is_empty() {
            None
        } else {
            Some(EventLoop::start(self.devices)?)
        };
        let io = VcpuIo {
            pio: self.pio,
            mmio: self.mmio,
            mem: self.mem.clone(),
            exit: self.exit.clone(),
        };
        let mut handles = Vec::with_capacity(self.vcpus.len());
        for vcpu in self.vcpus {
            match vcpu.start(io.clone()) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    self.exit.notify(VmExit::VcpuFailure {
                        vcpu: handles.len() as u8,
                        reason: e.to_string(),
                    });
                    handles.into_iter().for_each(VcpuHandle::stop);
                    event_loop.into_iter().for_each(EventLoop::stop);
                    return Err(e.into());
                }
            }
        }
        Ok(RunningMicrovm {
            handles,
            event_loop,
            exit: self.exit,
            _vm: self.vm,
            _mem: self.mem,
        })
    }
}

/// A microVM whose vCPUs run.
#[derive(Debug)]
pub struct RunningMicrovm {
    handles: Vec<VcpuHandle>,
    event_loop: Option<EventLoop>,
    exit: ExitNotifier,
    _vm: Vm,
    _mem: GuestMemoryMmap,
}

impl RunningMicrovm {
    /// Waits for the VM to end, stops every vCPU, and says why it ended.
    pub fn wait(self) -> VmExit {
        let end = self.exit.wait();
        self.handles.into_iter().for_each(VcpuHandle::stop);
        self.event_loop.into_iter().for_each(EventLoop::stop);
        end
    }

    /// Ends the VM from the host side (e.g. on a timeout) with `reason`.
    pub fn kill(self, reason: VmExit) -> VmExit {
        self.exit.notify(reason);
        self.wait()
    }
}
