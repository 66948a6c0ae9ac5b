// SPDX-License-Identifier: Apache-2.0
//! A built microVM, and the same VM once its vCPUs run: its end, and its
//! pause, resume and snapshot through the control socket.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::api::{ApiError, ApiHandler, ApiRequest, ApiSocket, SocketFile};
use crate::arch::cpuid::CpuTemplate;
use crate::builder::LegacyDevices;
use crate::config::VmConfig;
use crate::devices::bus::Bus;
use crate::devices::virtio::transport::mmio::MmioTransport;
use crate::event_loop::{EventLoop, EventLoopError, Subscriber};
use crate::exit::{ExitNotifier, VmExit};
use crate::seccomp::{install_filter, SeccompError, SeccompFilters, ThreadKind, ThreadLabel};
use crate::snapshot::{write_snapshot, MicrovmState, SnapshotIdentity};
use crate::vstate::memory::GuestMemoryMmap;
use crate::vstate::vcpu::{Vcpu, VcpuError, VcpuHandle, VcpuIo};
use crate::vstate::vm::Vm;

/// The parts of a built VM, as the builder hands them over.
pub(crate) struct MicrovmParts {
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
    pub vcpus: Vec<Vcpu>,
    pub pio: Bus,
    pub mmio: Bus,
    pub exit: ExitNotifier,
    pub config: VmConfig,
    pub cpu_template: CpuTemplate,
    pub cmdline: String,
    pub devices: Vec<Subscriber>,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub legacy: LegacyDevices,
}

/// A VM with its kernel loaded (or its state restored) and vCPUs
/// configured, not yet running.
pub struct Microvm {
    parts: MicrovmParts,
}

impl std::fmt::Debug for Microvm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Microvm")
            .field("vcpus", &self.parts.vcpus.len())
            .field("cpu_template", &self.parts.cpu_template)
            .field("cmdline", &self.parts.cmdline)
            .field("devices", &self.parts.devices.len())
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
    /// The control socket's thread could not start.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl Microvm {
    pub(crate) fn new(parts: MicrovmParts) -> Self {
        Microvm { parts }
    }

    /// The CPU template in effect (never `auto`).
    pub fn cpu_template(&self) -> CpuTemplate {
        self.parts.cpu_template
    }

    /// The kernel command line the guest was given.
    pub fn cmdline(&self) -> &str {
        &self.parts.cmdline
    }

    /// Guest memory, e.g. for tests to place code in.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.parts.mem
    }

    /// Starts the device event loop (when there are devices), the control
    /// socket's thread (with `api`) and every vCPU. With `filters`, every
    /// thread runs under its seccomp filter before the guest runs its
    /// first instruction: the device, API and vCPU threads install theirs
    /// as they start, then the calling thread (which goes on to
    /// [`RunningMicrovm::wait`]) installs the main filter, and only then do
    /// the vCPUs enter the guest.
    ///
    /// # Errors
    /// [`StartMicrovmError`] if a thread or a filter cannot be set up; the
    /// threads already started are stopped, and the guest never ran.
    pub fn start(
        self,
        filters: Option<&SeccompFilters>,
        api: Option<ApiSocket>,
    ) -> Result<RunningMicrovm, StartMicrovmError> {
        let parts = self.parts;
        let filter = |kind| filters.map(|f| f.of(kind).clone());
        let event_loop = if parts.devices.is_empty() {
            None
        } else {
            Some(EventLoop::start(
                parts.devices,
                filter(ThreadKind::Devices),
            )?)
        };
        let io = VcpuIo {
            pio: parts.pio,
            mmio: parts.mmio,
            mem: parts.mem.clone(),
            exit: parts.exit.clone(),
        };
        let mut handles = Vec::with_capacity(parts.vcpus.len());
        let mut started = Ok(());
        for vcpu in parts.vcpus {
            match vcpu.start(io.clone(), filter(ThreadKind::Vcpu)) {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    started = Err(e.into());
                    break;
                }
            }
        }
        let control = Arc::new(VmControl {
            inner: Mutex::new(ControlState {
                paused: false,
                handles,
                event_loop,
                vm: parts.vm,
                mem: parts.mem,
                transports: parts.transports,
                legacy: parts.legacy,
                config: parts.config,
                cpu_template: parts.cpu_template,
            }),
        });
        let ready = started
            .and_then(|()| {
                control
                    .state()
                    .handles
                    .iter()
                    .try_for_each(VcpuHandle::wait_ready)
                    .map_err(StartMicrovmError::from)
            })
            .and_then(|()| {
                api.map(|socket| socket.serve(control.clone(), filter(ThreadKind::Api)))
                    .transpose()
                    .map_err(StartMicrovmError::from)
            })
            .and_then(|socket| match filters {
                Some(f) => install_filter(f.of(ThreadKind::Main), ThreadLabel::MAIN)
                    .map(|()| socket)
                    .map_err(StartMicrovmError::from),
                None => Ok(socket),
            });
        let api_socket = match ready {
            Ok(socket) => socket,
            Err(e) => {
                control.stop_threads();
                return Err(e);
            }
        };
        control
            .state()
            .handles
            .iter_mut()
            .for_each(VcpuHandle::release);
        Ok(RunningMicrovm {
            control,
            exit: parts.exit,
            _api_socket: api_socket,
        })
    }
}

