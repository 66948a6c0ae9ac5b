// SPDX-License-Identifier: Apache-2.0
//! vCPUs: their boot state, the run loop that routes exits to devices and
//! turns fatal exits into a [`VmExit`], and pausing a running vCPU to read
//! its state.

use std::cell::Cell;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{
    kvm_run, CpuId, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use seccompiler::BpfProgram;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::memory::{Bytes, GuestAddress, GuestMemoryMmap};
pub use super::vcpu_handle::VcpuHandle;
use super::vcpu_handle::{Control, Reply, Request, REPLY_TIMEOUT};
use super::vm::Vm;
use crate::arch::interrupts::wire_local_interrupts;
use crate::arch::msr::{boot_msrs, MsrError};
use crate::arch::regs::{boot_fpu, boot_regs, boot_sregs, EntryPoint};
use crate::devices::bus::Bus;
use crate::exit::{ExitNotifier, VmExit};
use crate::seccomp::{install_filter, SeccompError, ThreadLabel};

/// Longest x86 instruction.
const MAX_INSTRUCTION_LEN: usize = 15;
/// How often a paused vCPU looks whether the VM has ended.
const PAUSED_POLL: Duration = Duration::from_millis(50);

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU` failed.
    #[error("Cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// A `KVM_SET_*`/`KVM_GET_*` call failed while configuring.
    #[error("Cannot set the {what} of vCPU {index}")]
    Configure {
        /// Which state.
        what: &'static str,
        /// The vCPU.
        index: u8,
        /// KVM's answer.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM accepted fewer MSRs than given.
    #[error("KVM accepted {set} of {wanted} boot MSRs on vCPU {index}")]
    PartialMsrs {
        /// The vCPU.
        index: u8,
        /// How many were set.
        set: usize,
        /// How many were given.
        wanted: usize,
    },
    /// The MSR list could not be built.
    #[error(transparent)]
    Msr(#[from] MsrError),
    /// The signal used to kick vCPUs out of the guest could not be installed.
    #[error("Cannot install the vCPU kick signal handler")]
    KickSignal(#[source] vmm_sys_util::errno::Error),
    /// The vCPU thread could not be started.
    #[error("Cannot start the thread of vCPU {0}")]
    Thread(u8, #[source] std::io::Error),
    /// The vCPU thread's seccomp filter could not be installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// A `KVM_GET_*` call failed while saving the vCPU's state.
    #[error("Cannot read the {what} of vCPU {index}")]
    SaveState {
        /// Which state.
        what: &'static str,
        /// The vCPU.
        index: u8,
        /// KVM's answer.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM read fewer MSRs than `KVM_GET_MSR_INDEX_LIST` listed.
    #[error("KVM read {got} of {wanted} MSRs of vCPU {index}, stopping at MSR {msr:#x}")]
    MissingMsr {
        /// The vCPU.
        index: u8,
        /// The first MSR KVM did not read.
        msr: u32,
        /// How many it read.
        got: usize,
        /// How many were listed.
        wanted: usize,
    },
    /// KVM set fewer of the saved MSRs than given.
    #[error("KVM set {set} of {wanted} saved MSRs on vCPU {index}, refusing MSR {msr:#x}")]
    RefusedMsr {
        /// The vCPU.
        index: u8,
        /// The first MSR KVM refused.
        msr: u32,
        /// How many it set.
        set: usize,
        /// How many were saved.
        wanted: usize,
    },
    /// More MSRs than one KVM call takes.
    #[error("{count} MSRs for vCPU {index}, more than the {max} KVM takes", max = kvm_bindings::KVM_MAX_MSR_ENTRIES)]
    TooManyMsrs {
        /// The vCPU.
        index: u8,
        /// How many there are.
        count: usize,
    },
    /// The MSR buffer could not be built.
    #[error("Cannot build the MSR buffer of vCPU {0}")]
    MsrBuffer(u8, #[source] vmm_sys_util::fam::Error),
    /// A saved MP state that no x86 vCPU has.
    #[error("The saved MP state {value} of vCPU {index} is not an x86 one")]
    InvalidMpState {
        /// The vCPU.
        index: u8,
        /// The saved value.
        value: u32,
    },
    /// More saved XCRs than KVM has.
    #[error("The saved state of vCPU {index} holds {count} XCRs, more than the {max} KVM has", max = kvm_bindings::KVM_MAX_XCRS)]
    TooManyXcrs {
        /// The vCPU.
        index: u8,
        /// The saved count.
        count: u32,
    },
    /// Pause, resume or state asked of a vCPU not released to run yet.
    #[error("vCPU {0} has not been started")]
    NotStarted(u8),
    /// State asked of a vCPU that is not paused.
    #[error("vCPU {0} is not paused")]
    NotPaused(u8),
    /// The vCPU thread did not answer in time.
    #[error("vCPU {index} did not {what} within {} s", REPLY_TIMEOUT.as_secs())]
    NoReply {
        /// The vCPU.
        index: u8,
        /// What it was asked to do.
        what: &'static str,
    },
    /// The vCPU thread has ended (the VM ended).
    #[error("The thread of vCPU {0} has ended")]
    ThreadEnded(u8),
}

/// One vCPU of the VM, before it runs.
#[derive(Debug)]
pub struct Vcpu {
    pub(super) index: u8,
    pub(super) fd: VcpuFd,
    /// The MSRs its saved state holds (from the VM's [`KvmContext`]).
    ///
    /// [`KvmContext`]: super::kvm::KvmContext
    msr_index_list: Arc<[u32]>,
}

impl Vcpu {
    /// Creates vCPU `index` (0 is the boot processor).
    ///
    /// # Errors
    /// [`VcpuError::Create`] when KVM refuses.
    pub fn new(vm: &Vm, index: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(index))
            .map_err(|e| VcpuError::Create(index, e))?;
        Ok(Vcpu {
            index,
            fd,
            msr_index_list: Arc::clone(vm.msr_index_list()),
        })
    }

    pub(super) fn configure_error(
        &self,
        what: &'static str,
    ) -> impl FnOnce(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Configure {
            what,
            index,
            source,
        }
    }

    /// Sets CPUID, boot MSRs, FPU and LAPIC wiring, and, on the boot vCPU
    /// (`entry` given), the registers of the kernel's entry. The other
    /// vCPUs wait in the in-kernel LAPIC for the guest's INIT/SIPI.
    ///
    /// # Errors
    /// A [`VcpuError`] naming the state KVM refused.
    pub fn configure(&self, cpuid: &CpuId, entry: Option<EntryPoint>) -> Result<(), VcpuError> {
        self.fd
            .set_cpuid2(cpuid)
            .map_err(self.configure_error("CPUID"))?;
        let msrs = boot_msrs()?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.configure_error("MSRs"))?;
        if set != msrs.as_slice().len() {
            return Err(VcpuError::PartialMsrs {
                index: self.index,
                set,
                wanted: msrs.as_slice().len(),
            });
        }
        self.fd
            .set_fpu(&boot_fpu())
            .map_err(self.configure_error("FPU state"))?;
        let mut lapic = self.fd.get_lapic().map_err(self.configure_error("LAPIC"))?;
        wire_local_interrupts(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.configure_error("LAPIC"))?;
        if let Some(entry) = entry {
            let sregs = self
                .fd
                .get_sregs()
                .map_err(self.configure_error("segment registers"))?;
            self.fd
                .set_sregs(&boot_sregs(sregs, entry.protocol))
                .map_err(self.configure_error("segment registers"))?;
            self.fd
                .set_regs(&boot_regs(entry))
                .map_err(self.configure_error("registers"))?;
        }
        Ok(())
    }

    /// Starts the vCPU's thread, which installs `filter` (if any) and then
    /// waits for [`VcpuHandle::release`] before it first enters the guest;
    /// it runs until `exit` is notified.
    ///
    /// # Errors
    /// [`VcpuError`] when the kick signal or the thread cannot be set up.
    pub fn start(self, io: VcpuIo, filter: Option<BpfProgram>) -> Result<VcpuHandle, VcpuError> {
        install_kick_handler()?;
        let index = self.index;
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let (go, go_rx) = mpsc::channel::<()>();
        let (requests, requests_rx) = mpsc::channel();
        let (replies_tx, replies) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || {
                let installed = match &filter {
                    Some(filter) => install_filter(filter, ThreadLabel::vcpu(index)),
                    None => Ok(()),
                };
                let installed_ok = installed.is_ok();
                let _ = ready_tx.send(installed);
                // A handle dropped without release ends the thread here.
                if installed_ok && go_rx.recv().is_ok() {
                    let control = Control {
                        requests: requests_rx,
                        replies: replies_tx,
                    };
                    self.run(io, &control);
                }
            })
            .map_err(|e| VcpuError::Thread(index, e))?;
        Ok(VcpuHandle::new(index, thread, ready, go, requests, replies))
    }

    fn run(mut self, io: VcpuIo, control: &Control) {
        KVM_RUN_PTR.with(|ptr| ptr.set(self.fd.get_kvm_run() as *mut kvm_run));
        while !io.exit.is_notified() {
            // A pause request is followed by a kick, so it is seen here
            // right after the guest exit the kick causes. Other requests
            // are only sent to a paused vCPU.
            if let Ok(Request::Pause) = control.requests.try_recv() {
                if !self.paused(&io, control) {
                    break;
                }
                continue;
            }
            if let Step::End(end) = self.run_once(&io) {
                io.exit.notify(end);
            }
        }
        KVM_RUN_PTR.with(|ptr| ptr.set(std::ptr::null_mut()));
    }

    /// Stays out of the guest, serving requests, until resumed; false when
    /// the VM ended (or its handle is gone) meanwhile.
    fn paused(&mut self, io: &VcpuIo, control: &Control) -> bool {
        if let Some(end) = self.complete_pending_exit(io) {
            io.exit.notify(end);
            return false;
        }
        self.tell_guest_paused();
        if control.replies.send(Reply::Paused).is_err() {
            return false;
        }
        loop {
            let reply = match control.requests.recv_timeout(PAUSED_POLL) {
                Ok(Request::Resume) => return true,
                Ok(Request::Pause) => Reply::Paused,
                Ok(Request::SaveState) => {
                    Reply::State(Box::new(self.save_state(&self.msr_index_list)))
                }
                Err(RecvTimeoutError::Timeout) if io.exit.is_notified() => return false,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return false,
            };
            if control.replies.send(reply).is_err() {
                return false;
            }
        }
    }

    /// Finishes the port or MMIO access of the last exit. KVM completes it
    /// (e.g. moves RIP past an `out`, puts an `in`'s data in RAX) only on
    /// the next `KVM_RUN`, and keeps that pending step where a state read
    /// does not see it; with `immediate_exit` set, `KVM_RUN` completes it
    /// and returns EINTR before running any further guest instruction.
    fn complete_pending_exit(&mut self, io: &VcpuIo) -> Option<VmExit> {
        loop {
            self.fd.set_kvm_immediate_exit(1);
            match self.run_once(io) {
                // `run_once` cleared `immediate_exit` again.
                Step::Interrupted => return None,
                // A string instruction's next access: serve it, go on.
                Step::Continue => {}
                Step::End(end) => {
                    self.fd.set_kvm_immediate_exit(0);
                    return Some(end);
                }
            }
        }
    }

    /// `KVM_KVMCLOCK_CTRL`: the guest's soft-lockup watchdog then does not
    /// count the paused time as a hang. KVM refuses it (EINVAL) while the
    /// guest has not set up kvmclock, which is fine.
    fn tell_guest_paused(&self) {
        if let Err(e) = self.fd.kvmclock_ctrl() {
            tracing::debug!("vCPU {}: KVM_KVMCLOCK_CTRL: {e}", self.index);
        }
    }

    /// Enters the guest once; says whether the VM must end.
    fn run_once(&mut self, io: &VcpuIo) -> Step {
        let index = self.index;
        match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                if !io.pio.write(u64::from(port), data) {
                    tracing::debug!("vCPU {index}: unhandled port write {port:#x} {data:x?}");
                }
                Step::Continue
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                if !io.pio.read(u64::from(port), data) {
                    tracing::debug!("vCPU {index}: unhandled port read {port:#x}");
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !io.mmio.write(addr, data) {
                    tracing::debug!("vCPU {index}: unhandled MMIO write {addr:#x} {data:x?}");
                }
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !io.mmio.read(addr, data) {
                    tracing::debug!("vCPU {index}: unhandled MMIO read {addr:#x}");
                }
                Step::Continue
            }
            Ok(VcpuExit::Hlt) => Step::Continue,
            Ok(VcpuExit::Shutdown) => Step::End(VmExit::TripleFault {
                vcpu: index,
                rip: self.rip(),
            }),
            Ok(VcpuExit::InternalError) => Step::End(self.internal_error(&io.mem)),
            Ok(VcpuExit::SystemEvent(kind, _)) => {
                tracing::info!("vCPU {index}: system event {kind}, ending the VM");
                Step::End(VmExit::GuestReset)
            }
            Ok(VcpuExit::FailEntry(reason, cpu)) => Step::End(VmExit::VcpuFailure {
                vcpu: index,
                reason: format!(
                    "KVM could not enter the guest (hardware reason {reason:#x}, host CPU {cpu})"
                ),
            }),
            Ok(other) => Step::End(VmExit::VcpuFailure {
                vcpu: index,
                reason: format!("unexpected exit {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.fd.set_kvm_immediate_exit(0);
                Step::Interrupted
            }
            Err(e) => Step::End(VmExit::VcpuFailure {
                vcpu: index,
                reason: format!("KVM_RUN failed: {e}"),
            }),
        }
    }

    fn rip(&self) -> u64 {
        self.fd.get_regs().map(|r| r.rip).unwrap_or(0)
    }

    fn internal_error(&mut self, mem: &GuestMemoryMmap) -> VmExit {
        let rip = self.rip();
        // SAFETY: after a KVM_EXIT_INTERNAL_ERROR exit the kernel filled the
        // `internal`/`emulation_failure` members of the union, which share
        // their leading suberror/ndata fields.
        let (suberror, ndata, flags, reported) = unsafe {
            let run = self.fd.get_kvm_run();
            let failure = run.__bindgen_anon_1.emulation_failure;
            let bytes = failure.__bindgen_anon_1.__bindgen_anon_1;
            (failure.suberror, failure.ndata, failure.flags, bytes)
        };
        if suberror != KVM_INTERNAL_ERROR_EMULATION {
            return VmExit::InternalError {
                vcpu: self.index,
                suberror,
            };
        }
        // With ndata >= 3 and the flag set, KVM supplied the bytes itself.
        let has_bytes = ndata >= 3
            && flags & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0;
        let instruction = if has_bytes {
            let len = usize::from(reported.insn_size).min(MAX_INSTRUCTION_LEN);
            reported.insn_bytes[..len].to_vec()
        } else {
            self.read_instruction(mem, rip)
        };
        VmExit::EmulationFailure {
            vcpu: self.index,
            rip,
            instruction,
        }
    }

    /// Reads the bytes at the guest-virtual `rip`, through the guest's page
    /// tables; empty if they are not mapped.
    fn read_instruction(&self, mem: &GuestMemoryMmap, rip: u64) -> Vec<u8> {
        let Ok(translation) = self.fd.translate_gva(rip) else {
            return Vec::new();
        };
        if translation.valid == 0 {
            return Vec::new();
        }
        let mut bytes = Vec::with_capacity(MAX_INSTRUCTION_LEN);
        let base = translation.physical_address;
        for i in 0..MAX_INSTRUCTION_LEN as u64 {
            // Byte by byte: the instruction may end at the edge of RAM.
            match base
                .checked_add(i)
                .and_then(|a| mem.read_obj::<u8>(GuestAddress(a)).ok())
            {
                Some(b) => bytes.push(b),
                None => break,
            }
        }
        bytes
    }
}

/// What a running vCPU reaches: the buses, guest memory (to report a
/// failing instruction) and the VM's end latch.
#[derive(Debug, Clone)]
pub struct VcpuIo {
    /// Port I/O devices.
    pub pio: Bus,
    /// MMIO devices.
    pub mmio: Bus,
    /// Guest RAM.
    pub mem: GuestMemoryMmap,
    /// Where the VM's end is reported.
    pub exit: ExitNotifier,
}

/// What one entry into the guest came to.
enum Step {
    /// An exit served; enter again.
    Continue,
    /// A kick (or `immediate_exit`) ended the entry.
    Interrupted,
    /// The VM must end.
    End(VmExit),
}

thread_local! {
    /// The `kvm_run` of the vCPU this thread runs, for the kick handler.
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN_PTR.try_with(|ptr| {
        let run = ptr.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own `kvm_run` mapping,
            // set while the vCPU runs and cleared before the `VcpuFd` (and
            // its mapping) is dropped; a volatile byte store is async-signal
            // safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

fn install_kick_handler() -> Result<(), VcpuError> {
    static INSTALLED: std::sync::OnceLock<Result<(), i32>> = std::sync::OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(SIGRTMIN(), kick_handler).map_err(|e| e.errno()))
        .map_err(|errno| VcpuError::KickSignal(vmm_sys_util::errno::Error::new(errno)))
}
