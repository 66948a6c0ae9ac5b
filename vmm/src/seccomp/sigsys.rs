// SPDX-License-Identifier: Apache-2.0
//! What happens on a disallowed system call: the filters trap it
//! (`SECCOMP_RET_TRAP`), and the SIGSYS handler writes one line naming the
//! thread and the call to stderr (the pod's `vmm.log`) and ends the process
//! with [`EXIT_SECCOMP_VIOLATION`]. The handler formats into a stack buffer
//! and makes two system calls, `write` and `exit_group`, which every
//! filter allows; it reads the thread's name from a thread-local set when
//! the filter was installed.

use std::cell::Cell;
use std::fmt::Write as _;

use vmm_sys_util::signal::register_signal_handler;

use super::{SeccompError, ThreadLabel};

/// vmpod-vm's exit status when a thread made a system call its filter does
/// not allow (0 clean, 1 run-time failure, 2 usage).
pub const EXIT_SECCOMP_VIOLATION: i32 = 3;

/// `si_code` of a SIGSYS raised by seccomp.
const SYS_SECCOMP: i32 = 1;
/// Longest message: prefix, thread, number and name fit easily.
const MESSAGE_MAX: usize = 192;

thread_local! {
    /// The thread's name for the violation message; `None` on threads
    /// without a filter.
    static LABEL: Cell<Option<ThreadLabel>> = const { Cell::new(None) };
}

/// Remembers the calling thread's name for the violation message.
pub(super) fn set_thread_label(label: ThreadLabel) {
    LABEL.with(|cell| cell.set(Some(label)));
}

/// The kernel's `siginfo_t` for SIGSYS (`_sigsys` in
/// include/uapi/asm-generic/siginfo.h): the libc crate does not expose it.
#[repr(C)]
#[allow(
    dead_code,
    reason = "mirrors the kernel's layout; only some fields are read"
)]
struct SigsysInfo {
    si_signo: i32,
    si_errno: i32,
    si_code: i32,
    /// `union __sifields` is 8-byte aligned on 64-bit targets.
    _pad: i32,
    call_addr: *mut libc::c_void,
    syscall: i32,
    arch: u32,
}

/// A fixed buffer that `write!` fills without allocating; what does not fit
/// is cut.
struct StackBuffer {
    bytes: [u8; MESSAGE_MAX],
    len: usize,
}

impl std::fmt::Write for StackBuffer {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = MESSAGE_MAX - self.len;
        let take = s.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// The line printed when `thread` made system call `nr`, with its newline.
fn format_violation(thread: Option<ThreadLabel>, nr: i32) -> StackBuffer {
    let mut buf = StackBuffer {
        bytes: [0; MESSAGE_MAX],
        len: 0,
    };
    let name = usize::try_from(nr)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map_or("unknown", |sysno| sysno.name());
    let _ = write!(buf, "vmpod-vm: error: the ");
    let _ = match thread {
        Some(label) => write!(buf, "{label}"),
        None => write!(buf, "unnamed"),
    };
    let _ = writeln!(
        buf,
        " thread made system call {nr} ({name}), which its seccomp filter does not allow; \
         stopping the VM"
    );
    // A cut line still ends the line.
    if buf.len == MESSAGE_MAX {
        buf.bytes[MESSAGE_MAX - 1] = b'\n';
    }
    buf
}

/// The line printed when `thread` made system call `nr` (for tests and docs).
pub fn violation_message(thread: ThreadLabel, nr: i32) -> String {
    let buf = format_violation(Some(thread), nr);
    String::from_utf8_lossy(&buf.bytes[..buf.len]).into_owned()
}

extern "C" fn handle_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for the handled signal,
    // SIGSYS, whose layout `SigsysInfo` mirrors.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    if info.si_code != SYS_SECCOMP {
        return;
    }
    let label = LABEL.try_with(Cell::get).ok().flatten();
    let message = format_violation(label, info.syscall);
    // SAFETY: write and _exit are async-signal-safe; the buffer is ours.
    unsafe {
        libc::write(
            libc::STDERR_FILENO,
            message.bytes.as_ptr().cast(),
            message.len,
        );
        libc::_exit(EXIT_SECCOMP_VIOLATION);
    }
}

/// Installs the process's SIGSYS handler; call before the first filter.
///
/// # Errors
/// [`SeccompError::Handler`] if `sigaction` fails.
pub fn install_sigsys_handler() -> Result<(), SeccompError> {
    register_signal_handler(libc::SIGSYS, handle_sigsys)
        .map_err(|e| SeccompError::Handler(std::io::Error::from_raw_os_error(e.errno())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_message_names_thread_number_and_call() {
        assert_eq!(
            violation_message(ThreadLabel::vcpu(0), 16),
            "vmpod-vm: error: the vcpu0 thread made system call 16 (ioctl), which its \
             seccomp filter does not allow; stopping the VM\n"
        );
        let unknown = violation_message(ThreadLabel::DEVICES, 100_000);
        assert!(
            unknown.contains("system call 100000 (unknown)"),
            "{unknown}"
        );
        let negative = format_violation(None, -1);
        let text = std::str::from_utf8(&negative.bytes[..negative.len]).unwrap();
        assert!(text.contains("the unnamed thread made system call -1 (unknown)"));
    }

    #[test]
    fn test_sigsys_info_layout_matches_the_kernel() {
        assert_eq!(std::mem::offset_of!(SigsysInfo, call_addr), 16);
        assert_eq!(std::mem::offset_of!(SigsysInfo, syscall), 24);
        assert_eq!(std::mem::offset_of!(SigsysInfo, arch), 28);
    }
}
