//! `vmpod-test-init`: the static `/init` of vmpod's guest boot tests.
//!
//! Run by the guest kernel as PID 1 from a tiny initrd, it
//!
//! 1. prints `vmpod-test-init: started`,
//! 2. mounts devtmpfs on `/dev`, proc on `/proc` and sysfs on `/sys`,
//! 3. writes the byte 123 to vmpod's boot-timer register at guest physical
//!    address `0xc000_0000` through `/dev/mem` (the VMM then logs the time
//!    since launch),
//! 4. prints the number of online CPUs, what the kernel offers containers
//!    (file systems, cgroup v2 controllers and freezer, namespaces), bytes
//!    from `/dev/hwrng` and the guest's uptime,
//! 5. prints `vmpod-test-init: rebooting`, syncs and reboots; with
//!    `reboot=k` on the kernel command line that is an i8042 reset, which
//!    the VMM treats as a clean exit. When the kernel command line holds the
//!    word `poweroff` (the kernel hands such words to init as arguments), it
//!    prints `vmpod-test-init: powering off` and powers the machine off
//!    instead.
//!
//! Every line starts with `vmpod-test-init: ` so that tests can find them in
//! the console output. A failing step is reported and the next one still
//! runs; the program never panics or exits, because PID 1 exiting panics the
//! kernel. Guest system calls are expensive on emulating KVM hosts (~0.4 ms
//! each), so the program makes as few as it can: it uses `#![no_main]` to
//! skip the Rust runtime's start-up work (signal and stdio set-up, which
//! would also replace a missing console with `/dev/null`), and it looks at
//! its arguments only for `poweroff`.

// In test builds the harness supplies `main` and only the pure helpers run.
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

mod devices;

use std::ffi::CStr;
use std::io;

/// Prefix of every line this program prints.
const PREFIX: &str = "vmpod-test-init: ";

/// Guest physical address of vmpod's boot-timer register.
const BOOT_TIMER_ADDR: libc::off_t = 0xc000_0000;

/// The value written to the boot-timer register.
const BOOT_TIMER_VALUE: u8 = 123;

/// Size of the `/dev/mem` mapping around the boot-timer register.
const PAGE_SIZE: usize = 4096;

/// The argument that makes init power the machine off instead of rebooting.
const POWER_OFF_ARG: &CStr = c"poweroff";

/// C entry point, called by the C runtime with the kernel's `argc`/`argv`.
#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    let mut console = Console::new();
    console.line("started");
    run(&mut console);
    // SAFETY: the C runtime passes the process's argv: `argc` valid,
    // NUL-terminated strings.
    let power_off = unsafe { has_arg(argc, argv, POWER_OFF_ARG) };
    if power_off {
        console.line("powering off");
        shut_down(&mut console, libc::RB_POWER_OFF)
    } else {
        console.line("rebooting");
        shut_down(&mut console, libc::RB_AUTOBOOT)
    }
}

/// Whether one of the first `argc` strings of `argv` (skipping the program
/// name) equals `wanted`.
///
/// # Safety
/// `argv` must point to at least `argc` valid NUL-terminated strings.
unsafe fn has_arg(argc: libc::c_int, argv: *const *const libc::c_char, wanted: &CStr) -> bool {
    let count = usize::try_from(argc).unwrap_or(0);
    (1..count).any(|i| {
        // SAFETY: the caller guarantees `argc` entries, each a valid string.
        let arg = unsafe { CStr::from_ptr(*argv.add(i)) };
        arg == wanted
    })
}

