// SPDX-License-Identifier: Apache-2.0
//! Reading and writing the guest buffers of a descriptor chain, in one
//! place for every device.
//!
//! A chain is untrusted: before any byte moves, each descriptor's
//! direction is checked (device-readable for what the device reads,
//! device-writable for what it writes), its range is checked against guest
//! memory with checked arithmetic, and the total length against a bound
//! the device gives. Only then are the buffers gathered from or scattered
//! into.

use virtio_queue::desc::split::Descriptor;

use crate::vstate::memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Why a chain's buffers cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A descriptor points the wrong way for its use.
    #[error("Descriptor {index} is device-{found}, not device-{wanted}")]
    WrongDirection {
        /// Position of the descriptor in the chain, from 0.
        index: usize,
        /// "readable" or "writable": what the descriptor is.
        found: &'static str,
        /// What the device needed it to be.
        wanted: &'static str,
    },
    /// A buffer is not wholly inside guest memory, or its end overflows.
    #[error("Descriptor {index} ({len} bytes at {addr:#x}) lies outside guest memory")]
    OutsideMemory {
        /// Position of the descriptor in the chain, from 0.
        index: usize,
        /// The guest address the descriptor gives.
        addr: u64,
        /// The length the descriptor gives.
        len: u32,
    },
    /// The buffers hold more bytes than the device takes.
    #[error("The chain holds more than {limit} bytes")]
    TooLong {
        /// The most the device takes from one chain.
        limit: usize,
    },
    /// Guest memory refused an access the checks let through.
    #[error("Guest memory access failed at {0:#x}")]
    Access(u64),
}

/// One buffer of a chain whose range was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Where the buffer starts in guest memory.
    pub addr: GuestAddress,
    /// Its length in bytes.
    pub len: u32,
}

/// Which way data moves through a descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    DeviceReads,
    DeviceWrites,
}

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::DeviceReads => "readable",
            Direction::DeviceWrites => "writable",
        }
    }

    fn of(desc: &Descriptor) -> Self {
        if desc.is_write_only() {
            Direction::DeviceWrites
        } else {
            Direction::DeviceReads
        }
    }
}

/// Checks one descriptor (`index` in its chain) for `wanted` direction and
/// a range inside `mem`.
fn check(
    mem: &GuestMemoryMmap,
    index: usize,
    desc: &Descriptor,
    wanted: Direction,
) -> Result<Region, ChainError> {
    let found = Direction::of(desc);
    if found != wanted {
        return Err(ChainError::WrongDirection {
            index,
            found: found.name(),
            wanted: wanted.name(),
        });
    }
    let outside = ChainError::OutsideMemory {
        index,
        addr: desc.addr().0,
        len: desc.len(),
    };
    // The end must not wrap; check_range then covers every byte.
    desc.addr()
        .0
        .checked_add(u64::from(desc.len()))
        .ok_or(outside)?;
    if !mem.check_range(desc.addr(), desc.len() as usize) {
        return Err(outside);
    }
    Ok(Region {
        addr: desc.addr(),
        len: desc.len(),
    })
}

/// Checks `descriptors` (starting at chain position `first_index`) for one
/// direction; returns their regions and total length, which must not pass
/// `limit` when `refuse_over_limit` (else the total is capped at `limit`).
fn check_all(
    mem: &GuestMemoryMmap,
    descriptors: impl IntoIterator<Item = Descriptor>,
    first_index: usize,
    wanted: Direction,
    limit: usize,
    refuse_over_limit: bool,
) -> Result<(Vec<Region>, usize), ChainError> {
    let mut regions = Vec::new();
    let mut total = 0usize;
    for (offset, desc) in descriptors.into_iter().enumerate() {
        let region = check(mem, first_index + offset, &desc, wanted)?;
        total = match total.checked_add(region.len as usize) {
            Some(sum) if sum <= limit => sum,
            _ if refuse_over_limit => return Err(ChainError::TooLong { limit }),
            _ => limit,
        };
        regions.push(region);
    }
    Ok((regions, total))
}

/// The device-readable buffers of a chain: what the driver gives the
/// device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadableBuffers {
    regions: Vec<Region>,
    len: usize,
}

