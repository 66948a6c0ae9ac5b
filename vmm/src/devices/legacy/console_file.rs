// SPDX-License-Identifier: Apache-2.0
//! The serial console's file: bounded, because the guest decides how much
//! it writes. The file keeps the most recent output: when a write would take
//! it past its limit, the older half is dropped (at a line boundary where
//! there is one) and the newer half moved to the front. Everything happens on
//! the one open descriptor (`pread`, `pwrite`, `ftruncate`), so a vCPU thread
//! writing the console needs no other system calls.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

/// The most a console file holds, unless asked otherwise: enough for a
/// guest kernel's boot log and the end of what a failing guest printed.
pub const DEFAULT_CONSOLE_MAX_BYTES: u64 = 1 << 20;

/// The guest console written to a file of at most `max` bytes.
#[derive(Debug)]
pub struct ConsoleFile {
    file: File,
    len: u64,
    max: u64,
}

impl ConsoleFile {
    /// Writes to `file` (empty, or truncated by the caller) and keeps it
    /// within `max` bytes; a `max` under 2 bytes is taken as 2.
    pub fn new(file: File, max: u64) -> Self {
        ConsoleFile {
            file,
            len: 0,
            max: max.max(2),
        }
    }

    /// Moves the newest half of the file to its front, starting after the
    /// first line break in it if there is one, and drops the rest.
    fn drop_older_half(&mut self) -> std::io::Result<()> {
        let keep = self.max / 2;
        let start = self.len.saturating_sub(keep);
        // Bounded by `max`, which the host sets, not the guest.
        let mut newer = vec![0u8; usize::try_from(self.len - start).unwrap_or(0)];
        self.file.read_exact_at(&mut newer, start)?;
        let line_start = newer
            .iter()
            .position(|&byte| byte == b'\n')
            .map_or(0, |at| at + 1);
        let kept = newer.get(line_start..).unwrap_or_default();
        self.file.write_all_at(kept, 0)?;
        self.len = kept.len() as u64;
        self.file.set_len(self.len)
    }
}

impl Write for ConsoleFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let keep = usize::try_from(self.max / 2).unwrap_or(usize::MAX);
        if let Some(skip) = buf.len().checked_sub(keep) {
            // A write of half the file or more replaces it with its own end.
            let end = buf.get(skip..).unwrap_or_default();
            self.file.set_len(0)?;
            self.file.write_all_at(end, 0)?;
            self.len = end.len() as u64;
            return Ok(buf.len());
        }
        if self.len + buf.len() as u64 > self.max {
            self.drop_older_half()?;
        }
        self.file.write_all_at(buf, self.len)?;
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(name: &str, max: u64) -> (ConsoleFile, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("vmpod-console-{}-{name}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (ConsoleFile::new(file, max), path)
    }

    #[test]
    fn test_output_under_the_limit_is_kept_whole() {
        let (mut out, path) = console("whole", 64);
        for byte in b"line one\nline two\n" {
            out.write_all(&[*byte]).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"line one\nline two\n");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn test_the_file_never_passes_its_limit_and_keeps_the_newest_lines() {
        let (mut out, path) = console("bounded", 64);
        for n in 0..1000 {
            for byte in format!("line {n}\n").bytes() {
                out.write_all(&[byte]).unwrap();
            }
            assert!(std::fs::metadata(&path).unwrap().len() <= 64);
        }
        let text = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        assert!(text.ends_with("line 998\nline 999\n"), "{text:?}");
        assert!(text.starts_with("line "), "not cut at a line: {text:?}");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn test_a_write_larger_than_half_the_limit_keeps_its_end() {
        let (mut out, path) = console("large", 16);
        out.write_all(b"old\n").unwrap();
        assert_eq!(out.write(b"0123456789abcdefXYZ").unwrap(), 19);
        assert_eq!(std::fs::read(&path).unwrap(), b"bcdefXYZ");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn test_output_without_line_breaks_is_still_bounded() {
        let (mut out, path) = console("no-lines", 32);
        for _ in 0..100 {
            out.write_all(b"x").unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!((16..=32).contains(&len), "{len}");
        std::fs::remove_file(path).unwrap();
    }
}
