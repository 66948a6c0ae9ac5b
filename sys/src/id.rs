// SPDX-License-Identifier: Apache-2.0
//! Container and exec ids, as the shim and the agent both check them.
//!
//! An id names a directory in the pod's share, a directory and a cgroup in
//! the guest, so both sides hold it to one rule that keeps it a single,
//! harmless path component.

/// The rule [`is_valid`] applies, for error messages.
pub const RULE: &str = "[A-Za-z0-9_.-], not starting with '.'";

/// Whether `id` has 1 to `max` bytes of [`RULE`]'s characters and does not
/// start with a dot (so it is never `.`, `..` or hidden).
pub fn is_valid(id: &str, max: usize) -> bool {
    !id.is_empty()
        && id.len() <= max
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_ids_of_the_rule_pass() {
        for id in ["a", "web-1", "A_b.c", &"x".repeat(64)] {
            assert!(is_valid(id, 64), "{id}");
        }
    }

    #[test]
    fn test_ids_outside_the_rule_fail() {
        for id in ["", ".", "..", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(!is_valid(id, 64), "{id:?}");
        }
    }
}