impl ReadableBuffers {
    /// Checks `descriptors`: each must be device-readable and inside
    /// `mem`, and together they may hold at most `limit` bytes.
    ///
    /// # Errors
    /// The first [`ChainError`] found.
    pub fn new(
        mem: &GuestMemoryMmap,
        descriptors: impl IntoIterator<Item = Descriptor>,
        limit: usize,
    ) -> Result<Self, ChainError> {
        let (regions, len) = check_all(mem, descriptors, 0, Direction::DeviceReads, limit, true)?;
        Ok(ReadableBuffers { regions, len })
    }

    /// Bytes the buffers hold.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffers hold no byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The checked buffers, in chain order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Replaces `out` with every byte of the buffers, in order (at most the
    /// limit they were checked against).
    ///
    /// # Errors
    /// [`ChainError::Access`] if guest memory refuses a checked range.
    pub fn read_to_vec(&self, mem: &GuestMemoryMmap, out: &mut Vec<u8>) -> Result<(), ChainError> {
        out.clear();
        out.resize(self.len, 0);
        self.read_at(mem, 0, out).map(|_| ())
    }

    /// Copies bytes from `offset` in the buffers into `buf`, as many as
    /// there are; returns how many.
    ///
    /// # Errors
    /// [`ChainError::Access`] if guest memory refuses a checked range.
    pub fn read_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<usize, ChainError> {
        let mut done = 0;
        for (region, start, n) in pieces(&self.regions, offset, buf.len()) {
            let at = region_addr(region, start)?;
            mem.read_slice(&mut buf[done..done + n], at)
                .map_err(|_| ChainError::Access(at.0))?;
            done += n;
        }
        Ok(done)
    }
}

/// The device-writable buffers of a chain: where the device answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WritableBuffers {
    regions: Vec<Region>,
    capacity: usize,
}

impl WritableBuffers {
    /// Checks `descriptors`: each must be device-writable and inside
    /// `mem`, and together they may hold at most `limit` bytes.
    ///
    /// # Errors
    /// The first [`ChainError`] found.
    pub fn new(
        mem: &GuestMemoryMmap,
        descriptors: impl IntoIterator<Item = Descriptor>,
        limit: usize,
    ) -> Result<Self, ChainError> {
        Self::check(mem, descriptors, 0, limit, true)
    }

    /// Checks `descriptors` as [`WritableBuffers::new`] does, but the
    /// buffers may hold more than `limit`: the device then writes at most
    /// `limit` bytes (every buffer is checked all the same).
    ///
    /// # Errors
    /// The first [`ChainError`] found.
    pub fn up_to(
        mem: &GuestMemoryMmap,
        descriptors: impl IntoIterator<Item = Descriptor>,
        limit: usize,
    ) -> Result<Self, ChainError> {
        Self::check(mem, descriptors, 0, limit, false)
    }

    fn check(
        mem: &GuestMemoryMmap,
        descriptors: impl IntoIterator<Item = Descriptor>,
        first_index: usize,
        limit: usize,
        refuse_over_limit: bool,
    ) -> Result<Self, ChainError> {
        let (regions, capacity) = check_all(
            mem,
            descriptors,
            first_index,
            Direction::DeviceWrites,
            limit,
            refuse_over_limit,
        )?;
        Ok(WritableBuffers { regions, capacity })
    }

    /// Bytes the device may write: the buffers' room, capped at the limit.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The checked buffers, in chain order.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Copies as much of `data` as fits from `offset` on; returns how many
    /// bytes were written.
    ///
    /// # Errors
    /// [`ChainError::Access`] if guest memory refuses a checked range.
    pub fn write_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        data: &[u8],
    ) -> Result<usize, ChainError> {
        let room = self.capacity.saturating_sub(offset);
        let data = &data[..data.len().min(room)];
        let mut done = 0;
        for (region, start, n) in pieces(&self.regions, offset, data.len()) {
            let at = region_addr(region, start)?;
            mem.write_slice(&data[done..done + n], at)
                .map_err(|_| ChainError::Access(at.0))?;
            done += n;
        }
        Ok(done)
    }
}