/// A running VM's threads and what a snapshot reads, behind one lock: the
/// API thread pauses and snapshots under it, the main thread stops the
/// threads under it at the VM's end.
struct ControlState {
    paused: bool,
    handles: Vec<VcpuHandle>,
    event_loop: Option<EventLoop>,
    vm: Vm,
    mem: GuestMemoryMmap,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
    legacy: LegacyDevices,
    config: VmConfig,
    cpu_template: CpuTemplate,
}

/// Pause, resume and snapshot of a running VM.
struct VmControl {
    inner: Mutex<ControlState>,
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    vmpod_sys::error::chain(error).to_string()
}

impl VmControl {
    fn state(&self) -> MutexGuard<'_, ControlState> {
        lock(&self.inner)
    }

    /// Stops every thread (the VM ended, or never started).
    fn stop_threads(&self) {
        let mut state = self.state();
        std::mem::take(&mut state.handles)
            .into_iter()
            .for_each(VcpuHandle::stop);
        state
            .event_loop
            .take()
            .into_iter()
            .for_each(EventLoop::stop);
    }

    fn pause(&self) -> Result<(), String> {
        let mut state = self.state();
        if state.paused {
            return Ok(());
        }
        // vCPUs first: once none runs, the guest queues no new work.
        for handle in &state.handles {
            handle.pause().map_err(|e| one_line(&e))?;
        }
        if let Some(event_loop) = &state.event_loop {
            event_loop.pause().map_err(|e| one_line(&e))?;
        }
        state.paused = true;
        tracing::info!("VM paused");
        Ok(())
    }

    fn resume(&self) -> Result<(), String> {
        let mut state = self.state();
        if !state.paused {
            return Ok(());
        }
        if let Some(event_loop) = &state.event_loop {
            event_loop.resume();
        }
        for handle in &state.handles {
            handle.resume().map_err(|e| one_line(&e))?;
        }
        state.paused = false;
        tracing::info!("VM resumed");
        Ok(())
    }

    fn snapshot(&self, dir: &Path) -> Result<(), String> {
        let state = self.state();
        if !state.paused {
            return Err("the VM is running: pause it before a snapshot".into());
        }
        let started = std::time::Instant::now();
        let identity =
            SnapshotIdentity::of(&state.config, state.cpu_template).map_err(|e| one_line(&e))?;
        let vm = state.vm.save_state().map_err(|e| one_line(&e))?;
        let vcpus = state
            .handles
            .iter()
            .map(VcpuHandle::save_state)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| one_line(&e))?;
        let serial = lock(&state.legacy.serial).save_state();
        let i8042 = lock(&state.legacy.i8042).save_state();
        let devices = state
            .transports
            .iter()
            .map(|transport| lock(transport).save_state())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| one_line(&e))?;
        let snapshot = MicrovmState {
            identity,
            vm,
            vcpus,
            serial,
            i8042,
            devices,
        };
        write_snapshot(dir, &snapshot, &state.mem).map_err(|e| one_line(&e))?;
        tracing::info!(
            "snapshot written to {} in {:?}",
            dir.display(),
            started.elapsed()
        );
        Ok(())
    }
}

impl ApiHandler for VmControl {
    fn handle(&self, request: ApiRequest) -> Result<Option<serde_json::Value>, String> {
        match request {
            ApiRequest::State => {
                let state = if self.state().paused {
                    "Paused"
                } else {
                    "Running"
                };
                Ok(Some(serde_json::json!({ "state": state })))
            }
            ApiRequest::Pause => self.pause().map(|()| None),
            ApiRequest::Resume => self.resume().map(|()| None),
            ApiRequest::CreateSnapshot { dir } => self.snapshot(&dir).map(|()| None),
        }
    }
}

/// A microVM whose vCPUs run.
pub struct RunningMicrovm {
    control: Arc<VmControl>,
    exit: ExitNotifier,
    _api_socket: Option<SocketFile>,
}

impl std::fmt::Debug for RunningMicrovm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningMicrovm").finish_non_exhaustive()
    }
}

impl RunningMicrovm {
    /// Waits for the VM to end, stops every vCPU, and says why it ended.
    pub fn wait(self) -> VmExit {
        let end = self.exit.wait();
        self.control.stop_threads();
        end
    }

    /// Ends the VM from the host side (e.g. on a timeout) with `reason`.
    pub fn kill(self, reason: VmExit) -> VmExit {
        self.exit.notify(reason);
        self.wait()
    }
}
