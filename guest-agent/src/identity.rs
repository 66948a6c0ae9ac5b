// SPDX-License-Identifier: Apache-2.0
//! Making the guest its own at CreateSandbox. A pod VM may be restored from
//! a template VM's snapshot, taken after the agent served and before any
//! CreateSandbox: every clone then starts with the template's random pool,
//! clock, hostname and MACs. At every CreateSandbox (cold boots too: one
//! code path, and it is cheap) the agent mixes 64 bytes of virtio-rng and
//! the host's seed into the kernel's random pool and reseeds its CRNG,
//! steps the clock to the host's, takes the pod's hostname, and gives each
//! virtio-net interface the pod's MAC ([`Network::set_device_macs`]).
//! Everything is checked, and the entropy read, before anything changes.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmpod_agent_api::MAX_SEED_BYTES;

use crate::network::{parse_mac, Network, NetworkError};

/// `_IOW('R', 0x03, int[2])`: adds bytes to the random pool, crediting
/// the entropy the caller vouches for.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`: reseeds the CRNG from the pool now, so that what the
/// template's CRNG would have produced is never produced.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
/// How much of virtio-rng the pool gets.
const HWRNG_BYTES: usize = 64;
/// How long virtio-rng may take to give them.
const HWRNG_WAIT: Duration = Duration::from_secs(2);
/// The least entropy the pool must get: the CRNG's key size (256 bits).
const MIN_ENTROPY_BYTES: usize = 32;
/// 2020-01-01 and 2100-01-01 in nanoseconds since the Unix epoch: a host
/// time outside is a broken host clock or a broken request.
const HOST_TIME_RANGE_NS: std::ops::Range<u64> =
    1_577_836_800_000_000_000..4_102_444_800_000_000_000;
/// The most interfaces a request may name (a VM has far fewer devices).
const MAX_INTERFACES: usize = 64;

/// Failures to make the guest its own.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A malformed field.
    #[error("{0}")]
    Invalid(String),
    /// Neither virtio-rng nor the request gave entropy.
    #[error("no entropy to reseed the guest's random pool: the request has no seed, and reading {hwrng} failed")]
    NoEntropy {
        /// The hardware RNG device.
        hwrng: String,
        /// Why it gave nothing.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused a step.
    #[error("{what}")]
    Os {
        /// The step.
        what: &'static str,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
    },
    /// The interfaces refused their MACs.
    #[error(transparent)]
    Network(#[from] NetworkError),
}

fn invalid(message: String) -> IdentityError {
    IdentityError::Invalid(message)
}

/// What of the machine the agent makes the pod's.
#[derive(Debug, Clone)]
pub struct Machine {
    /// The hardware RNG device (virtio-rng's `/dev/hwrng` in the VM).
    pub hwrng: PathBuf,
    /// The agent is PID 1 of the VM: the clock and the hostname are the
    /// pod's to set. An agent on a host (the tests) leaves the host's alone.
    pub owned: bool,
}

/// CreateSandbox's identity fields, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The time the guest's clock steps to, in nanoseconds since the epoch.
    time_ns: u64,
    /// The host's random bytes.
    seed: Vec<u8>,
    /// The MAC of each network device, in device order.
    macs: Vec<[u8; 6]>,
}

impl Identity {
    /// Checks the request's `host_time_ns`, `seed` and `interface_macs`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Invalid`] naming the field.
    pub fn check(host_time_ns: u64, seed: &[u8], macs: &[String]) -> Result<Self, IdentityError> {
        if !HOST_TIME_RANGE_NS.contains(&host_time_ns) {
            return Err(invalid(format!(
                "host_time_ns {host_time_ns} is not a time between 2020 and 2100"
            )));
        }
        if !seed.is_empty() && !(MIN_ENTROPY_BYTES..=MAX_SEED_BYTES).contains(&seed.len()) {
            return Err(invalid(format!(
                "seed has {} bytes: give none or {MIN_ENTROPY_BYTES} to {MAX_SEED_BYTES}",
                seed.len()
            )));
        }
        if macs.len() > MAX_INTERFACES {
            return Err(invalid(format!(
                "{} interface MACs are more than {MAX_INTERFACES}",
                macs.len()
            )));
        }
        let mut parsed: Vec<[u8; 6]> = Vec::with_capacity(macs.len());
        for text in macs {
            let mac = parse_mac(text).map_err(|err| invalid(err.to_string()))?;
            if mac[0] & 1 != 0 {
                return Err(invalid(format!(
                    "interface MAC {text} is a multicast address"
                )));
            }
            if mac == [0; 6] {
                return Err(invalid(format!("interface MAC {text} is all zeros")));
            }
            if parsed.contains(&mac) {
                return Err(invalid(format!("interface MAC {text} is given twice")));
            }
            parsed.push(mac);
        }
        Ok(Identity {
            time_ns: host_time_ns,
            seed: seed.to_vec(),
            macs: parsed,
        })
    }

