//! Device checks of the test init, asked for by the kernel command line:
//! the kernel hands unknown `key=value` words to init as environment
//! variables, so `vmpod_disk=1 vmpod_fs=TAG vmpod_net=... vmpod_vsock=...`
//! select what runs. Each check prints one `vmpod-test-init: <name>=...`
//! line (or `<name>: <error>`) for the host-side test to assert on; the
//! host then checks what the guest wrote (disk image, shared directory).
//!
//! `vmpod_hold=PORT` makes init wait, before any other device check, until
//! the host connects to vsock port PORT and sends a line: the snapshot
//! tests take their snapshot while the guest waits there, before it mounts
//! its share, and release the original and the restored VM one by one.
//! `vmpod_disk_read=1` prints the first line of `/dev/vda`.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use crate::Console;

/// What the guest writes on its root disk and in the shared directory.
pub const GUEST_TEXT: &str = "written by the vmpod guest\n";
/// How long network and vsock peers get to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(20);

/// How long `vmpod_hold` waits for the host.
const HOLD_TIMEOUT: Duration = Duration::from_secs(900);

/// Runs every check the environment asks for.
pub fn run_checks(console: &mut Console) {
    if let Ok(port) = std::env::var("vmpod_hold") {
        let released = hold(console, &port);
        report(console, "released", released);
    }
    if std::env::var_os("vmpod_disk_read").is_some() {
        report(console, "disk-read", read_disk_line());
    }
    if std::env::var_os("vmpod_disk").is_some() {
        report(console, "disk", check_disk());
    }
    if let Ok(tag) = std::env::var("vmpod_fs") {
        report(console, "fs", check_fs(&tag));
    }
    if let Ok(spec) = std::env::var("vmpod_net") {
        report(console, "net", check_net(&spec));
    }
    if let Ok(spec) = std::env::var("vmpod_vsock") {
        report(console, "vsock", check_vsock(&spec));
    }
}

fn report(console: &mut Console, name: &str, result: io::Result<String>) {
    match result {
        Ok(text) => console.line(&format!("{name}={text}")),
        Err(err) => console.line(&format!("{name}: {err}")),
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// Prints `holding` and waits for the host to connect to vsock `port` and
/// send a line, which it returns.
fn hold(console: &mut Console, port: &str) -> io::Result<String> {
    let port: u32 = port.parse().map_err(|_| invalid("bad hold port"))?;
    let listener = vsock_listener(port)?;
    console.line("holding");
    let mut accepted = accept_within(&listener, HOLD_TIMEOUT)?;
    let line = read_line(&mut accepted)?;
    accepted.write_all(b"released\n")?;
    Ok(line)
}

/// The first line of the first virtio disk.
fn read_disk_line() -> io::Result<String> {
    let mut disk = std::fs::File::open("/dev/vda")?;
    Ok(read_line(&mut disk)?.trim().to_string())
}

/// Writes [`GUEST_TEXT`] to `/vmpod-guest.txt` on the root file system,
/// syncs it, reads it back; says which device and file system `/` is.
fn check_disk() -> io::Result<String> {
    let path = "/vmpod-guest.txt";
    let mut file = std::fs::File::create(path)?;
    file.write_all(GUEST_TEXT.as_bytes())?;
    file.sync_all()?;
    let back = std::fs::read_to_string(path)?;
    if back != GUEST_TEXT {
        return Err(invalid("read back something else"));
    }
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let root = mounts
        .lines()
        .rev()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let (dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            (dir == "/").then(|| format!("{dev} {fstype}"))
        })
        .unwrap_or_else(|| "?".into());
    Ok(format!("ok root={root}"))
}

/// Mounts the virtio-fs `tag` on `/mnt/<tag>` (or uses `/` when it is
/// the root), reads `from-host.txt` and writes `from-guest.txt`.
fn check_fs(tag: &str) -> io::Result<String> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    let dir = if mounts
        .lines()
        .any(|l| l.starts_with(&format!("{tag} / virtiofs")))
    {
        "/".to_string()
    } else {
        let dir = format!("/mnt/{tag}");
        std::fs::create_dir_all(&dir)?;
        let source = CString::new(tag).map_err(|_| invalid("tag has a NUL"))?;
        let target = CString::new(dir.as_str()).map_err(|_| invalid("path has a NUL"))?;
        // SAFETY: all strings are valid and NUL-terminated; no data.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                c"virtiofs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        dir
    };
    let from_host = std::fs::read_to_string(format!("{dir}/from-host.txt"))?;
    let mut file = std::fs::File::create(format!("{dir}/from-guest.txt"))?;
    file.write_all(GUEST_TEXT.as_bytes())?;
    file.sync_all()?;
    Ok(format!("read {:?} wrote from-guest.txt", from_host.trim()))
}

