// SPDX-License-Identifier: Apache-2.0
//! vCPU pause, state save and restore against the real `/dev/kvm`: a guest
//! counting in a loop is paused, its vCPU, VM and memory saved, and a
//! second VM restored from them counts on from where the first stopped.
//! The vCPU threads run under the built-in vCPU seccomp filter, so the
//! state reads it makes are proven allowed.
// An integration test crate is a test module as a whole.
#![allow(clippy::tests_outside_test_module)]

mod common;

use std::time::{Duration, Instant};

use common::{kvm_available, TestDir};
use kvm_bindings::{kvm_msr_entry, CpuId, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
use vmm::arch::cpuid::{build_vcpu_cpuid, CpuTemplate};
use vmm::arch::regs::{BootProtocol, EntryPoint};
use vmm::devices::bus::Bus;
use vmm::exit::{ExitNotifier, VmExit};
use vmm::seccomp::{install_sigsys_handler, SeccompFilters, ThreadKind, DEFAULT_FILTERS_JSON};
use vmm::vstate::kvm::KvmContext;
use vmm::vstate::memory::{
    create_guest_memory, dump_guest_memory, guest_memory_from_file, Bytes, GuestAddress,
    GuestMemoryMmap,
};
use vmm::vstate::vcpu::{Vcpu, VcpuError, VcpuHandle, VcpuIo};
use vmm::vstate::vcpu_state::VcpuState;
use vmm::vstate::vm::{Vm, VmError, VmState};

/// Guest RAM of the test VMs.
const MEM_SIZE: u64 = 2 << 20;
/// Where the loop's code is loaded and entered (32-bit, paging off).
const CODE_ADDR: u64 = 0x10_0000;
/// Where the loop stores its count.
const COUNTER_ADDR: u32 = 0x2000;
/// Longest wait for a guest to reach a count.
const COUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// `inc eax; mov [COUNTER_ADDR], eax; [out 0x80, al;] jmp back`: the
/// count lives in EAX, so a restored vCPU without its registers would
/// start over from 1. With `port_write`, every round exits to the VMM.
fn counting_loop(port_write: bool) -> Vec<u8> {
    let mut code = vec![0x40, 0xa3];
    code.extend_from_slice(&COUNTER_ADDR.to_le_bytes());
    if port_write {
        code.extend_from_slice(&[0xe6, 0x80]);
    }
    let back = -(code.len() as i8 + 2);
    code.extend_from_slice(&[0xeb, back as u8]);
    code
}

/// A VM and its running vCPU threads: vCPU 0 runs the code, the others
/// wait for an INIT/SIPI that never comes.
struct TestVm {
    vm: Vm,
    mem: GuestMemoryMmap,
    exit: ExitNotifier,
    handles: Vec<VcpuHandle>,
}

impl TestVm {
    /// A fresh VM of `count` vCPUs entering `code` in 32-bit protected
    /// mode, with the CPUID the builder gives `template`.
    fn boot(kvm: &KvmContext, template: CpuTemplate, count: u8, code: &[u8]) -> Self {
        let mem = create_guest_memory(MEM_SIZE).unwrap();
        mem.write_slice(code, GuestAddress(CODE_ADDR)).unwrap();
        let vm = Vm::new(kvm, &mem).unwrap();
        let entry = EntryPoint {
            addr: GuestAddress(CODE_ADDR),
            protocol: BootProtocol::Pvh,
        };
        let vcpus = (0..count)
            .map(|index| {
                let vcpu = Vcpu::new(&vm, index).unwrap();
                let cpuid = cpuid_of(kvm, template, index, count);
                vcpu.configure(&cpuid, (index == 0).then_some(entry))
                    .unwrap();
                vcpu
            })
            .collect();
        Self::start(vm, mem, vcpus)
    }

    /// A VM restored from `vm_state`, `vcpu_states` and a memory file.
    fn restore(
        kvm: &KvmContext,
        template: CpuTemplate,
        memory_file: &std::fs::File,
        vm_state: &VmState,
        vcpu_states: &[VcpuState],
    ) -> Self {
        let mem = guest_memory_from_file(MEM_SIZE, memory_file).unwrap();
        let vm = Vm::new(kvm, &mem).unwrap();
        vm.restore_state(vm_state).unwrap();
        let count = vcpu_states.len() as u8;
        let vcpus = vcpu_states
            .iter()
            .zip(0..)
            .map(|(state, index)| {
                let vcpu = Vcpu::new(&vm, index).unwrap();
                let cpuid = cpuid_of(kvm, template, index, count);
                vcpu.configure_for_restore(&cpuid).unwrap();
                vcpu.restore_state(state).unwrap();
                vcpu
            })
            .collect();
        Self::start(vm, mem, vcpus)
    }

    fn start(vm: Vm, mem: GuestMemoryMmap, vcpus: Vec<Vcpu>) -> Self {
        let exit = ExitNotifier::new();
        let io = VcpuIo {
            pio: Bus::new(),
            mmio: Bus::new(),
            mem: mem.clone(),
            exit: exit.clone(),
        };
        let filters = SeccompFilters::builtin().unwrap();
        let handles = vcpus
            .into_iter()
            .map(|vcpu| {
                let filter = filters.of(ThreadKind::Vcpu).clone();
                let mut handle = vcpu.start(io.clone(), Some(filter)).unwrap();
                handle.wait_ready().unwrap();
                handle.release();
                handle
            })
            .collect();
        TestVm {
            vm,
            mem,
            exit,
            handles,
        }
    }

    /// The vCPU that counts.
    fn handle(&self) -> &VcpuHandle {
        &self.handles[0]
    }

    fn count(&self) -> u32 {
        self.mem
            .read_obj(GuestAddress(u64::from(COUNTER_ADDR)))
            .unwrap()
    }

    /// Waits until the count passes `target`, checking that every count
    /// seen is at least `floor`; returns the last one.
    fn count_past(&self, target: u32, floor: u32) -> u32 {
        let deadline = Instant::now() + COUNT_TIMEOUT;
        loop {
            let count = self.count();
            assert!(
                count >= floor,
                "the count went back to {count} from {floor}"
            );
            if count > target {
                return count;
            }
            assert!(
                Instant::now() < deadline,
                "the guest counted only to {count} (waiting for {target})"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Pauses every vCPU and checks that the count then holds still.
    fn pause(&self) -> u32 {
        for handle in &self.handles {
            handle.pause().unwrap();
        }
        let count = self.count();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(self.count(), count, "the guest counted while paused");
        count
    }

    /// Ends the VM; its vCPU threads must end promptly, paused or not.
    fn stop(self) {
        self.exit.notify(VmExit::GuestReset);
        let started = Instant::now();
        self.handles.into_iter().for_each(VcpuHandle::stop);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "stopping the vCPU took {:?}",
            started.elapsed()
        );
    }
}

fn open_kvm(test: &str) -> Option<KvmContext> {
    if !kvm_available(test) {
        return None;
    }
    // A filter violation then ends the test with the call's name.
    install_sigsys_handler().unwrap();
    Some(KvmContext::open().unwrap())
}

/// The CPUID vCPU `index` of `count` gets from the builder for `template`.
fn cpuid_of(kvm: &KvmContext, template: CpuTemplate, index: u8, count: u8) -> CpuId {
    build_vcpu_cpuid(kvm.supported_cpuid(), template, index, count).unwrap()
}

/// The state, through the JSON a snapshot stores it as.
fn through_json<T: serde::Serialize + serde::de::DeserializeOwned>(state: &T) -> T {
    serde_json::from_str(&serde_json::to_string(state).unwrap()).unwrap()
}

#[test]
fn test_restored_vm_counts_on_from_the_snapshot() {
    let Some(kvm) = open_kvm("test_restored_vm_counts_on_from_the_snapshot") else {
        return;
    };
    // Both templates: `Host` has XSAVE, `EmulatedSupervisor` (our hosts')
    // hides it, which changes what KVM accepts as XCR0 and XSAVE state.
    for template in [CpuTemplate::Host, CpuTemplate::EmulatedSupervisor] {
        snapshot_and_restore(&kvm, template);
    }
}

fn snapshot_and_restore(kvm: &KvmContext, template: CpuTemplate) {
    // Two vCPUs: the second, never started by the guest, is saved and
    // restored waiting for its INIT/SIPI.
    let first = TestVm::boot(kvm, template, 2, &counting_loop(true));
    first.count_past(1000, 0);
    let paused_at = first.pause();
    let vcpu_states: Vec<VcpuState> = first
        .handles
        .iter()
        .map(|handle| through_json(&handle.save_state().unwrap()))
        .collect();
    let vcpu_state = &vcpu_states[0];
    assert_eq!(vcpu_state.mp_state.mp_state, KVM_MP_STATE_RUNNABLE);
    assert_eq!(vcpu_states[1].mp_state.mp_state, KVM_MP_STATE_UNINITIALIZED);
    let vm_state = first.vm.save_state().unwrap();
    // Paused between `inc` and `mov`, EAX is one ahead of memory.
    let eax = vcpu_state.regs.rax as u32;
    assert!(
        eax == paused_at || eax == paused_at + 1,
        "EAX {eax}, count {paused_at}"
    );
    assert_eq!(vcpu_state.msrs.len(), kvm.msr_index_list().len());
    let dir = TestDir::new("vstate-restore");
    let mut memory_file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("memory"))
        .unwrap();
    dump_guest_memory(&first.mem, &mut memory_file).unwrap();

    let second = TestVm::restore(
        kvm,
        template,
        &memory_file,
        &through_json(&vm_state),
        &vcpu_states,
    );
    let counted = second.count_past(paused_at + 1000, paused_at);
    // The template still counts on its own, side by side with its clone.
    first.handle().resume().unwrap();
    first.count_past(paused_at + 1000, paused_at);
    let second_at = second.pause();
    assert!(second_at >= counted);
    let second_state = second.handle().save_state().unwrap();
    assert!(second_state.regs.rax as u32 >= second_at);
    let waiting = second.handles[1].save_state().unwrap();
    assert_eq!(waiting.mp_state.mp_state, KVM_MP_STATE_UNINITIALIZED);
    second.stop();
    first.stop();
}

#[test]
fn test_pause_and_resume_keep_counting() {
    let Some(kvm) = open_kvm("test_pause_and_resume_keep_counting") else {
        return;
    };
    // No exit to the VMM: only the kick takes the vCPU out of the guest.
    let vm = TestVm::boot(&kvm, CpuTemplate::Host, 1, &counting_loop(false));
    let mut count = vm.count_past(0, 0);
    for _ in 0..3 {
        let paused_at = vm.pause();
        assert!(paused_at >= count);
        // Pausing a paused vCPU is a no-op.
        vm.handle().pause().unwrap();
        assert_eq!(vm.count(), paused_at);
        vm.handle().resume().unwrap();
        count = vm.count_past(paused_at + 100_000, paused_at);
    }
    vm.stop();
}

#[test]
fn test_state_of_a_running_vcpu_is_refused_at_once() {
    let Some(kvm) = open_kvm("test_state_of_a_running_vcpu_is_refused_at_once") else {
        return;
    };
    let vm = TestVm::boot(&kvm, CpuTemplate::Host, 1, &counting_loop(true));
    vm.count_past(0, 0);
    let started = Instant::now();
    let err = vm.handle().save_state().unwrap_err();
    assert!(matches!(err, VcpuError::NotPaused(0)), "{err:?}");
    assert_eq!(err.to_string(), "vCPU 0 is not paused");
    assert!(started.elapsed() < Duration::from_millis(500));
    // After a resume, no longer paused either.
    vm.pause();
    vm.handle().resume().unwrap();
    let err = vm.handle().save_state().unwrap_err();
    assert!(matches!(err, VcpuError::NotPaused(0)), "{err:?}");

    // Once the VM ended, the thread is gone: an error, not a wait.
    vm.exit.notify(VmExit::GuestReset);
    let deadline = Instant::now() + Duration::from_secs(5);
    let err = loop {
        match vm.handle().pause() {
            Err(e) => break e,
            // The thread had not seen the end yet when it paused.
            Ok(()) => vm.handle().resume().unwrap(),
        }
        assert!(Instant::now() < deadline, "the vCPU thread did not end");
    };
    assert!(matches!(err, VcpuError::ThreadEnded(0)), "{err:?}");
    vm.stop();
}

#[test]
fn test_invalid_saved_state_is_refused_naming_it() {
    let Some(kvm) = open_kvm("test_invalid_saved_state_is_refused_naming_it") else {
        return;
    };
    let vm = TestVm::boot(&kvm, CpuTemplate::Host, 1, &counting_loop(true));
    vm.count_past(0, 0);
    vm.pause();
    let good = vm.handle().save_state().unwrap();
    let vm_state = vm.vm.save_state().unwrap();
    vm.stop();

    let mem = create_guest_memory(MEM_SIZE).unwrap();
    let target = Vm::new(&kvm, &mem).unwrap();
    let vcpu = Vcpu::new(&target, 0).unwrap();
    vcpu.configure_for_restore(&cpuid_of(&kvm, CpuTemplate::Host, 0, 1))
        .unwrap();

    let mut state = good.clone();
    state.mp_state.mp_state = 77;
    let err = vcpu.restore_state(&state).unwrap_err();
    assert_eq!(
        err.to_string(),
        "The saved MP state 77 of vCPU 0 is not an x86 one"
    );

    let mut state = good.clone();
    state.msrs.push(kvm_msr_entry {
        index: 0xdead_beef,
        ..Default::default()
    });
    let err = vcpu.restore_state(&state).unwrap_err();
    assert!(
        matches!(
            err,
            VcpuError::RefusedMsr {
                msr: 0xdead_beef,
                ..
            }
        ),
        "{err:?}"
    );

    let mut state = good.clone();
    state.msrs = vec![kvm_msr_entry::default(); 300];
    let err = vcpu.restore_state(&state).unwrap_err();
    assert!(
        matches!(err, VcpuError::TooManyMsrs { count: 300, .. }),
        "{err:?}"
    );

    let mut state = good;
    state.xcrs.nr_xcrs = 17;
    let err = vcpu.restore_state(&state).unwrap_err();
    assert!(
        matches!(err, VcpuError::TooManyXcrs { count: 17, .. }),
        "{err:?}"
    );

    let mut swapped = vm_state.clone();
    std::mem::swap(&mut swapped.pic_master, &mut swapped.ioapic);
    let err = target.restore_state(&swapped).unwrap_err();
    assert!(
        matches!(
            err,
            VmError::WrongIrqchip {
                slot: "master PIC",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "The saved master PIC holds irqchip 2, not 0"
    );
    target.restore_state(&vm_state).unwrap();
}

/// `_IOC` of a KVM ioctl: direction, size of its argument, number.
const fn kvm_ioctl(dir: u32, nr: u32, size: usize) -> u64 {
    ((dir << 30) | ((size as u32) << 16) | (0xae << 8) | nr) as u64
}
const IOC_READ: u32 = 2;
const IOC_READ_WRITE: u32 = 3;

/// The vCPU filter allows exactly the state reads `save_state` makes (the
/// request numbers computed from the argument types), and no state write:
/// a restore happens before the vCPU thread starts.
#[test]
fn test_vcpu_filter_allows_the_state_reads_and_no_writes() {
    use kvm_bindings::*;
    use std::mem::size_of;
    let json: serde_json::Value = serde_json::from_str(DEFAULT_FILTERS_JSON).unwrap();
    let allowed: Vec<u64> = json["vcpu"]["filter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|rule| rule["syscall"] == "ioctl")
        .map(|rule| rule["args"][0]["val"].as_u64().unwrap())
        .collect();
    let reads = [
        (
            "KVM_GET_REGS",
            kvm_ioctl(IOC_READ, 0x81, size_of::<kvm_regs>()),
        ),
        (
            "KVM_GET_SREGS",
            kvm_ioctl(IOC_READ, 0x83, size_of::<kvm_sregs>()),
        ),
        (
            "KVM_GET_MSRS",
            kvm_ioctl(IOC_READ_WRITE, 0x88, size_of::<kvm_msrs>()),
        ),
        (
            "KVM_GET_LAPIC",
            kvm_ioctl(IOC_READ, 0x8e, size_of::<kvm_lapic_state>()),
        ),
        (
            "KVM_GET_MP_STATE",
            kvm_ioctl(IOC_READ, 0x98, size_of::<kvm_mp_state>()),
        ),
        (
            "KVM_GET_VCPU_EVENTS",
            kvm_ioctl(IOC_READ, 0x9f, size_of::<kvm_vcpu_events>()),
        ),
        (
            "KVM_GET_DEBUGREGS",
            kvm_ioctl(IOC_READ, 0xa1, size_of::<kvm_debugregs>()),
        ),
        (
            "KVM_GET_XSAVE",
            kvm_ioctl(IOC_READ, 0xa4, size_of::<kvm_xsave>()),
        ),
        (
            "KVM_GET_XCRS",
            kvm_ioctl(IOC_READ, 0xa6, size_of::<kvm_xcrs>()),
        ),
        ("KVM_KVMCLOCK_CTRL", kvm_ioctl(0, 0xad, 0)),
    ];
    for (name, request) in reads {
        assert!(
            allowed.contains(&request),
            "{name} ({request:#x}) not allowed"
        );
    }
    let writes = [
        ("KVM_SET_REGS", kvm_ioctl(1, 0x82, size_of::<kvm_regs>())),
        ("KVM_SET_SREGS", kvm_ioctl(1, 0x84, size_of::<kvm_sregs>())),
        ("KVM_SET_MSRS", kvm_ioctl(1, 0x89, size_of::<kvm_msrs>())),
        ("KVM_SET_XSAVE", kvm_ioctl(1, 0xa5, size_of::<kvm_xsave>())),
        (
            "KVM_SET_LAPIC",
            kvm_ioctl(1, 0x8f, size_of::<kvm_lapic_state>()),
        ),
    ];
    for (name, request) in writes {
        assert!(!allowed.contains(&request), "{name} ({request:#x}) allowed");
    }
    // KVM_RUN, KVM_TRANSLATE, the state reads and nothing else.
    assert_eq!(allowed.len(), reads.len() + 2, "{allowed:x?}");
}
