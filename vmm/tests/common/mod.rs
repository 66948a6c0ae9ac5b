// SPDX-License-Identifier: Apache-2.0
//! Test guests for `vmpod-vm`: a minimal ELF writer and a few hand-assembled
//! programs of plain integer instructions, plus a runner with a timeout.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where test kernels are loaded and entered.
pub const LOAD_ADDR: u64 = 0x10_0000;
/// Offset of the code in the ELF file.
const CODE_OFFSET: usize = 0x1000;
/// The PVH entry note type (XEN_ELFNOTE_PHYS32_ENTRY).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Whether this host can run the real-KVM tests; prints why not.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped {test}: /dev/kvm is not usable here: {e}");
            false
        }
    }
}

/// An ELF64 image with one loadable segment holding `code` at
/// [`LOAD_ADDR`], entered there. With `pvh`, it carries the PVH note, so
/// the VMM enters it in 32-bit protected mode; without, in 64-bit mode.
pub fn elf_kernel(code: &[u8], pvh: bool) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let mut elf = vec![0u8; CODE_OFFSET];
    // ELF header.
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1; // version
    put16(&mut elf, 16, 2); // ET_EXEC
    put16(&mut elf, 18, 0x3e); // x86_64
    put32(&mut elf, 20, 1);
    put64(&mut elf, 24, LOAD_ADDR); // e_entry
    put64(&mut elf, 32, 64); // e_phoff
    put16(&mut elf, 52, 64); // e_ehsize
    put16(&mut elf, 54, 56); // e_phentsize
    put16(&mut elf, 56, phnum);
    // PT_LOAD.
    let ph = 64;
    put32(&mut elf, ph, 1);
    put32(&mut elf, ph + 4, 5); // R+X
    put64(&mut elf, ph + 8, CODE_OFFSET as u64);
    put64(&mut elf, ph + 16, LOAD_ADDR);
    put64(&mut elf, ph + 24, LOAD_ADDR);
    put64(&mut elf, ph + 32, code.len() as u64);
    put64(&mut elf, ph + 40, code.len() as u64);
    put64(&mut elf, ph + 48, 0x1000);
    if pvh {
        let note_offset = 0x200;
        let ph = 64 + 56;
        put32(&mut elf, ph, 4); // PT_NOTE
        put64(&mut elf, ph + 8, note_offset as u64);
        put64(&mut elf, ph + 32, 20);
        put64(&mut elf, ph + 40, 20);
        put64(&mut elf, ph + 48, 4);
        put32(&mut elf, note_offset, 4); // namesz
        put32(&mut elf, note_offset + 4, 4); // descsz
        put32(&mut elf, note_offset + 8, XEN_ELFNOTE_PHYS32_ENTRY);
        elf[note_offset + 12..note_offset + 16].copy_from_slice(b"Xen\0");
        put32(&mut elf, note_offset + 16, LOAD_ADDR as u32);
    }
    elf.extend_from_slice(code);
    elf
}

fn put16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A program builder for code that runs the same in 32-bit protected mode
/// and 64-bit mode (every instruction used encodes identically in both).
#[derive(Default)]
pub struct Program {
    code: Vec<u8>,
}

impl Program {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends already encoded instructions.
    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        self.code.extend_from_slice(bytes);
        self
    }

    /// Writes `msg` to COM1 a byte at a time, then resets the VM through
    /// the i8042 (`out 0x64, 0xfe`) and halts.
    pub fn print_and_reset(mut self, msg: &str) -> Vec<u8> {
        // mov esi, msg ; the message follows the 24 bytes below.
        let msg_addr = LOAD_ADDR as u32 + self.code.len() as u32 + 24;
        self.code.push(0xbe);
        self.code.extend_from_slice(&msg_addr.to_le_bytes());
        self.code.extend_from_slice(&[
            0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xac, // lodsb
            0x84, 0xc0, // test al, al
            0x74, 0x03, // jz +3
            0xee, // out dx, al
            0xeb, 0xf8, // jmp lodsb
            0xb0, 0xfe, // mov al, 0xfe
            0xe6, 0x64, // out 0x64, al
            0xf4, // hlt
            0xeb, 0xfd, // jmp hlt
        ]);
        self.code.extend_from_slice(msg.as_bytes());
        self.code.push(0);
        self.code
    }

    /// Ends the program with `ud2` and no IDT: a triple fault.
    pub fn triple_fault(mut self) -> Vec<u8> {
        self.code.extend_from_slice(&[0x0f, 0x0b]);
        self.code
    }
}

/// A fresh, empty directory for one test, removed when dropped.
pub struct TestDir(PathBuf);

impl TestDir {
    /// The directory of `test`, under the system's temporary directory and
    /// named by this process, emptied if a run left it.
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vmpod-test-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in the directory.
    pub fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub use vmpod_sys::command::Outcome;

/// The lines vmpod-vm printed as errors (its own and clap's).
pub fn error_lines(out: &Outcome) -> Vec<&str> {
    out.stderr
        .lines()
        .filter(|l| l.starts_with("vmpod-vm: error:") || l.starts_with("error:"))
        .collect()
}

/// Runs the `vmpod-vm` binary with `args`, killing it after `timeout`.
pub fn run_vmpod_vm(args: &[&str], timeout: Duration) -> Outcome {
    run_command(
        Command::new(env!("CARGO_BIN_EXE_vmpod-vm")).args(args),
        timeout,
    )
}

/// Runs `cmd`; a run that outlives `timeout` is killed and fails the test.
pub fn run_command(cmd: &mut Command, timeout: Duration) -> Outcome {
    let out = vmpod_sys::command::run_with_timeout(cmd, None, timeout).expect("spawn");
    assert!(!out.timed_out, "timed out after {timeout:?}: {out:?}");
    out
}

/// A path as the `&str` an argument list takes.
pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
