// SPDX-License-Identifier: Apache-2.0
//! The i8042 keyboard controller, reduced to what a microVM guest uses: its
//! CPU reset line (`reboot=k`), which ends the VM cleanly.
//!
//! There is no keyboard: the output buffer is always empty, and commands
//! other than the ones below are accepted and ignored.

use serde::{Deserialize, Serialize};

use crate::devices::bus::BusDevice;
use crate::exit::{ExitNotifier, VmExit};

/// Offset of the command/status port (0x64) from the data port (0x60).
const COMMAND_OFFSET: u64 = 4;
/// Command: read the controller configuration byte.
const CMD_READ_CONFIG: u8 = 0x20;
/// Command: write the controller configuration byte (next data write).
const CMD_WRITE_CONFIG: u8 = 0x60;
/// Command: pulse the CPU reset line.
const CMD_RESET_CPU: u8 = 0xfe;
/// Status bit: the output buffer holds a byte for the guest.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status bit: system flag, set once self-test passed (always, here).
const STATUS_SYSTEM_FLAG: u8 = 0x04;
/// Configuration byte at power-on: keyboard interrupt on, translation on.
const DEFAULT_CONFIG: u8 = 0x45;

/// The controller in a snapshot: a guest paused between a command and
/// its data byte, or before reading a reply, finds them after a restore.
/// Any byte values are valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// The controller configuration byte.
    pub config: u8,
    /// The byte waiting in the output buffer, if any.
    pub output: Option<u8>,
    /// The next data-port write is the configuration byte.
    pub awaiting_config: bool,
}

/// The i8042 as seen on ports 0x60..=0x64.
#[derive(Debug)]
pub struct I8042 {
    exit: ExitNotifier,
    config: u8,
    output: Option<u8>,
    awaiting_config: bool,
}

impl I8042 {
    /// An i8042 whose reset command ends the VM through `exit`.
    pub fn new(exit: ExitNotifier) -> Self {
        I8042 {
            exit,
            config: DEFAULT_CONFIG,
            output: None,
            awaiting_config: false,
        }
    }

    /// The controller's registers, for a snapshot.
    pub fn save_state(&self) -> I8042State {
        I8042State {
            config: self.config,
            output: self.output,
            awaiting_config: self.awaiting_config,
        }
    }

    /// Takes the registers a snapshot saved.
    pub fn restore_state(&mut self, state: &I8042State) {
        self.config = state.config;
        self.output = state.output;
        self.awaiting_config = state.awaiting_config;
    }

    fn status(&self) -> u8 {
        let full = if self.output.is_some() {
            STATUS_OUTPUT_FULL
        } else {
            0
        };
        STATUS_SYSTEM_FLAG | full
    }

    fn command(&mut self, cmd: u8) {
        self.awaiting_config = false;
        match cmd {
            CMD_READ_CONFIG => self.output = Some(self.config),
            CMD_WRITE_CONFIG => self.awaiting_config = true,
            CMD_RESET_CPU => {
                tracing::info!("guest requested a reset through the i8042");
                self.exit.notify(VmExit::GuestReset);
            }
            other => tracing::debug!("i8042: ignoring command {other:#x}"),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            0 => self.output.take().unwrap_or(0),
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            0 if self.awaiting_config => {
                self.config = value;
                self.awaiting_config = false;
            }
            COMMAND_OFFSET => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_reset_command_ends_the_vm_cleanly() {
        let exit = ExitNotifier::new();
        let mut i8042 = I8042::new(exit.clone());
        let mut status = [0u8];
        i8042.read(COMMAND_OFFSET, &mut status);
        // Linux's kb_wait() polls until the input buffer bit (0x02) clears.
        assert_eq!(status[0] & 0x02, 0);
        assert!(!exit.is_notified());
        i8042.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.wait(), VmExit::GuestReset);
    }

    #[test]
    fn test_config_byte_round_trips() {
        let mut i8042 = I8042::new(ExitNotifier::new());
        i8042.write(COMMAND_OFFSET, &[CMD_WRITE_CONFIG]);
        i8042.write(0, &[0x30]);
        i8042.write(COMMAND_OFFSET, &[CMD_READ_CONFIG]);
        let mut status = [0u8];
        i8042.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0] & STATUS_OUTPUT_FULL, STATUS_OUTPUT_FULL);
        let mut data = [0u8];
        i8042.read(0, &mut data);
        assert_eq!(data[0], 0x30);
        i8042.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0] & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn test_a_pending_config_write_survives_a_restore() {
        let mut i8042 = I8042::new(ExitNotifier::new());
        i8042.write(COMMAND_OFFSET, &[CMD_WRITE_CONFIG]);
        let state = i8042.save_state();
        let mut restored = I8042::new(ExitNotifier::new());
        restored.restore_state(&state);
        restored.write(0, &[0x30]);
        restored.write(COMMAND_OFFSET, &[CMD_READ_CONFIG]);
        let mut data = [0u8];
        restored.read(0, &mut data);
        assert_eq!(data[0], 0x30);
    }

    #[test]
    fn test_unknown_commands_and_ports_are_harmless() {
        let exit = ExitNotifier::new();
        let mut i8042 = I8042::new(exit.clone());
        i8042.write(COMMAND_OFFSET, &[0xad]);
        i8042.write(2, &[1]);
        i8042.write(0, &[]);
        let mut data = [0u8; 2];
        i8042.read(1, &mut data);
        assert_eq!(data, [0xff, 0]);
        assert!(!exit.is_notified());
    }
}
