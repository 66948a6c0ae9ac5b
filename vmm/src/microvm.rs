// SPDX-License-Identifier: Apache-2.0
//! A built microVM, and the same VM once its vCPUs run.

use crate::arch::cpuid::CpuTemplate;
use crate::devices::bus::Bus;
use crate::event_loop::{EventLoop, EventLoopError, Subscriber};
use crate::exit::{ExitNotifier, VmExit};
use crate::seccomp::{install_filter, SeccompError, SeccompFilters, ThreadKind, ThreadLabel};
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
    /// The calling thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
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
    /// With `filters`, every thread runs under its seccomp filter before
    /// the guest runs its first instruction: the device thread and each
    /// vCPU install theirs as they start, then the calling thread (which
    /// goes on to [`RunningMicrovm::wait`]) installs the main filter, and
    /// only then do the vCPUs enter the guest.
    ///
    /// # Errors
    /// [`StartMicrovmError`] if a thread or a filter cannot be set up; the
    /// threads already started are stopped, and the guest never ran.
    pub fn start(
        self,
        filters: Option<&SeccompFilters>,
    ) -> Result<RunningMicrovm, StartMicrovmError> {
        let filter = |kind| filters.map(|f| f.of(kind).clone());
        let event_loop = if self.devices.is_empty() {
            None
        } else {
            Some(EventLoop::start(self.devices, filter(ThreadKind::Devices))?)
        };
        let io = VcpuIo {
            pio: self.pio,
            mmio: self.mmio,
            mem: self.mem.clone(),
            exit: self.exit.clone(),
        };
        let mut handles = Vec::with_capacity(self.vcpus.len());
        let mut started = Ok(());
        for vcpu in self.vcpus {
            match vcpu.start(io.clone(), filter(ThreadKind::Vcpu)) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    started = Err(e.into());
                    break;
                }
            }
        }
        let ready = started
            .and_then(|()| {
                handles
                    .iter()
                    .try_for_each(VcpuHandle::wait_ready)
                    .map_err(StartMicrovmError::from)
            })
            .and_then(|()| match filters {
                Some(f) => install_filter(f.of(ThreadKind::Main), ThreadLabel::MAIN)
                    .map_err(StartMicrovmError::from),
                None => Ok(()),
            });
        if let Err(e) = ready {
            handles.into_iter().for_each(VcpuHandle::stop);
            event_loop.into_iter().for_each(EventLoop::stop);
            return Err(e);
        }
        handles.iter_mut().for_each(VcpuHandle::release);
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