    /// The bytes the random pool gets: virtio-rng's, then the seed's.
    /// Reads the device (blocking, at most [`HWRNG_WAIT`]); changes
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`IdentityError::NoEntropy`] when the two give under 32 bytes.
    pub fn entropy(&self, hwrng: &Path) -> Result<Vec<u8>, IdentityError> {
        let mut bytes = match read_hwrng(hwrng) {
            Ok(bytes) => bytes,
            Err(source) if self.seed.is_empty() => {
                return Err(IdentityError::NoEntropy {
                    hwrng: hwrng.display().to_string(),
                    source,
                })
            }
            Err(err) => {
                tracing::warn!(
                    "reading {}: {err}: the host's seed alone reseeds the random pool",
                    hwrng.display()
                );
                Vec::new()
            }
        };
        bytes.extend_from_slice(&self.seed);
        if bytes.len() < MIN_ENTROPY_BYTES {
            return Err(IdentityError::NoEntropy {
                hwrng: hwrng.display().to_string(),
                source: std::io::Error::other(format!(
                    "it gave only {} of {HWRNG_BYTES} bytes",
                    bytes.len()
                )),
            });
        }
        Ok(bytes)
    }

    /// Makes the guest the pod's: reseeds the random pool with `entropy`
    /// (from [`Identity::entropy`]), gives the interfaces their MACs and,
    /// on a machine the agent owns, steps the clock and sets `hostname`.
    ///
    /// # Errors
    ///
    /// [`IdentityError`] naming the step the kernel refused.
    pub async fn apply(
        &self,
        entropy: &[u8],
        hostname: &str,
        machine: &Machine,
        network: &Network,
    ) -> Result<(), IdentityError> {
        reseed(entropy)?;
        if machine.owned {
            let second = 1_000_000_000;
            // The checked range fits time_t and c_long.
            let time = libc::timespec {
                tv_sec: (self.time_ns / second) as libc::time_t,
                tv_nsec: (self.time_ns % second) as libc::c_long,
            };
            // SAFETY: a valid timespec that outlives the call.
            let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) };
            if rc != 0 {
                return Err(os_error("stepping the clock to the host's"));
            }
            if !hostname.is_empty() {
                // SAFETY: pointer and length of a live string.
                let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
                if rc != 0 {
                    return Err(os_error("setting the guest's hostname"));
                }
            }
        }
        network.set_device_macs(&self.macs).await?;
        Ok(())
    }
}

fn os_error(what: &'static str) -> IdentityError {
    IdentityError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// Up to [`HWRNG_BYTES`] from the hardware RNG `path`, within
/// [`HWRNG_WAIT`]. Non-blocking reads, so that a device that never
/// answers cannot hold CreateSandbox: virtio-rng answers a read it cannot
/// fill yet with EAGAIN and fills its buffer meanwhile.
fn read_hwrng(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut device = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let mut bytes = vec![0u8; HWRNG_BYTES];
    let mut got = 0;
    let deadline = Instant::now() + HWRNG_WAIT;
    while got < HWRNG_BYTES {
        match device.read(&mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(err) => return Err(err),
        }
    }
    if got == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no bytes in {HWRNG_WAIT:?}"),
        ));
    }
    bytes.truncate(got);
    Ok(bytes)
}

/// `struct rand_pool_info` for RNDADDENTROPY: the entropy credited in
/// bits, the buffer's size in bytes, the bytes; in 32-bit words, as the
/// kernel's struct is laid out.
fn rand_pool_info(bytes: &[u8]) -> Vec<u32> {
    let mut info = Vec::with_capacity(2 + bytes.len().div_ceil(4));
    // The caller bounds `bytes` to a few hundred.
    info.push((bytes.len() * 8) as u32);
    info.push(bytes.len() as u32);
    info.extend(bytes.chunks(4).map(|chunk| {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        u32::from_ne_bytes(word)
    }));
    info
}

