// SPDX-License-Identifier: Apache-2.0
//! Ethernet MAC addresses in the one text form vmpod passes them around
//! in: the shim prints the pod interfaces' MACs, `vmpod-vm` reads them
//! from `--net mac=` and its config file, the agent finds the guest's
//! interfaces by them.

use std::fmt;
use std::str::FromStr;

/// A MAC address; its text form is `aa:bb:cc:dd:ee:ff` (hex digits of
/// either case when parsed, lower case when printed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Whether this is a group (multicast or broadcast) address, which
    /// cannot be an interface's own.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

/// A text that is not six `:`-separated two-digit hex bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidMac;

impl fmt::Display for InvalidMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a MAC address like 02:00:00:00:00:01")
    }
}

impl std::error::Error for InvalidMac {}

impl FromStr for MacAddr {
    type Err = InvalidMac;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or(InvalidMac)?;
            // from_str_radix alone would take a sign ("+a").
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(InvalidMac);
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| InvalidMac)?;
        }
        if parts.next().is_some() {
            return Err(InvalidMac);
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_macs_of_either_case_parse() {
        let mac: MacAddr = "02:00:0a:FF:00:01".parse().unwrap();
        assert_eq!(mac, MacAddr([2, 0, 10, 255, 0, 1]));
    }

    #[test]
    fn test_macs_print_as_they_parse_in_lower_case() {
        let mac = MacAddr([2, 0, 0xab, 0, 0, 1]);
        assert_eq!(mac.to_string(), "02:00:ab:00:00:01");
        assert_eq!(mac.to_string().parse::<MacAddr>(), Ok(mac));
    }

    #[test]
    fn test_malformed_macs_fail() {
        for bad in [
            "",
            "02:00:00:00:00",
            "02:00:00:00:00:01:02",
            "02:00:00:00:00:1",
            "02:00:00:00:00:zz",
            "0g:00:00:00:00:01",
            "2:0:0:0:0:1",
            "+2:00:00:00:00:01",
            "02-00-00-00-00-01",
            "02:00:00:00:00:01:",
        ] {
            assert_eq!(bad.parse::<MacAddr>(), Err(InvalidMac), "{bad}");
        }
    }

    #[test]
    fn test_group_addresses_are_multicast() {
        assert!(MacAddr([1, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(MacAddr([0xff; 6]).is_multicast());
        assert!(!MacAddr([2, 0, 0, 0, 0, 1]).is_multicast());
    }
}
