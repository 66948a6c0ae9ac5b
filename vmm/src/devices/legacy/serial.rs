// SPDX-License-Identifier: Apache-2.0
//! COM1: `vm_superio`'s 16550A, its interrupt raised through an irqfd.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::{NoEvents, SerialState};
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

/// The 16550A's receive FIFO (`vm_superio` refuses a state holding more).
const SERIAL_FIFO_SIZE: usize = 64;

/// Interrupt identification bit 0: no interrupt pending.
const IIR_NO_INTERRUPT: u8 = 0x01;

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

/// The UART's registers and receive FIFO in a snapshot (`vm_superio`'s
/// `SerialState`, which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes received and not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

/// Why a serial state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum SerialStateError {
    /// The receive FIFO holds more than the UART's.
    #[error("The snapshot's serial receive buffer holds {0} bytes, more than the UART's FIFO")]
    FifoOverflow(usize),
    /// The interrupt pending in the state cannot be raised.
    #[error("Cannot raise the restored serial port's interrupt")]
    Interrupt(#[source] std::io::Error),
}

impl SerialDevice {
    /// A UART writing what the guest sends to `output` and signalling its
    /// interrupt on `interrupt`.
    pub fn new(interrupt: EventFdTrigger, output: SerialOutput) -> Self {
        SerialDevice {
            serial: Serial::new(interrupt, output),
        }
    }

    /// The registers and receive FIFO, for a snapshot.
    pub fn save_state(&self) -> SerialDeviceState {
        let state = self.serial.state();
        SerialDeviceState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer,
        }
    }

    /// [`SerialDevice::new`] as `state` saved it; an interrupt the state
    /// has pending (transmitter empty, data received) is raised again.
    ///
    /// # Errors
    /// [`SerialStateError`] when the FIFO in `state` is over-full or the
    /// interrupt cannot be raised.
    pub fn from_state(
        interrupt: EventFdTrigger,
        output: SerialOutput,
        state: &SerialDeviceState,
    ) -> Result<Self, SerialStateError> {
        if state.in_buffer.len() > SERIAL_FIFO_SIZE {
            return Err(SerialStateError::FifoOverflow(state.in_buffer.len()));
        }
        let state = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let serial =
            Serial::from_state(&state, interrupt, NoEvents, output).map_err(|e| match e {
                vm_superio::serial::Error::Trigger(e) | vm_superio::serial::Error::IOError(e) => {
                    SerialStateError::Interrupt(e)
                }
                vm_superio::serial::Error::FullFifo => {
                    SerialStateError::FifoOverflow(state.in_buffer.len())
                }
            })?;
        Ok(SerialDevice { serial })
    }

    /// Raises the UART's interrupt again if one is pending (the
    /// identification register names a cause). A restore calls it just
    /// before the vCPUs run, once the interrupt controllers hold their
    /// saved state, which overwrote what [`SerialDevice::from_state`]
    /// raised: a guest waiting for "transmitter empty" would otherwise
    /// wait for ever.
    ///
    /// # Errors
    /// The irqfd cannot be written.
    pub fn raise_pending_interrupt(&self) -> std::io::Result<()> {
        if self.serial.state().interrupt_identification & IIR_NO_INTERRUPT != 0 {
            return Ok(());
        }
        self.serial.interrupt_evt().trigger()
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
    fn test_state_round_trips_with_its_fifo_and_pending_interrupt() {
        let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialDevice::new(
            EventFdTrigger::new(event.try_clone().unwrap()),
            Box::new(SharedBuffer::default()),
        );
        // Line control, scratch, received-data interrupt on, two bytes in.
        serial.write(3, &[0x03]);
        serial.write(7, &[0x5a]);
        serial.write(1, &[0x01]);
        serial.serial.enqueue_raw_bytes(b"hi").unwrap();
        let json = serde_json::to_string(&serial.save_state()).unwrap();
        let state: SerialDeviceState = serde_json::from_str(&json).unwrap();
        assert_eq!(state.in_buffer, b"hi");

        let restored_event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let out = SharedBuffer::default();
        let mut restored = SerialDevice::from_state(
            EventFdTrigger::new(restored_event.try_clone().unwrap()),
            Box::new(out.clone()),
            &state,
        )
        .unwrap();
        assert!(
            restored_event.read().unwrap() >= 1,
            "data-ready raised again"
        );
        restored.raise_pending_interrupt().unwrap();
        assert_eq!(restored_event.read().unwrap(), 1, "and once more on demand");
        let mut byte = [0u8];
        restored.read(7, &mut byte);
        assert_eq!(byte[0], 0x5a);
        restored.read(3, &mut byte);
        assert_eq!(byte[0], 0x03);
        restored.read(0, &mut byte);
        assert_eq!(byte[0], b'h');
        restored.read(0, &mut byte);
        assert_eq!(byte[0], b'i');
        restored.write(0, b"k");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"k");
        // The FIFO is empty and THR-empty is not enabled: nothing pending.
        let _ = restored_event.read();
        restored.raise_pending_interrupt().unwrap();
        assert!(restored_event.read().is_err());
    }

    #[test]
    fn test_an_overfull_fifo_is_refused() {
        let serial = SerialDevice::new(
            EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            Box::new(SharedBuffer::default()),
        );
        let mut state = serial.save_state();
        state.in_buffer = vec![0; 65];
        let err = SerialDevice::from_state(
            EventFdTrigger::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            Box::new(SharedBuffer::default()),
            &state,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "The snapshot's serial receive buffer holds 65 bytes, more than the UART's FIFO"
        );
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
