// SPDX-License-Identifier: Apache-2.0
//! The `vmstate` file: a fixed header, then the VM state as JSON.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "VMPODSNP"
//! 8       4     format version, little endian
//! 12      8     payload length in bytes, little endian
//! 20      32    SHA-256 of the payload
//! 52      n     payload: the state as JSON
//! ```
//!
//! The checksum makes a truncated or corrupt file fail before any of its
//! contents are believed; the version makes a file of another layout fail
//! before it is parsed.

use sha2::{Digest, Sha256};

/// The first bytes of every `vmstate` file.
pub const MAGIC: [u8; 8] = *b"VMPODSNP";
/// The layout this build writes and reads. Raise it with any change to the
/// header or to the state's JSON shape.
pub const FORMAT_VERSION: u32 = 1;
/// The largest payload read: a VM's state is tens of KiB per vCPU.
pub const MAX_PAYLOAD: u64 = 16 << 20;

const HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// Why a `vmstate` file cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The file does not start with [`MAGIC`].
    #[error("not a vmpod snapshot (bad magic)")]
    BadMagic,
    /// Another version of the format.
    #[error("snapshot format version {found}, this vmpod reads version {FORMAT_VERSION}")]
    Version {
        /// The file's version.
        found: u32,
    },
    /// Shorter or longer than its header says.
    #[error("the state is truncated or padded: {found} bytes, the header says {expected}")]
    Length {
        /// What the header says (header included).
        expected: u64,
        /// What the file holds.
        found: u64,
    },
    /// Larger than any real VM state.
    #[error("the state claims {0} bytes, more than the {MAX_PAYLOAD} a VM state can take")]
    TooLarge(u64),
    /// The payload does not match its checksum.
    #[error("the state is corrupt (SHA-256 mismatch)")]
    Checksum,
}

/// Wraps `payload` in the header.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(payload);
    out
}

/// The payload of a whole file, once its header checks out.
///
/// # Errors
/// A [`FormatError`] naming the first check that failed.
pub fn decode(file: &[u8]) -> Result<&[u8], FormatError> {
    let header = file.get(..HEADER_LEN).ok_or(FormatError::Length {
        expected: HEADER_LEN as u64,
        found: file.len() as u64,
    })?;
    let (magic, rest) = header.split_at(8);
    if magic != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let (version, rest) = rest.split_at(4);
    let version = u32::from_le_bytes(version.try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { found: version });
    }
    let (length, checksum) = rest.split_at(8);
    let length = u64::from_le_bytes(length.try_into().unwrap_or_default());
    if length > MAX_PAYLOAD {
        return Err(FormatError::TooLarge(length));
    }
    let payload = &file[HEADER_LEN..];
    if payload.len() as u64 != length {
        return Err(FormatError::Length {
            expected: HEADER_LEN as u64 + length,
            found: file.len() as u64,
        });
    }
    if Sha256::digest(payload).as_slice() != checksum {
        return Err(FormatError::Checksum);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_round_trip() {
        let file = encode(b"{\"a\":1}");
        assert_eq!(decode(&file), Ok(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn test_every_damage_is_named() {
        let good = encode(b"{\"state\":true}");
        let mut magic = good.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic), Err(FormatError::BadMagic));
        let mut version = good.clone();
        version[8] = 9;
        assert_eq!(decode(&version), Err(FormatError::Version { found: 9 }));
        let truncated = &good[..good.len() - 1];
        assert!(matches!(
            decode(truncated),
            Err(FormatError::Length { found, .. }) if found == good.len() as u64 - 1
        ));
        assert!(matches!(
            decode(&good[..10]),
            Err(FormatError::Length { .. })
        ));
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped), Err(FormatError::Checksum));
        let mut huge = good;
        huge[12..20].copy_from_slice(&(MAX_PAYLOAD + 1).to_le_bytes());
        assert_eq!(decode(&huge), Err(FormatError::TooLarge(MAX_PAYLOAD + 1)));
    }
}