/// Mixes `entropy` into the kernel's random pool, credited (virtio-rng's
/// bytes and the host's are the host's `getrandom`), then reseeds the CRNG
/// from it.
fn reseed(entropy: &[u8]) -> Result<(), IdentityError> {
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/urandom")
        .map_err(|source| IdentityError::Os {
            what: "opening /dev/urandom",
            source,
        })?;
    let info = rand_pool_info(entropy);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info whose buf_size bytes
    // follow it; `info` holds them and outlives the call.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) };
    if rc != 0 {
        return Err(os_error("adding entropy to the random pool"));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let rc = unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) };
    if rc != 0 {
        return Err(os_error("reseeding the CRNG"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_NS: u64 = 1_765_000_000_000_000_000;

    fn error(result: Result<Identity, IdentityError>) -> String {
        vmpod_sys::error::chain(&result.unwrap_err())
    }

    #[test]
    fn test_rand_pool_info_is_bits_then_size_then_the_bytes() {
        let bytes: Vec<u8> = (1..=6).collect();
        let info = rand_pool_info(&bytes);
        let raw: Vec<u8> = info.iter().flat_map(|word| word.to_ne_bytes()).collect();
        assert_eq!(raw[..4], 48i32.to_ne_bytes());
        assert_eq!(raw[4..8], 6i32.to_ne_bytes());
        assert_eq!(raw[8..14], bytes[..]);
        assert_eq!(raw.len(), 16, "the bytes padded to whole words");
        assert_eq!(rand_pool_info(&[]), vec![0, 0]);
    }

    #[test]
    fn test_the_ioctl_numbers_are_the_kernels() {
        // _IOC(dir, 'R', nr, size): dir << 30 | size << 16 | type << 8 | nr.
        let write = 1 << 30;
        let int2 = (2 * std::mem::size_of::<libc::c_int>() as libc::c_ulong) << 16;
        assert_eq!(RNDADDENTROPY, write | int2 | (0x52 << 8) | 0x03);
        assert_eq!(RNDRESEEDCRNG, (0x52 << 8) | 0x07);
    }

    #[test]
    fn test_host_times_outside_2020_to_2100_are_refused() {
        let ok = Identity::check(NOW_NS, &[], &[]).unwrap();
        assert_eq!(ok.time_ns, NOW_NS);
        for bad in [0, 5, 1_500_000_000_000_000_000, u64::MAX] {
            assert_eq!(
                error(Identity::check(bad, &[], &[])),
                format!("host_time_ns {bad} is not a time between 2020 and 2100")
            );
        }
    }

    #[test]
    fn test_seeds_are_none_or_32_to_256_bytes() {
        assert!(Identity::check(NOW_NS, &[7; 32], &[]).is_ok());
        assert!(Identity::check(NOW_NS, &[7; 256], &[]).is_ok());
        for len in [1, 31, 257] {
            assert_eq!(
                error(Identity::check(NOW_NS, &vec![7; len], &[])),
                format!("seed has {len} bytes: give none or 32 to 256")
            );
        }
    }

    #[test]
    fn test_macs_must_be_unicast_distinct_and_well_formed() {
        let macs = |list: &[&str]| list.iter().map(|m| (*m).to_owned()).collect::<Vec<_>>();
        let ok = Identity::check(
            NOW_NS,
            &[],
            &macs(&["02:00:00:00:00:01", "02:00:00:00:00:02"]),
        );
        assert_eq!(
            ok.unwrap().macs,
            vec![[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]]
        );
        for (bad, message) in [
            (
                "03:00:00:00:00:01",
                "interface MAC 03:00:00:00:00:01 is a multicast address",
            ),
            (
                "00:00:00:00:00:00",
                "interface MAC 00:00:00:00:00:00 is all zeros",
            ),
            (
                "02:00:00:00:01",
                "hw_addr \"02:00:00:00:01\" is not a MAC address like 02:00:00:00:00:01",
            ),
        ] {
            assert_eq!(error(Identity::check(NOW_NS, &[], &macs(&[bad]))), message);
        }
        assert_eq!(
            error(Identity::check(
                NOW_NS,
                &[],
                &macs(&["02:00:00:00:00:01", "02:00:00:00:00:01"])
            )),
            "interface MAC 02:00:00:00:00:01 is given twice"
        );
    }

    #[test]
    fn test_no_hwrng_and_no_seed_is_refused_in_one_line() {
        let dir = std::env::temp_dir().join(format!("vmpod-identity-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("hwrng");
        let identity = Identity::check(NOW_NS, &[], &[]).unwrap();
        assert_eq!(
            vmpod_sys::error::chain(&identity.entropy(&missing).unwrap_err()),
            format!(
                "no entropy to reseed the guest's random pool: the request has no seed, \
                 and reading {} failed: No such file or directory (os error 2)",
                missing.display()
            )
        );
        // A seed stands in for a missing device.
        let seeded = Identity::check(NOW_NS, &[9; 32], &[]).unwrap();
        assert_eq!(seeded.entropy(&missing).unwrap(), vec![9; 32]);
        // A device with too little: an 8-byte file.
        std::fs::write(&missing, [1u8; 8]).unwrap();
        assert_eq!(
            vmpod_sys::error::chain(&identity.entropy(&missing).unwrap_err()),
            format!(
                "no entropy to reseed the guest's random pool: the request has no seed, \
                 and reading {} failed: it gave only 8 of 64 bytes",
                missing.display()
            )
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
