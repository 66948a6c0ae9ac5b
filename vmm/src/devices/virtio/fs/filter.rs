// SPDX-License-Identifier: Apache-2.0
//! Decides, from a FUSE request's header, whether the server sees it: only
//! opcodes the protocol defines pass (others get `ENOSYS` from the device,
//! so no unknown value reaches the server's opcode decoding), and on a
//! read-only share every request that could change the directory gets
//! `EROFS` instead.

/// What happens to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The server handles it.
    Serve,
    /// The device answers with this errno.
    Refuse(i32),
}

/// FUSE opcodes (include/uapi/linux/fuse.h).
mod op {
    pub const SETATTR: u32 = 4;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const WRITE: u32 = 16;
    pub const SETXATTR: u32 = 21;
    pub const REMOVEXATTR: u32 = 24;
    pub const CREATE: u32 = 35;
    pub const FALLOCATE: u32 = 43;
    pub const RENAME2: u32 = 45;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    /// One past the last opcode `fuse-backend-rs` 0.14 knows.
    pub const END: u32 = 50;
    /// Values below `END` that are not opcodes.
    pub const HOLES: [u32; 3] = [0, 7, 19];
}

/// Requests that change the shared directory.
const MUTATING: [u32; 14] = [
    op::SETATTR,
    op::SYMLINK,
    op::MKNOD,
    op::MKDIR,
    op::UNLINK,
    op::RMDIR,
    op::RENAME,
    op::LINK,
    op::WRITE,
    op::SETXATTR,
    op::REMOVEXATTR,
    op::CREATE,
    op::FALLOCATE,
    op::RENAME2,
];

/// The verdict for a request with `opcode`; `open_flags` are the flags of
/// an OPEN request (`None` if the request is too short to hold them).
pub fn verdict(opcode: u32, open_flags: Option<u32>, readonly: bool) -> Verdict {
    if opcode >= op::END || op::HOLES.contains(&opcode) {
        return Verdict::Refuse(libc::ENOSYS);
    }
    // No DAX window: mapping requests have nothing to map into.
    if opcode == op::SETUPMAPPING || opcode == op::REMOVEMAPPING {
        return Verdict::Refuse(libc::ENOSYS);
    }
    if !readonly {
        return Verdict::Serve;
    }
    if MUTATING.contains(&opcode) || opcode == op::COPY_FILE_RANGE {
        return Verdict::Refuse(libc::EROFS);
    }
    if opcode == op::OPEN {
        let writes = match open_flags {
            Some(flags) => {
                let flags = flags as i32;
                flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
            }
            None => true,
        };
        if writes {
            return Verdict::Refuse(libc::EROFS);
        }
    }
    Verdict::Serve
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_unknown_opcodes_are_refused() {
        for opcode in [0, 7, 19, 50, 51, u32::MAX, 1_048_576] {
            assert_eq!(
                verdict(opcode, None, false),
                Verdict::Refuse(libc::ENOSYS),
                "{opcode}"
            );
        }
        assert_eq!(verdict(48, None, false), Verdict::Refuse(libc::ENOSYS));
        for opcode in [1, 3, 15, 16, 26, 35, 44] {
            assert_eq!(verdict(opcode, None, false), Verdict::Serve, "{opcode}");
        }
    }

    #[test]
    fn test_read_only_refuses_mutations() {
        for opcode in MUTATING.into_iter().chain([op::COPY_FILE_RANGE]) {
            assert_eq!(
                verdict(opcode, None, true),
                Verdict::Refuse(libc::EROFS),
                "{opcode}"
            );
        }
        let rdonly = libc::O_RDONLY as u32;
        assert_eq!(verdict(op::OPEN, Some(rdonly), true), Verdict::Serve);
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
            assert_eq!(
                verdict(op::OPEN, Some(flags as u32), true),
                Verdict::Refuse(libc::EROFS)
            );
        }
        assert_eq!(verdict(op::OPEN, None, true), Verdict::Refuse(libc::EROFS));
        // Reads, lookups and directory listings pass.
        for opcode in [1, 3, 5, 15, 17, 22, 27, 28, 44] {
            assert_eq!(verdict(opcode, None, true), Verdict::Serve, "{opcode}");
        }
    }
}
