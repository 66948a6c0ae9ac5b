// SPDX-License-Identifier: Apache-2.0
//! The device programs the agent has loaded, kept by their instructions:
//! containers of the same rules share one loaded program (a program may be
//! attached to any number of cgroups), so the guest kernel's verifier
//! checks each program once per VM. Where the guest's supervisor mode is
//! emulated that check takes seconds; a template VM loads its first pod's
//! program before its snapshot, and every pod restored from it finds the
//! program loaded.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use super::attach::{load, AttachError};
use super::program::Insn;

/// The most programs kept; the least recently used goes first. Containers
/// that still use a dropped program keep it attached.
const MAX_PROGRAMS: usize = 16;

/// Loaded device programs, the most recently used last.
#[derive(Debug, Default)]
pub struct Programs {
    loaded: Mutex<VecDeque<(Vec<Insn>, Arc<OwnedFd>)>>,
}

impl Programs {
    /// The loaded program of `program`: the one kept, or loaded now and kept.
    ///
    /// # Errors
    ///
    /// [`AttachError::Load`] when the kernel refuses it (nothing is kept).
    pub fn get_or_load(&self, program: &[Insn]) -> Result<Arc<OwnedFd>, AttachError> {
        self.get_or_load_with(program, load)
    }

    /// [`Programs::get_or_load`] with `load` for the kernel's load. The
    /// lock is held while loading, so that containers of one program
    /// created at once load it once.
    fn get_or_load_with(
        &self,
        program: &[Insn],
        load: impl FnOnce(&[Insn]) -> Result<OwnedFd, AttachError>,
    ) -> Result<Arc<OwnedFd>, AttachError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(PoisonError::into_inner);
        let at = loaded.iter().position(|(insns, _)| insns == program);
        if let Some(kept) = at.and_then(|at| loaded.remove(at)) {
            let fd = Arc::clone(&kept.1);
            loaded.push_back(kept);
            tracing::debug!(
                "device program of {} instructions: loaded before",
                program.len()
            );
            return Ok(fd);
        }
        let fd = Arc::new(load(program)?);
        if loaded.len() == MAX_PROGRAMS {
            loaded.pop_front();
        }
        loaded.push_back((program.to_vec(), Arc::clone(&fd)));
        tracing::debug!("device program of {} instructions: loaded", program.len());
        Ok(fd)
    }

    /// How many programs are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::os::fd::AsRawFd;

    use super::*;

    fn program(imm: i32) -> Vec<Insn> {
        vec![Insn {
            code: 0xb7,
            regs: 0,
            off: 0,
            imm,
        }]
    }

    /// A stand-in for a loaded program: any descriptor, counted.
    fn fake_load(loads: &Cell<usize>) -> impl FnOnce(&[Insn]) -> Result<OwnedFd, AttachError> + '_ {
        move |_| {
            loads.set(loads.get() + 1);
            Ok(OwnedFd::from(
                std::fs::File::open("/dev/null").expect("/dev/null"),
            ))
        }
    }

    #[test]
    fn test_a_program_is_loaded_once_and_shared() {
        let programs = Programs::default();
        let loads = Cell::new(0);
        let first = programs
            .get_or_load_with(&program(1), fake_load(&loads))
            .unwrap();
        let again = programs
            .get_or_load_with(&program(1), fake_load(&loads))
            .unwrap();
        assert_eq!(loads.get(), 1);
        assert_eq!(first.as_raw_fd(), again.as_raw_fd());
        let other = programs
            .get_or_load_with(&program(2), fake_load(&loads))
            .unwrap();
        assert_eq!(loads.get(), 2);
        assert_ne!(other.as_raw_fd(), first.as_raw_fd());
    }

    #[test]
    fn test_a_refused_program_is_not_kept() {
        let programs = Programs::default();
        let refused = programs.get_or_load_with(&program(1), |_| {
            Err(AttachError::Load {
                verifier: "no".into(),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })
        });
        assert!(refused.is_err());
        assert_eq!(programs.len(), 0);
    }

    #[test]
    fn test_the_least_recently_used_program_goes_first() {
        let programs = Programs::default();
        let loads = Cell::new(0);
        for imm in 0..MAX_PROGRAMS as i32 {
            programs
                .get_or_load_with(&program(imm), fake_load(&loads))
                .unwrap();
        }
        // Program 0 used again: program 1 is now the least recently used.
        programs
            .get_or_load_with(&program(0), fake_load(&loads))
            .unwrap();
        let extra = MAX_PROGRAMS as i32;
        let kept = programs
            .get_or_load_with(&program(extra), fake_load(&loads))
            .unwrap();
        assert_eq!(programs.len(), MAX_PROGRAMS);
        assert_eq!(loads.get(), MAX_PROGRAMS + 1);
        programs
            .get_or_load_with(&program(0), fake_load(&loads))
            .unwrap();
        assert_eq!(loads.get(), MAX_PROGRAMS + 1, "program 0 was kept");
        programs
            .get_or_load_with(&program(1), fake_load(&loads))
            .unwrap();
        assert_eq!(loads.get(), MAX_PROGRAMS + 2, "program 1 was dropped");
        // A dropped program's descriptor lives on with its users.
        drop(programs);
        assert!(kept.as_raw_fd() >= 0);
    }
}