/// Everything between the first line and the reboot.
fn run(console: &mut Console) {
    for (source, target, fstype) in [
        (c"devtmpfs", c"/dev", c"devtmpfs"),
        (c"proc", c"/proc", c"proc"),
        (c"sysfs", c"/sys", c"sysfs"),
    ] {
        if let Err(err) = mount(source, target, fstype) {
            console.line(&format!("mount {} failed: {err}", show(target)));
        }
    }

    match write_boot_timer() {
        Ok(()) => console.line("boot-timer written"),
        Err(err) => console.line(&format!("boot-timer failed: {err}")),
    }

    let mut buf = [0u8; 256];
    match read_file(c"/sys/devices/system/cpu/online", &mut buf) {
        Ok(text) => match count_cpus(text) {
            Some(n) => console.line(&format!("cpus={n}")),
            None => console.line(&format!("cpus: cannot parse {:?}", text.trim())),
        },
        Err(err) => console.line(&format!("cpus: {err}")),
    }

    report_container_support(console);
    report_hwrng(console);
    devices::run_checks(console);

    match read_file(c"/proc/uptime", &mut buf) {
        Ok(text) => console.line(&format!(
            "uptime={}",
            text.split_whitespace().next().unwrap_or("?")
        )),
        Err(err) => console.line(&format!("uptime: {err}")),
    }
}

/// Namespace kinds looked up in `/proc/self/ns`.
const NAMESPACES: [&CStr; 7] = [
    c"/proc/self/ns/cgroup",
    c"/proc/self/ns/ipc",
    c"/proc/self/ns/mnt",
    c"/proc/self/ns/net",
    c"/proc/self/ns/pid",
    c"/proc/self/ns/user",
    c"/proc/self/ns/uts",
];

/// Prints the lines `filesystems=`, `cgroup-controllers=`, `cgroup-freeze=`
/// and `namespaces=`, so that tests can check the guest kernel's
/// configuration from the console.
fn report_container_support(console: &mut Console) {
    let mut buf = [0u8; 4096];
    match read_file(c"/proc/filesystems", &mut buf) {
        Ok(text) => console.line(&format!("filesystems={}", filesystem_names(text))),
        Err(err) => console.line(&format!("filesystems: {err}")),
    }

    let cgroup = c"/sys/fs/cgroup";
    if let Err(err) = mount(c"cgroup2", cgroup, c"cgroup2") {
        console.line(&format!("mount {} failed: {err}", show(cgroup)));
    }
    match read_file(c"/sys/fs/cgroup/cgroup.controllers", &mut buf) {
        Ok(text) => console.line(&format!("cgroup-controllers={}", text.trim())),
        Err(err) => console.line(&format!("cgroup-controllers: {err}")),
    }
    // The v2 freezer is a file of every non-root cgroup, not a controller.
    // SAFETY: the path is a valid NUL-terminated string.
    let made = unsafe { libc::mkdir(c"/sys/fs/cgroup/vmpod-test".as_ptr(), 0o755) } == 0;
    let freeze = made && exists(c"/sys/fs/cgroup/vmpod-test/cgroup.freeze");
    console.line(&format!(
        "cgroup-freeze={}",
        if freeze { "yes" } else { "no" }
    ));

    let present: Vec<String> = NAMESPACES
        .iter()
        .filter(|path| exists(path))
        .map(|path| show(path).trim_start_matches("/proc/self/ns/").to_owned())
        .collect();
    console.line(&format!("namespaces={}", present.join(" ")));
}

/// Bytes read from `/dev/hwrng` to show the entropy device works.
const HWRNG_BYTES: usize = 32;

/// Prints `hwrng=<source> <hex bytes>` after reading [`HWRNG_BYTES`] from
/// `/dev/hwrng`, or `hwrng: <error>` (no device: `No such device`).
fn report_hwrng(console: &mut Console) {
    let mut name = [0u8; 64];
    let source = read_file(c"/sys/class/misc/hw_random/rng_current", &mut name)
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    match read_exact(c"/dev/hwrng", HWRNG_BYTES) {
        Ok(bytes) => console.line(&format!("hwrng={source} {}", hex(&bytes))),
        Err(err) => console.line(&format!("hwrng: {err}")),
    }
}