/// Splits a whole chain: device-readable descriptors first, then
/// device-writable ones (the order virtio requires). `read_limit` bounds
/// the readable bytes (more is an error), `write_limit` the bytes the
/// device may write (as [`WritableBuffers::up_to`]).
///
/// # Errors
/// The first [`ChainError`] found; a readable descriptor after a writable
/// one is [`ChainError::WrongDirection`].
pub fn split_chain(
    mem: &GuestMemoryMmap,
    descriptors: impl IntoIterator<Item = Descriptor>,
    read_limit: usize,
    write_limit: usize,
) -> Result<(ReadableBuffers, WritableBuffers), ChainError> {
    let mut descriptors = descriptors.into_iter().peekable();
    let mut readable = Vec::new();
    while let Some(desc) = descriptors.next_if(|desc| !desc.is_write_only()) {
        readable.push(desc);
    }
    let first_writable = readable.len();
    let readable = ReadableBuffers::new(mem, readable, read_limit)?;
    let writable = WritableBuffers::check(mem, descriptors, first_writable, write_limit, false)?;
    Ok((readable, writable))
}

/// The parts of `regions` that cover `len` bytes from `offset` on:
/// `(region, offset in it, bytes)`.
fn pieces(
    regions: &[Region],
    mut offset: usize,
    mut len: usize,
) -> impl Iterator<Item = (Region, usize, usize)> + '_ {
    regions.iter().filter_map(move |region| {
        let region_len = region.len as usize;
        if offset >= region_len {
            offset -= region_len;
            return None;
        }
        let n = (region_len - offset).min(len);
        if n == 0 {
            return None;
        }
        let piece = (*region, offset, n);
        offset = 0;
        len -= n;
        Some(piece)
    })
}

