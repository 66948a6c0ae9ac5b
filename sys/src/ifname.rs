// SPDX-License-Identifier: Apache-2.0
//! Linux network interface names, as the VMM (its taps), the shim (the
//! taps it makes in a pod's namespace) and the agent (the names the shim
//! gives the guest's interfaces) check them: a name the kernel would
//! refuse is refused first, with an error that names it.

/// Longest interface name (`IFNAMSIZ` less its NUL).
pub const MAX_LEN: usize = 15;

/// The rule [`is_valid`] applies, for error messages.
pub const RULE: &str = "1 to 15 bytes, not '.' or '..', no '/', ':' or whitespace";

/// Whether Linux accepts `name` as an interface name (its
/// `dev_valid_name`): 1 to [`MAX_LEN`] bytes, not `.` or `..`, no `/`,
/// `:`, NUL or whitespace. Unicode whitespace is refused too, which Linux
/// would take but which makes a name print like another.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| matches!(c, '/' | ':' | '\0') || c.is_whitespace())
}

/// An `ifreq` naming `name` (the rest zero), for the tun and socket
/// ioctls; `None` if `name` is not [valid](is_valid).
pub fn ifreq(name: &str) -> Option<libc::ifreq> {
    if !is_valid(name) {
        return None;
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // A valid name leaves at least one zero byte, the terminating NUL.
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    Some(ifr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_linux_takes_pass() {
        for name in ["eth0", "tap0_vmpod", "a", "x-y.z", "fifteen-bytes-x", "été"] {
            assert!(is_valid(name), "{name}");
        }
    }

    #[test]
    fn test_names_linux_refuses_fail() {
        for name in [
            "",
            ".",
            "..",
            "sixteen-bytes-xx",
            "a/b",
            "eth0:1",
            "a b",
            "a\tb",
            "a\nb",
            "a\0b",
            "a\u{a0}b",
        ] {
            assert!(!is_valid(name), "{name:?}");
        }
    }

    #[test]
    fn test_ifreq_carries_the_name_nul_terminated() {
        let ifr = ifreq("fifteen-bytes-x").unwrap();
        let name: Vec<u8> = ifr.ifr_name.iter().map(|&c| c as u8).collect();
        assert_eq!(&name[..15], b"fifteen-bytes-x");
        assert_eq!(name[15], 0);
    }

    #[test]
    fn test_ifreq_of_an_invalid_name_is_none() {
        assert!(ifreq("a/b").is_none());
        assert!(ifreq("sixteen-bytes-xx").is_none());
    }
}