/// Reads exactly `len` bytes (a device may return fewer per read).
fn read_exact(path: &CStr, len: usize) -> io::Result<Vec<u8>> {
    // SAFETY: the path is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    let result = loop {
        let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) else {
            break Ok(());
        };
        // SAFETY: the pointer and length describe the live, writable `rest`.
        let n = unsafe { libc::read(fd, rest.as_mut_ptr().cast(), rest.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                break Err(err);
            }
        } else if n == 0 {
            break Err(io::ErrorKind::UnexpectedEof.into());
        } else {
            filled += n.unsigned_abs();
        }
    };
    // SAFETY: `fd` is a descriptor this function opened and owns.
    unsafe { libc::close(fd) };
    result.map(|()| buf)
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file system names of a `/proc/filesystems` text, space-separated.
fn filesystem_names(text: &str) -> String {
    text.lines()
        .filter_map(|line| line.split_whitespace().last())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `path` exists.
fn exists(path: &CStr) -> bool {
    // SAFETY: the path is a valid NUL-terminated string.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
}

/// Where the program's lines go: fd 1, or `/dev/console` if fd 1 is not
/// usable (the kernel could not open the console for init).
struct Console {
    /// The file descriptor written to.
    fd: libc::c_int,
    /// Whether `/dev/console` was already tried as a replacement for fd 1.
    reopened: bool,
}

impl Console {
    /// A console writing to fd 1.
    fn new() -> Self {
        Self {
            fd: 1,
            reopened: false,
        }
    }

    /// Prints `vmpod-test-init: <msg>` and a newline in a single write.
    /// Output errors are ignored after one attempt to open `/dev/console`:
    /// there is nowhere else to report them.
    fn line(&mut self, msg: &str) {
        let text = format!("{PREFIX}{msg}\n");
        if self.write_all(text.as_bytes()).is_ok() || self.reopened {
            return;
        }
        self.reopened = true;
        // SAFETY: the path is a valid NUL-terminated string; the flags
        // create nothing.
        let fd = unsafe {
            libc::open(
                c"/dev/console".as_ptr(),
                libc::O_WRONLY | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            self.fd = fd;
            // Nothing more can be done if this fails too.
            let _ = self.write_all(text.as_bytes());
        }
    }

    /// Writes all of `bytes` to the console's descriptor.
    fn write_all(&self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            // SAFETY: the pointer and length describe the live slice `bytes`.
            let n = unsafe { libc::write(self.fd, bytes.as_ptr().cast(), bytes.len()) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            bytes = bytes.get(n.unsigned_abs()..).unwrap_or_default();
        }
        Ok(())
    }
}

/// Mounts `fstype` from `source` on `target`, creating `target` if it does
/// not exist. An already mounted devtmpfs (`EBUSY`) counts as success.
fn mount(source: &CStr, target: &CStr, fstype: &CStr) -> io::Result<()> {
    let try_mount = || {
        // SAFETY: all strings are valid and NUL-terminated; no data pointer.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    let mut result = try_mount();
    if matches!(&result, Err(err) if err.raw_os_error() == Some(libc::ENOENT)) {
        // SAFETY: the path is a valid NUL-terminated string.
        if unsafe { libc::mkdir(target.as_ptr(), 0o755) } != 0 {
            return Err(io::Error::last_os_error());
        }
        result = try_mount();
    }
    match result {
        Err(err) if err.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        other => other,
    }
}

/// Writes [`BOOT_TIMER_VALUE`] to the boot-timer register at
/// [`BOOT_TIMER_ADDR`] through an uncached `/dev/mem` mapping.
fn write_boot_timer() -> io::Result<()> {
    // SAFETY: the path is a valid NUL-terminated string.
    let fd = unsafe {
        libc::open(
            c"/dev/mem".as_ptr(),
            libc::O_RDWR | libc::O_SYNC | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh shared mapping chosen by the kernel; it aliases no
    // Rust object.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            BOOT_TIMER_ADDR,
        )
    };
    let result = if map == libc::MAP_FAILED {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: `map` is a live, writable mapping of PAGE_SIZE bytes, so
        // its first byte is valid for a (device register) write.
        unsafe { std::ptr::write_volatile(map.cast::<u8>(), BOOT_TIMER_VALUE) };
        // The mapping is left in place: init never exits and reboots soon,
        // and every system call is expensive in the guest.
        Ok(())
    };
    // SAFETY: `fd` is a descriptor this function opened and owns.
    unsafe { libc::close(fd) };
    result
}

/// Reads up to `buf.len()` bytes of a small text file (sysfs/procfs) and
/// returns them as text.
fn read_file<'a>(path: &CStr, buf: &'a mut [u8]) -> io::Result<&'a str> {
    // SAFETY: the path is a valid NUL-terminated string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the pointer and length describe the live, writable `buf`.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    let result = if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        let bytes = buf.get(..n.unsigned_abs()).unwrap_or_default();
        std::str::from_utf8(bytes).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    };
    // SAFETY: `fd` is a descriptor this function opened and owns.
    unsafe { libc::close(fd) };
    result
}