/// The address `start` bytes into `region` (checked when the region was).
fn region_addr(region: Region, start: usize) -> Result<GuestAddress, ChainError> {
    region
        .addr
        .0
        .checked_add(start as u64)
        .map(GuestAddress)
        .ok_or(ChainError::Access(region.addr.0))
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, DATA, MEM_SIZE};

    fn desc(addr: u64, len: u32, write: bool) -> Descriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        Descriptor::new(addr, len, flags, 0)
    }

    #[test]
    fn test_gather_reads_every_buffer_in_order() {
        let mem = guest_memory();
        mem.write_slice(b"hello ", GuestAddress(DATA)).unwrap();
        mem.write_slice(b"world", GuestAddress(DATA + 0x100))
            .unwrap();
        let buffers = ReadableBuffers::new(
            &mem,
            [desc(DATA, 6, false), desc(DATA + 0x100, 5, false)],
            64,
        )
        .unwrap();
        let mut out = vec![1, 2, 3];
        buffers.read_to_vec(&mem, &mut out).unwrap();
        assert_eq!(out, b"hello world");
        let mut tail = [0u8; 4];
        assert_eq!(buffers.read_at(&mem, 4, &mut tail).unwrap(), 4);
        assert_eq!(&tail, b"o wo");
        let mut past = [0u8; 4];
        assert_eq!(buffers.read_at(&mem, 9, &mut past).unwrap(), 2);
    }

    #[test]
    fn test_scatter_fills_buffers_in_order_up_to_their_room() {
        let mem = guest_memory();
        let buffers =
            WritableBuffers::new(&mem, [desc(DATA, 3, true), desc(DATA + 0x100, 4, true)], 64)
                .unwrap();
        assert_eq!(buffers.capacity(), 7);
        assert_eq!(buffers.write_at(&mem, 0, b"abcdefghij").unwrap(), 7);
        let mut first = [0u8; 3];
        let mut second = [0u8; 4];
        mem.read_slice(&mut first, GuestAddress(DATA)).unwrap();
        mem.read_slice(&mut second, GuestAddress(DATA + 0x100))
            .unwrap();
        assert_eq!((&first, &second), (b"abc", b"defg"));
        assert_eq!(buffers.write_at(&mem, 5, b"XYZ").unwrap(), 2);
        mem.read_slice(&mut second, GuestAddress(DATA + 0x100))
            .unwrap();
        assert_eq!(&second, b"deXY");
    }

    #[test]
    fn test_buffer_outside_guest_memory_is_refused() {
        let mem = guest_memory();
        let end = MEM_SIZE as u64;
        for (addr, len) in [(end, 1), (end - 4, 8), (u64::MAX - 1, 1)] {
            let err =
                ReadableBuffers::new(&mem, [desc(DATA, 4, false), desc(addr, len, false)], 64)
                    .unwrap_err();
            assert_eq!(
                err,
                ChainError::OutsideMemory {
                    index: 1,
                    addr,
                    len
                }
            );
            let err = WritableBuffers::new(&mem, [desc(addr, len, true)], 64).unwrap_err();
            assert!(matches!(err, ChainError::OutsideMemory { index: 0, .. }));
        }
    }

    #[test]
    fn test_address_overflow_is_refused() {
        let mem = guest_memory();
        let err =
            ReadableBuffers::new(&mem, [desc(u64::MAX - 8, 0x100, false)], 0x1000).unwrap_err();
        assert!(matches!(err, ChainError::OutsideMemory { index: 0, .. }));
    }

    #[test]
    fn test_wrong_direction_is_refused() {
        let mem = guest_memory();
        let err = ReadableBuffers::new(&mem, [desc(DATA, 4, false), desc(DATA, 4, true)], 64)
            .unwrap_err();
        assert_eq!(
            err,
            ChainError::WrongDirection {
                index: 1,
                found: "writable",
                wanted: "readable"
            }
        );
        let err = WritableBuffers::new(&mem, [desc(DATA, 4, false)], 64).unwrap_err();
        assert!(matches!(err, ChainError::WrongDirection { index: 0, .. }));
    }

    #[test]
    fn test_readable_chain_over_the_limit_is_refused() {
        let mem = guest_memory();
        let ok = ReadableBuffers::new(&mem, [desc(DATA, 32, false), desc(DATA, 32, false)], 64);
        assert_eq!(ok.unwrap().len(), 64);
        let err = ReadableBuffers::new(&mem, [desc(DATA, 32, false), desc(DATA, 33, false)], 64)
            .unwrap_err();
        assert_eq!(err, ChainError::TooLong { limit: 64 });
        // Lengths that would overflow the total are refused, not wrapped.
        let huge = std::iter::repeat_n(desc(0, u32::MAX, false), 8);
        let err = ReadableBuffers::new(&mem, huge, usize::MAX).unwrap_err();
        assert!(matches!(err, ChainError::OutsideMemory { .. }));
    }

    #[test]
    fn test_writable_room_is_capped_at_the_limit() {
        let mem = guest_memory();
        let bufs = [desc(DATA, 40, true), desc(DATA + 0x100, 40, true)];
        let buffers = WritableBuffers::up_to(&mem, bufs, 50).unwrap();
        assert_eq!(buffers.capacity(), 50);
        assert_eq!(buffers.write_at(&mem, 0, &[7u8; 80]).unwrap(), 50);
        // Past the cap, buffers are still checked.
        let bad = [desc(DATA, 60, true), desc(MEM_SIZE as u64, 1, true)];
        let err = WritableBuffers::up_to(&mem, bad, 50).unwrap_err();
        assert!(matches!(err, ChainError::OutsideMemory { index: 1, .. }));
    }

    #[test]
    fn test_writable_chain_over_the_limit_is_refused() {
        let mem = guest_memory();
        let bufs = [desc(DATA, 40, true), desc(DATA + 0x100, 40, true)];
        let err = WritableBuffers::new(&mem, bufs, 79).unwrap_err();
        assert_eq!(err, ChainError::TooLong { limit: 79 });
        assert_eq!(WritableBuffers::new(&mem, bufs, 80).unwrap().capacity(), 80);
    }

    #[test]
    fn test_split_chain_takes_readable_then_writable() {
        let mem = guest_memory();
        let (readable, writable) = split_chain(
            &mem,
            [
                desc(DATA, 8, false),
                desc(DATA + 8, 8, false),
                desc(DATA + 0x100, 16, true),
            ],
            64,
            64,
        )
        .unwrap();
        assert_eq!((readable.len(), writable.capacity()), (16, 16));
        let err = split_chain(
            &mem,
            [
                desc(DATA, 8, false),
                desc(DATA + 0x100, 16, true),
                desc(DATA, 8, false),
            ],
            64,
            64,
        )
        .unwrap_err();
        assert!(matches!(err, ChainError::WrongDirection { index: 2, .. }));
    }
}
