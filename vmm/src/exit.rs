// SPDX-License-Identifier: Apache-2.0
//! How a running VM comes to an end, reported once by whichever vCPU or
//! device sees it first.

use std::sync::{Arc, Condvar, Mutex};

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset itself through the i8042 (reboot or power-off): a
    /// clean end.
    GuestReset,
    /// The guest triple-faulted (`KVM_EXIT_SHUTDOWN`).
    TripleFault {
        /// The vCPU that faulted.
        vcpu: u8,
        /// Its instruction pointer.
        rip: u64,
    },
    /// KVM could not emulate a guest instruction.
    EmulationFailure {
        /// The vCPU that stopped.
        vcpu: u8,
        /// Its instruction pointer.
        rip: u64,
        /// Up to 15 bytes at RIP, when they could be read.
        instruction: Vec<u8>,
    },
    /// Some other `KVM_EXIT_INTERNAL_ERROR`.
    InternalError {
        /// The vCPU that stopped.
        vcpu: u8,
        /// KVM's suberror code.
        suberror: u32,
    },
    /// A vCPU failed on the host side (a KVM call failed, an unexpected exit).
    VcpuFailure {
        /// The vCPU that stopped.
        vcpu: u8,
        /// What failed, one line.
        reason: String,
    },
}

impl VmExit {
    /// Whether the VM ended as the guest wanted.
    pub fn is_clean(&self) -> bool {
        matches!(self, VmExit::GuestReset)
    }
}

impl std::fmt::Display for VmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmExit::GuestReset => write!(f, "the guest reset the VM"),
            VmExit::TripleFault { vcpu, rip } => {
                write!(f, "Guest triple fault on vCPU {vcpu} at RIP {rip:#x}")
            }
            VmExit::EmulationFailure {
                vcpu,
                rip,
                instruction,
            } => {
                write!(
                    f,
                    "KVM emulation failure on vCPU {vcpu} at RIP {rip:#x}: instruction bytes "
                )?;
                if instruction.is_empty() {
                    return write!(f, "unreadable");
                }
                let hex: Vec<String> = instruction.iter().map(|b| format!("{b:02x}")).collect();
                write!(f, "{}", hex.join(" "))
            }
            VmExit::InternalError { vcpu, suberror } => {
                write!(f, "KVM internal error on vCPU {vcpu} (suberror {suberror})")
            }
            VmExit::VcpuFailure { vcpu, reason } => write!(f, "vCPU {vcpu} failed: {reason}"),
        }
    }
}

/// A one-shot latch for the VM's end: the first report wins, later ones
/// (other vCPUs noticing the same end) are dropped.
#[derive(Debug, Clone, Default)]
pub struct ExitNotifier {
    inner: Arc<(Mutex<Option<VmExit>>, Condvar)>,
}

impl ExitNotifier {
    /// A latch nobody has reported to yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports `exit` unless an earlier report exists.
    pub fn notify(&self, exit: VmExit) {
        let (lock, cvar) = &*self.inner;
        let mut slot = lock.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(exit);
            cvar.notify_all();
        }
    }

    /// Whether the VM has been reported ended, so vCPUs stop re-entering it.
    pub fn is_notified(&self) -> bool {
        let (lock, _) = &*self.inner;
        lock.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Blocks until the first report and returns it.
    pub fn wait(&self) -> VmExit {
        let (lock, cvar) = &*self.inner;
        let mut slot = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(exit) = slot.as_ref() {
                return exit.clone();
            }
            slot = cvar.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_first_report_wins() {
        let notifier = ExitNotifier::new();
        assert!(!notifier.is_notified());
        let reporter = notifier.clone();
        std::thread::spawn(move || {
            reporter.notify(VmExit::GuestReset);
            reporter.notify(VmExit::TripleFault { vcpu: 0, rip: 1 });
        })
        .join()
        .unwrap();
        assert_eq!(notifier.wait(), VmExit::GuestReset);
        assert!(notifier.is_notified());
    }

    #[test]
    fn test_emulation_failure_names_rip_and_bytes() {
        let exit = VmExit::EmulationFailure {
            vcpu: 1,
            rip: 0xffff_ffff_8100_0000,
            instruction: vec![0x0f, 0xae, 0x27],
        };
        assert_eq!(
            exit.to_string(),
            "KVM emulation failure on vCPU 1 at RIP 0xffffffff81000000: instruction bytes 0f ae 27"
        );
        assert!(!exit.is_clean());
        assert!(VmExit::GuestReset.is_clean());
    }
}
