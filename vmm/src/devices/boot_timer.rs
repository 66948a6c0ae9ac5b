// SPDX-License-Identifier: Apache-2.0
//! A register the guest writes once it is up, so the VMM can log how long
//! the boot took from the VMM's launch (Firecracker's boot-timer protocol:
//! the byte 123 at offset 0).

use std::time::{Duration, Instant};

use crate::devices::bus::BusDevice;

/// The value that marks "the guest's init has started".
pub const BOOT_COMPLETE_MAGIC: u8 = 123;

/// The boot-timer MMIO register.
#[derive(Debug)]
pub struct BootTimer {
    launched: Instant,
    boot_time: Option<Duration>,
}

impl BootTimer {
    /// A timer counting from `launched`, the VMM's start.
    pub fn new(launched: Instant) -> Self {
        BootTimer {
            launched,
            boot_time: None,
        }
    }

    /// Time from launch to the guest's first boot-complete write, if any.
    pub fn boot_time(&self) -> Option<Duration> {
        self.boot_time
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 && data.first() == Some(&BOOT_COMPLETE_MAGIC) {
            let elapsed = self.launched.elapsed();
            self.boot_time.get_or_insert(elapsed);
            tracing::info!(
                "guest boot completed {} ms after launch",
                elapsed.as_millis()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_only_the_magic_at_offset_zero_marks_the_boot() {
        let mut timer = BootTimer::new(Instant::now());
        let mut data = [0xffu8; 4];
        timer.read(0, &mut data);
        assert_eq!(data, [0; 4]);
        timer.write(1, &[BOOT_COMPLETE_MAGIC]);
        timer.write(0, &[1]);
        timer.write(0, &[]);
        assert_eq!(timer.boot_time(), None);
        timer.write(0, &[BOOT_COMPLETE_MAGIC]);
        let first = timer.boot_time().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        timer.write(0, &[BOOT_COMPLETE_MAGIC]);
        assert_eq!(timer.boot_time(), Some(first));
    }
}
