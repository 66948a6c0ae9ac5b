// SPDX-License-Identifier: Apache-2.0
//! A start-up probe that tells whether this host runs guest supervisor code
//! natively (VT-x/AMD-V) or emulates it instruction by instruction (as a
//! page-table-based nested hypervisor such as `kvm_pvm` does), by timing a
//! short loop at CPL0 in a throwaway VM.

use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VcpuExit;

use super::kvm::KvmContext;
use super::memory::{create_guest_memory, Bytes, GuestAddress, GuestMemory, GuestMemoryRegion};

/// Iterations of the timed loop (two instructions each).
const LOOP_ITERATIONS: u16 = 500;
/// Per-iteration time above which CPL0 counts as emulated: native
/// execution takes a few nanoseconds, emulation 0.3 to 2 µs on our hosts.
const EMULATED_THRESHOLD: Duration = Duration::from_nanos(50);
/// Measurement rounds; the fastest of each kind counts, so that a host
/// preemption during one round skews nothing.
const ROUNDS: usize = 3;
/// Where the probe's code sits in the probe VM.
const PROBE_CODE: u64 = 0x1000;
/// Port the probe uses to stop the vCPU between measurements.
const PROBE_PORT: u8 = 0x80;

/// What the probe measured.
#[derive(Debug, Clone, Copy)]
pub struct ProbeResult {
    /// Time per loop iteration at CPL0.
    pub per_iteration: Duration,
    /// Whether that time means CPL0 is emulated.
    pub supervisor_emulated: bool,
}

/// Errors running the probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A KVM call of the probe failed.
    #[error("The CPU probe failed: {0}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// The probe VM's memory could not be mapped.
    #[error("The CPU probe could not map its memory")]
    Memory(#[source] super::memory::MemoryError),
    /// The probe guest did not stop where expected.
    #[error("The CPU probe guest stopped unexpectedly: {0}")]
    UnexpectedExit(String),
}

/// Real-mode code: exit, then [`ROUNDS`] times (loop once, exit, loop N
/// times, exit), then halt. The first exit absorbs the first entry's cost;
/// each one-iteration run measures the bare exit round trip, which is
/// subtracted.
fn probe_code() -> Vec<u8> {
    let [lo, hi] = LOOP_ITERATIONS.to_le_bytes();
    let round = [
        0xb9, 0x01, 0x00, // mov cx, 1
        0x49, // dec cx
        0x75, 0xfd, // jnz -3
        0xe6, PROBE_PORT, // out PROBE_PORT, al
        0xb9, lo, hi,   // mov cx, LOOP_ITERATIONS
        0x49, // dec cx
        0x75, 0xfd, // jnz -3
        0xe6, PROBE_PORT, // out PROBE_PORT, al
    ];
    let mut code = vec![0xe6, PROBE_PORT]; // out PROBE_PORT, al
    for _ in 0..ROUNDS {
        code.extend_from_slice(&round);
    }
    code.push(0xf4); // hlt
    code
}

/// Runs the probe in a VM of its own.
///
/// # Errors
/// A [`ProbeError`] if the probe VM cannot be built or does not behave.
pub fn probe_supervisor_mode(kvm: &KvmContext) -> Result<ProbeResult, ProbeError> {
    // `mem` is declared first so that it is dropped after the VM using it.
    let mem = create_guest_memory(0x10000).map_err(ProbeError::Memory)?;
    let vm = kvm
        .kvm()
        .create_vm()
        .map_err(|e| ProbeError::Kvm("create VM", e))?;
    let region = mem
        .iter()
        .next()
        .ok_or(ProbeError::UnexpectedExit("no memory".into()))?;
    let slot = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the region stays mapped as long as the VM exists: `mem` is
    // dropped after `vm` (declared before it).
    unsafe { vm.set_user_memory_region(slot) }.map_err(|e| ProbeError::Kvm("set memory", e))?;
    mem.write_slice(&probe_code(), GuestAddress(PROBE_CODE))
        .map_err(|_| ProbeError::UnexpectedExit("cannot write code".into()))?;
    let mut vcpu = vm
        .create_vcpu(0)
        .map_err(|e| ProbeError::Kvm("create vCPU", e))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| ProbeError::Kvm("get sregs", e))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| ProbeError::Kvm("set sregs", e))?;
    let mut regs = vcpu
        .get_regs()
        .map_err(|e| ProbeError::Kvm("get regs", e))?;
    regs.rip = PROBE_CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| ProbeError::Kvm("set regs", e))?;

    let mut run_to_port = || -> Result<Duration, ProbeError> {
        let start = Instant::now();
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, _)) if port == u16::from(PROBE_PORT) => Ok(start.elapsed()),
            Ok(other) => Err(ProbeError::UnexpectedExit(format!("{other:?}"))),
            Err(e) => Err(ProbeError::Kvm("run", e)),
        }
    };
    run_to_port()?;
    let mut round_trip = Duration::MAX;
    let mut looped = Duration::MAX;
    for _ in 0..ROUNDS {
        round_trip = round_trip.min(run_to_port()?);
        looped = looped.min(run_to_port()?);
    }
    let per_iteration = looped.saturating_sub(round_trip) / u32::from(LOOP_ITERATIONS);
    Ok(ProbeResult {
        per_iteration,
        supervisor_emulated: per_iteration > EMULATED_THRESHOLD,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_probe_code_loops_back_onto_dec() {
        let code = probe_code();
        // Each `jnz -3` lands on the `dec cx` before it.
        for (i, pair) in code.windows(2).enumerate() {
            if pair == [0x75, 0xfd] {
                assert_eq!(code[i + 2 - 3], 0x49);
            }
        }
        assert_eq!(code.last(), Some(&0xf4));
        // One exit to start, two per round.
        let exits = code.windows(2).filter(|w| *w == [0xe6, PROBE_PORT]).count();
        assert_eq!(exits, 1 + 2 * ROUNDS);
    }

    #[test]
    fn test_probe_on_real_kvm() {
        let kvm = match KvmContext::open() {
            Ok(kvm) => kvm,
            Err(e) => {
                eprintln!("skipped: /dev/kvm unusable: {e}");
                return;
            }
        };
        let result = probe_supervisor_mode(&kvm).unwrap();
        eprintln!(
            "probe: {:?} per iteration, emulated: {}",
            result.per_iteration, result.supervisor_emulated
        );
        // Either way the measurement must be plausible: well under a
        // millisecond per two instructions.
        assert!(result.per_iteration < Duration::from_millis(1));
    }
}
