// SPDX-License-Identifier: Apache-2.0
//! COM1: `vm_superio`'s 16550A, its interrupt raised through an irqfd.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::bus::BusDevice;

/// Makes an `EventFd` (registered as an irqfd) usable as the UART's
/// interrupt line.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `event`, which the caller has registered as an irqfd.
    pub fn new(event: EventFd) -> Self {
        EventFdTrigger(event)
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

/// Where the guest's console output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// The guest's COM1 on ports 0x3f8..=0x3ff.
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, SerialOutput>,
}

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART writing what the guest sends to `output` and signalling its
    /// interrupt on `interrupt`.
    pub fn new(interrupt: EventFdTrigger, output: SerialOutput) -> Self {
        SerialDevice {
            serial: Serial::new(interrupt, output),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // The UART has 8 one-byte registers; the bus guarantees offset < 8.
        if let (Some(first), Ok(register)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.serial.read(register);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(register)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.serial.write(register, value) {
            // A console that cannot be written (closed pipe, full disk) must
            // not stop the guest; the byte is lost.
            tracing::debug!("serial output lost: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn test_guest_bytes_reach_the_output_and_raise_the_interrupt() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let trigger = EventFdTrigger::new(event.try_clone().unwrap());
        let out = SharedBuffer::default();
        let mut serial = SerialDevice::new(trigger, Box::new(out.clone()));
        // Enable the THR-empty interrupt, then send two bytes.
        serial.write(1, &[0x02]);
        serial.write(0, b"o");
        serial.write(0, b"k");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"ok");
        assert!(event.read().unwrap() >= 1);
        // Line status: transmitter empty.
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x20, 0x20);
    }

    #[test]
    fn test_empty_accesses_are_ignored() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedBuffer::default();
        let mut serial = SerialDevice::new(EventFdTrigger::new(event), Box::new(out.clone()));
        serial.write(0, &[]);
        serial.read(0, &mut []);
        assert!(out.0.lock().unwrap().is_empty());
    }
}
