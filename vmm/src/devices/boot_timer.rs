// SPDX-License-Identifier: Apache-2.0
//! A register the guest writes once it is up, so the VMM can log how long
//! the boot took from the VMM's launch (Firecracker's boot-timer protocol:
//! the byte 123 at offset 0).

use std::time::{Duration, Instant};

use crate::devices::bus::BusDevice;

/// The value that marks "the guest's init has started".
pub const BOOT_COMPLETE_MAGIC: u8 = 123;

/// The boot-timer MMIO register.
///
/// It has no state in a snapshot: what it holds is this process's launch
/// time and the one boot it measured, and a restored guest does not boot
/// again (a restored VM's timer stays silent; the restore logs its own
/// timings).
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
            let cpu = process_cpu_time()
                .map(|cpu| format!("{:.1}", cpu.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "?".into());
            tracing::info!(
                "guest boot completed {:.1} ms after launch, {cpu} CPU ms",
                elapsed.as_secs_f64() * 1e3
            );
        }
    }
}

/// CPU time the VMM process has used so far (all threads, since exec):
/// what a launch costs the host, next to the wall time.
fn process_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some(Duration::new(
        u64::try_from(ts.tv_sec).ok()?,
        u32::try_from(ts.tv_nsec).ok()?,
    ))
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

    #[test]
    fn test_process_cpu_time_grows_with_work() {
        let before = process_cpu_time().unwrap();
        let mut x = 0u64;
        while process_cpu_time().unwrap() < before + Duration::from_millis(5) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(x > 0);
    }
}