/// Counts the CPUs in a kernel CPU list such as `0`, `0-1` or `0,2-3`.
/// Returns `None` if the text is not such a list.
fn count_cpus(list: &str) -> Option<usize> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    list.split(',').try_fold(0usize, |total, part| {
        let n = match part.split_once('-') {
            Some((first, last)) => {
                let first: usize = first.parse().ok()?;
                let last: usize = last.parse().ok()?;
                last.checked_sub(first)?.checked_add(1)?
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
        total.checked_add(n)
    })
}

/// `path` for messages.
fn show(path: &CStr) -> String {
    path.to_string_lossy().into_owned()
}

/// Flushes file systems and reboots or powers off the machine (`how` is
/// `RB_AUTOBOOT` or `RB_POWER_OFF`). Never returns: if that fails, or a
/// power-off halts instead, the error is printed and the process waits
/// forever (PID 1 must not exit).
fn shut_down(console: &mut Console, how: libc::c_int) -> ! {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    // As a clean shutdown does: a read-only root has its journal
    // checkpointed, so the host can read the image afterwards. (On the
    // initrd's rootfs this fails harmlessly.)
    // SAFETY: valid NUL-terminated target; no source, type or data.
    unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REMOUNT | libc::MS_RDONLY,
            std::ptr::null(),
        )
    };
    // SAFETY: reboot has no memory-safety preconditions; PID 1 may call it.
    unsafe { libc::reboot(how) };
    console.line(&format!("reboot failed: {}", io::Error::last_os_error()));
    loop {
        // SAFETY: pause has no preconditions.
        unsafe { libc::pause() };
    }
}

#[cfg(test)]
mod tests {
    use super::{count_cpus, has_arg, POWER_OFF_ARG};

    /// Runs `has_arg` on a C-style argv built from `args`.
    fn argv_has_power_off(args: &[&std::ffi::CStr]) -> bool {
        let argv: Vec<*const libc::c_char> = args.iter().map(|arg| arg.as_ptr()).collect();
        let argc = libc::c_int::try_from(argv.len()).expect("few arguments");
        // SAFETY: `argv` holds `argc` pointers to live NUL-terminated strings.
        unsafe { has_arg(argc, argv.as_ptr(), POWER_OFF_ARG) }
    }

    #[test]
    fn test_finds_power_off_argument_after_program_name() {
        assert!(argv_has_power_off(&[c"/init", c"poweroff"]));
        assert!(argv_has_power_off(&[c"/init", c"quiet", c"poweroff"]));
        assert!(!argv_has_power_off(&[c"/init"]));
        assert!(!argv_has_power_off(&[c"poweroff"]));
        assert!(!argv_has_power_off(&[c"/init", c"poweroffx"]));
    }

    #[test]
    fn test_counts_cpu_lists() {
        assert_eq!(count_cpus("0\n"), Some(1));
        assert_eq!(count_cpus("0-1\n"), Some(2));
        assert_eq!(count_cpus("0,2-3"), Some(3));
        assert_eq!(count_cpus("0-7"), Some(8));
    }

    #[test]
    fn test_lists_filesystem_names() {
        let text = "nodev\tsysfs\nnodev\ttmpfs\n\text4\nnodev\toverlay\n";
        assert_eq!(super::filesystem_names(text), "sysfs tmpfs ext4 overlay");
        assert_eq!(super::filesystem_names(""), "");
    }

    #[test]
    fn test_hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(super::hex(&[0x00, 0xab, 0x7f]), "00ab7f");
        assert_eq!(super::hex(&[]), "");
    }

    #[test]
    fn test_count_cpus_rejects_garbage() {
        assert_eq!(count_cpus(""), None);
        assert_eq!(count_cpus("x"), None);
        assert_eq!(count_cpus("3-1"), None);
        assert_eq!(count_cpus("0-"), None);
    }
}
