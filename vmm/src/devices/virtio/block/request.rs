// SPDX-License-Identifier: Apache-2.0
//! Turns a descriptor chain into a [`Request`], checking everything the
//! guest wrote; no I/O happens here.
//!
//! Layout (the one Linux and every known driver uses): a device-readable
//! 16-byte header (type, reserved, sector), data descriptors (device-
//! writable for IN and GET_ID, device-readable for OUT), and a final
//! device-writable descriptor whose last byte is the status.
//!
//! What the device does with a bad chain:
//! - no usable status descriptor (missing, device-readable, outside guest
//!   memory): the request is dropped, completed with used length 0, since
//!   there is nowhere to report an error;
//! - otherwise (short or device-writable header, data descriptor in the
//!   wrong direction or outside guest memory, too many bytes, length not a
//!   multiple of 512, range past the end of the disk, overflowing sector):
//!   status `VIRTIO_BLK_S_IOERR`;
//! - an unknown request type: status `VIRTIO_BLK_S_UNSUPP`.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;

use super::{MAX_REQUEST_BYTES, SECTOR_SIZE};
use crate::devices::virtio::iovec::{ChainError, ReadableBuffers, WritableBuffers};
use crate::vstate::memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Size of the request header.
const HEADER_LEN: u32 = 16;

/// What the driver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make earlier writes durable.
    Flush,
    /// The disk's ID string.
    GetId,
    /// A type this device does not implement.
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(raw: u32) -> Self {
        match raw {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            other => Self::Unsupported(other),
        }
    }
}

/// A request whose every buffer lies in guest memory, in the right
/// direction, and whose range lies on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What is asked.
    pub kind: RequestType,
    /// First sector (IN and OUT).
    pub sector: u64,
    /// The data buffers, in order.
    pub data: Vec<(GuestAddress, u32)>,
    /// Their total length.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a valid request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// No descriptor the status could be written to: drop the request.
    #[error("No usable status descriptor")]
    NoStatus,
    /// The request is malformed; the status can say so.
    #[error("Malformed request ({0})")]
    Malformed(&'static str, GuestAddress),
}

impl RequestError {
    /// Where to write the error status, if anywhere.
    pub fn status(&self) -> Option<GuestAddress> {
        match self {
            Self::NoStatus => None,
            Self::Malformed(_, status) => Some(*status),
        }
    }
}

impl Request {
    /// Parses `chain` for a disk of `capacity_sectors`.
    ///
    /// # Errors
    /// A [`RequestError`]; see the module documentation for which.
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        capacity_sectors: u64,
    ) -> Result<Self, RequestError>
    where
        M: std::ops::Deref + Clone,
        M::Target: GuestMemory,
    {
        // The chain iterator stops after the queue size (loops) and on
        // out-of-table indexes, so this is bounded by the queue size.
        let descriptors: Vec<Descriptor> = chain.collect();
        let (last, rest) = descriptors.split_last().ok_or(RequestError::NoStatus)?;
        if !last.is_write_only() || last.len() == 0 {
            return Err(RequestError::NoStatus);
        }
        let status = last
            .addr()
            .checked_add(u64::from(last.len()) - 1)
            .filter(|addr| mem.check_range(*addr, 1))
            .ok_or(RequestError::NoStatus)?;
        let bad = |what| RequestError::Malformed(what, status);

        let (header, data) = rest.split_first().ok_or(bad("no header"))?;
        if header.is_write_only() || header.len() < HEADER_LEN {
            return Err(bad("header not a 16-byte readable buffer"));
        }
        let raw_type: u32 = mem
            .read_obj(header.addr())
            .map_err(|_| bad("header outside guest memory"))?;
        let sector: u64 = header
            .addr()
            .checked_add(8)
            .and_then(|addr| mem.read_obj(addr).ok())
            .ok_or(bad("header outside guest memory"))?;
        let kind = RequestType::from_raw(raw_type);

        let buffers = data_buffers(mem, kind, data).map_err(bad)?;
        let data_len: u64 = buffers.iter().map(|&(_, len)| u64::from(len)).sum();

        if matches!(kind, RequestType::In | RequestType::Out) {
            if !data_len.is_multiple_of(SECTOR_SIZE) {
                return Err(bad("length not a multiple of 512"));
            }
            let end = sector
                .checked_add(data_len / SECTOR_SIZE)
                .ok_or(bad("sector overflows"))?;
            if end > capacity_sectors {
                return Err(bad("past the end of the disk"));
            }
        }
        Ok(Request {
            kind,
            sector,
            data: buffers,
            data_len,
            status,
        })
    }
}

/// The checked data buffers of a request of `kind`: device-writable for
/// IN and GET_ID, device-readable for OUT, none for the others.
fn data_buffers(
    mem: &GuestMemoryMmap,
    kind: RequestType,
    data: &[Descriptor],
) -> Result<Vec<(GuestAddress, u32)>, &'static str> {
    let limit = MAX_REQUEST_BYTES as usize;
    let regions = match kind {
        RequestType::In | RequestType::GetId => {
            WritableBuffers::new(mem, data.iter().copied(), limit).map(|b| b.regions().to_vec())
        }
        RequestType::Out => {
            ReadableBuffers::new(mem, data.iter().copied(), limit).map(|b| b.regions().to_vec())
        }
        RequestType::Flush | RequestType::Unsupported(_) => Ok(Vec::new()),
    };
    let regions = regions.map_err(|err| match err {
        ChainError::WrongDirection { .. } => "data buffer in the wrong direction",
        ChainError::OutsideMemory { .. } | ChainError::Access(_) => {
            "data buffer outside guest memory"
        }
        ChainError::TooLong { .. } => "too many bytes",
    })?;
    Ok(regions.iter().map(|r| (r.addr, r.len)).collect())
}
