// SPDX-License-Identifier: Apache-2.0
//! The entropy device: fills each guest buffer with bytes from `getrandom`.
//!
//! A request is one descriptor chain of device-writable buffers. A chain
//! with a device-readable descriptor or a buffer outside guest memory is
//! completed with length 0 (dropped); the driver then simply asks again.
//! At most [`MAX_REQUEST_BYTES`] are served per request.

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::super::device::{ActivateError, QueueSet, VirtioDevice};
use super::super::ids::VIRTIO_ID_RNG;
use super::super::persist::{DeviceState, DeviceStateError};
use super::super::{feature, VIRTIO_F_VERSION_1};
use super::{MAX_REQUEST_BYTES, QUEUE_SIZE};
use crate::devices::virtio::iovec::WritableBuffers;
use crate::vstate::memory::{GuestMemory, GuestMemoryMmap};

/// Errors creating the entropy device.
#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    /// The queue's notification event could not be created.
    #[error("Cannot create the virtio-rng queue event")]
    QueueEvent(#[source] std::io::Error),
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// This many bytes were written to the guest.
    Bytes(u32),
    /// The chain was malformed; completed with length 0.
    Dropped,
}

/// The virtio-rng device.
#[derive(Debug)]
pub struct Entropy {
    queue_events: [EventFd; 1],
    active: Option<QueueSet>,
    /// Reused for every request: [`MAX_REQUEST_BYTES`] long.
    scratch: Vec<u8>,
    requests_dropped: u64,
}

impl Entropy {
    /// A new, inactive device.
    ///
    /// # Errors
    /// [`EntropyError::QueueEvent`] if the host is out of file descriptors.
    pub fn new() -> Result<Self, EntropyError> {
        Ok(Entropy {
            queue_events: [EventFd::new(EFD_NONBLOCK).map_err(EntropyError::QueueEvent)?],
            active: None,
            scratch: vec![0; MAX_REQUEST_BYTES as usize],
            requests_dropped: 0,
        })
    }

    /// Requests completed with length 0 because the guest built them wrong.
    pub fn requests_dropped(&self) -> u64 {
        self.requests_dropped
    }

    /// Serves every request on the queue, then interrupts the guest if it
    /// wants to be told. Does nothing before activation.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some(queue) = active.queues.first_mut() else {
            return;
        };
        let mem = &active.mem;
        let mut completed = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let served = fill_chain(mem, chain, &mut self.scratch);
            let len = match served {
                Served::Bytes(n) => n,
                Served::Dropped => {
                    self.requests_dropped += 1;
                    0
                }
            };
            if let Err(err) = queue.add_used(mem, head, len) {
                // Only a corrupt used ring gets here: stop serving it.
                tracing::warn!("virtio-rng: cannot complete request {head}: {err}");
                break;
            }
            completed = true;
        }
        if completed && queue.needs_notification(mem).unwrap_or(true) {
            if let Err(err) = active.interrupt.signal_used_queue() {
                tracing::warn!("virtio-rng: cannot interrupt the guest: {err}");
            }
        }
    }
}

/// Fills the chain's buffers with random bytes, at most `scratch.len()`.
fn fill_chain<M>(
    mem: &GuestMemoryMmap,
    chain: virtio_queue::DescriptorChain<M>,
    scratch: &mut [u8],
) -> Served
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory,
{
    // Check the whole chain before touching guest memory.
    let Ok(buffers) = WritableBuffers::up_to(mem, chain, scratch.len()) else {
        return Served::Dropped;
    };
    let Some(random) = scratch.get_mut(..buffers.capacity()) else {
        return Served::Dropped;
    };
    if let Err(err) = fill_random(random) {
        tracing::warn!("virtio-rng: getrandom failed: {err}");
        return Served::Dropped;
    }
    match buffers.write_at(mem, 0, random).map(u32::try_from) {
        Ok(Ok(written)) => Served::Bytes(written),
        _ => Served::Dropped,
    }
}

/// `getrandom(2)` until `buf` is full.
fn fill_random(mut buf: &mut [u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: the pointer and length describe the live, writable `buf`.
        let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        buf = &mut buf[n.unsigned_abs()..];
    }
    Ok(())
}

impl VirtioDevice for Entropy {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    fn avail_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
    }

    fn activate(&mut self, queues: QueueSet) -> Result<(), ActivateError> {
        queues.expect_queues(1)?;
        self.active = Some(queues);
        // Requests the driver queued before DRIVER_OK.
        self.process_queue();
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn queues_in_use(&self) -> Option<&[Queue]> {
        self.active.as_ref().map(|active| active.queues.as_slice())
    }

    /// Nothing beyond the transport: the entropy comes from the host.
    fn save_state(&self) -> Result<DeviceState, DeviceStateError> {
        Ok(DeviceState::Rng)
    }

    fn restore_state(&mut self, state: &DeviceState) -> Result<(), DeviceStateError> {
        state.expect_kind(VIRTIO_ID_RNG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::{guest_memory, readable, submit, writable, DATA};
    use crate::vstate::memory::{Bytes, GuestAddress};

    #[test]
    fn test_fills_every_buffer_of_a_request() {
        let mut rng = Entropy::new().unwrap();
        let mem = guest_memory();
        let used = submit(
            &mut rng,
            &mem,
            &[writable(DATA, 4096), writable(DATA + 0x2000, 16)],
        );
        assert_eq!(used, Some(4096 + 16));
        let mut bytes = vec![0u8; 4096];
        mem.read_slice(&mut bytes, GuestAddress(DATA)).unwrap();
        assert!(bytes.iter().any(|&b| b != 0), "all zero");
    }

    #[test]
    fn test_requests_are_capped() {
        let mut rng = Entropy::new().unwrap();
        let mem = guest_memory();
        let used = submit(&mut rng, &mem, &[writable(DATA, 1 << 20)]);
        assert_eq!(used, Some(MAX_REQUEST_BYTES));
    }

    #[test]
    fn test_malformed_requests_are_dropped() {
        let mut rng = Entropy::new().unwrap();
        let mem = guest_memory();
        assert_eq!(submit(&mut rng, &mem, &[readable(DATA, 64)]), Some(0));
        assert_eq!(submit(&mut rng, &mem, &[writable(1 << 40, 64)]), Some(0));
        assert_eq!(
            submit(&mut rng, &mem, &[writable(DATA, 64), readable(DATA, 64)]),
            Some(0)
        );
        assert_eq!(rng.requests_dropped(), 3);
    }

    #[test]
    fn test_nothing_happens_before_activation() {
        let mut rng = Entropy::new().unwrap();
        rng.process_queue();
        assert_eq!(rng.requests_dropped(), 0);
    }
}