/// `vmpod_net=GUEST_IP/PREFIX,HOST_IP,PORT`: brings eth0 up with the
/// address, sends a UDP datagram to the host's port and waits for the
/// answer, which it prints.
fn check_net(spec: &str) -> io::Result<String> {
    let mut parts = spec.split(',');
    let (addr, host, port) = match (parts.next(), parts.next(), parts.next()) {
        (Some(a), Some(h), Some(p)) => (a, h, p),
        _ => return Err(invalid("expected GUEST_IP/PREFIX,HOST_IP,PORT")),
    };
    let (ip, prefix) = addr.split_once('/').ok_or_else(|| invalid("no /PREFIX"))?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| invalid("bad guest IP"))?;
    let prefix: u32 = prefix.parse().map_err(|_| invalid("bad prefix"))?;
    let host: Ipv4Addr = host.parse().map_err(|_| invalid("bad host IP"))?;
    let port: u16 = port.parse().map_err(|_| invalid("bad port"))?;
    configure_interface("eth0", ip, prefix)?;

    let socket = UdpSocket::bind(SocketAddrV4::new(ip, 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let deadline = std::time::Instant::now() + PEER_TIMEOUT;
    let mut buf = [0u8; 512];
    // Resend until the host answers: its first packets may find ARP or
    // the peer not ready yet.
    while std::time::Instant::now() < deadline {
        socket.send_to(b"ping from the vmpod guest", SocketAddrV4::new(host, port))?;
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
                return Ok(format!("reply {:?}", text.trim()));
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no UDP reply"))
}

/// Sets `name`'s IPv4 address and netmask and brings it up (ioctls, as
/// `ifconfig` does: no netlink code needed for one address).
fn configure_interface(name: &str, ip: Ipv4Addr, prefix: u32) -> io::Result<()> {
    if prefix > 32 {
        return Err(invalid("prefix over 32"));
    }
    // SAFETY: a plain socket call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor this function owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    for (request, value) in [
        (libc::SIOCSIFADDR, Some(u32::from(ip))),
        (libc::SIOCSIFNETMASK, Some(mask)),
        (libc::SIOCSIFFLAGS, None),
    ] {
        let mut ifr = ifreq_for(name)?;
        match value {
            Some(addr) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: addr.to_be(),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_in fits in the ifreq's sockaddr union
                // member (both 16 bytes); the write is unaligned-safe.
                unsafe {
                    std::ptr::write_unaligned(
                        std::ptr::addr_of_mut!(ifr.ifr_ifru.ifru_addr).cast(),
                        sin,
                    )
                };
            }
            None => {
                ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            }
        }
        use std::os::fd::AsRawFd;
        // SAFETY: `ifr` is a valid ifreq for this request.
        if unsafe { libc::ioctl(socket.as_raw_fd(), request, &ifr) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An `ifreq` naming `name`.
fn ifreq_for(name: &str) -> io::Result<libc::ifreq> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= ifr.ifr_name.len() {
        return Err(invalid("interface name too long"));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    Ok(ifr)
}

/// `vmpod_vsock=LISTEN_PORT,HOST_PORT`: connects to the host's HOST_PORT
/// and exchanges a line, then listens on LISTEN_PORT for the host's
/// connection and echoes a line back.
fn check_vsock(spec: &str) -> io::Result<String> {
    let (listen, host) = spec
        .split_once(',')
        .ok_or_else(|| invalid("expected LISTEN,HOST"))?;
    let listen: u32 = listen.parse().map_err(|_| invalid("bad listen port"))?;
    let host: u32 = host.parse().map_err(|_| invalid("bad host port"))?;

    let mut to_host = vsock_socket()?;
    vsock_call(&to_host, libc::VMADDR_CID_HOST, host, false)?;
    to_host.write_all(b"hello host from the vmpod guest\n")?;
    let from_host = read_line(&mut to_host)?;

    let listener = vsock_listener(listen)?;
    let mut accepted = accept_within(&listener, PEER_TIMEOUT)?;
    let line = read_line(&mut accepted)?;
    accepted.write_all(format!("echo {line}\n").as_bytes())?;
    Ok(format!(
        "host said {:?} to us; we echoed {:?} from the host",
        from_host.trim(),
        line.trim()
    ))
}

/// A vsock socket listening on `port`.
fn vsock_listener(port: u32) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let listener = vsock_socket()?;
    vsock_call(&listener, libc::VMADDR_CID_ANY, port, true)?;
    // SAFETY: a plain listen call on our socket.
    if unsafe { libc::listen(listener.as_raw_fd(), 1) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Accepts one connection on `listener` within `timeout`.
fn accept_within(listener: &std::fs::File, timeout: Duration) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let mut pollfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout_ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pollfd, 1, timeout_ms) } != 1 {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no host connection",
        ));
    }
    // SAFETY: accept on our listening socket; no address wanted.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we now own.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn vsock_socket() -> io::Result<std::fs::File> {
    // SAFETY: a plain socket call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own; File only reads/writes it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// `connect` (or `bind` when `bind`) to `cid:port`.
fn vsock_call(socket: &std::fs::File, cid: u32, port: u32, bind: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_vm is plain data; all zeroes is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    let ptr = std::ptr::addr_of!(addr).cast::<libc::sockaddr>();
    // SAFETY: `ptr` points to a live sockaddr_vm of `len` bytes.
    let rc = unsafe {
        if bind {
            libc::bind(socket.as_raw_fd(), ptr, len)
        } else {
            libc::connect(socket.as_raw_fd(), ptr, len)
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads up to a newline (at most 256 bytes).
fn read_line(stream: &mut impl Read) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        if stream.read(&mut byte)? == 0 || byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}
