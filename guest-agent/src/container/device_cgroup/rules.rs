// SPDX-License-Identifier: Apache-2.0
//! Device cgroup rules: `linux.resources.devices` in the spec's order,
//! then an allow rule for each node of `linux.devices` (the spec makes it
//! in the container to be used), then runc's default allow-list. Appended
//! last, as runc appends them, the defaults hold whatever the spec's rules
//! say.

use oci_spec::runtime::{Linux, LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType};
use serde_json::Value;

/// Most rules a spec may give (`linux.resources.devices` and
/// `linux.devices` together): each rule costs up to a dozen BPF
/// instructions, and every jump of the program must stay within the
/// 16-bit offsets of BPF.
pub const MAX_RULES: usize = 1024;

/// The devices a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// `a`: block and character devices.
    All,
    /// `b`.
    Block,
    /// `c`.
    Char,
}

/// A set of accesses, with the kernel's bits of `bpf_cgroup_dev_ctx`
/// (`BPF_DEVCG_ACC_*` in linux/bpf.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access(u8);

impl Access {
    /// mknod(2) of the node.
    pub const MKNOD: Access = Access(1);
    /// Opening it for reading.
    pub const READ: Access = Access(2);
    /// Opening it for writing.
    pub const WRITE: Access = Access(4);
    /// `rwm`.
    pub const ALL: Access = Access(7);

    /// The bits.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether every access of `other` is in `self`.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }

    /// `rwm` letters in any order (runc's form); `None` for an empty
    /// string or any other letter.
    pub fn parse(letters: &str) -> Option<Access> {
        if letters.is_empty() {
            return None;
        }
        letters.chars().try_fold(Access(0), |access, letter| {
            let bit = match letter {
                'r' => Access::READ,
                'w' => Access::WRITE,
                'm' => Access::MKNOD,
                _ => return None,
            };
            Some(Access(access.0 | bit.0))
        })
    }
}

/// One allow or deny rule; `None` numbers match any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Allow, or deny.
    pub allow: bool,
    /// The device type.
    pub kind: DeviceKind,
    /// The major number, or any.
    pub major: Option<u32>,
    /// The minor number, or any.
    pub minor: Option<u32>,
    /// The accesses it decides.
    pub access: Access,
}

const fn allow_char(major: u32, minor: Option<u32>) -> Rule {
    Rule {
        allow: true,
        kind: DeviceKind::Char,
        major: Some(major),
        minor,
        access: Access::ALL,
    }
}

/// runc's default allow-list (libcontainer/specconv `AllowedDevices`,
/// runc 1.2.4 and later): mknod of any block or character device (opening
/// the node still needs a rule), null, random, full, tty, zero, urandom,
/// the devpts terminals, ptmx and tun.
pub const DEFAULT_RULES: [Rule; 11] = [
    Rule {
        allow: true,
        kind: DeviceKind::Char,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    Rule {
        allow: true,
        kind: DeviceKind::Block,
        major: None,
        minor: None,
        access: Access::MKNOD,
    },
    allow_char(1, Some(3)),
    allow_char(1, Some(8)),
    allow_char(1, Some(7)),
    allow_char(5, Some(0)),
    allow_char(1, Some(5)),
    allow_char(1, Some(9)),
    allow_char(136, None),
    allow_char(5, Some(2)),
    allow_char(10, Some(200)),
];

/// A device rule of the spec the agent cannot apply, with its field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// A type other than a, b or c.
    #[error("{field}: {value} is not a, b or c")]
    Type {
        /// `linux.resources.devices[i].type`.
        field: String,
        /// The value, as JSON.
        value: String,
    },
    /// Access letters other than r, w and m, or none.
    #[error("{field}: {value:?} is not a combination of r, w and m")]
    Access {
        /// `linux.resources.devices[i].access`.
        field: String,
        /// The value.
        value: String,
    },
    /// A number that is neither a device number nor -1 (any).
    #[error("{field}: {value} is not a device number or -1")]
    Number {
        /// `linux.resources.devices[i].major` (or minor).
        field: String,
        /// The value.
        value: i64,
    },
    /// More rules than the program may hold.
    #[error("linux.resources.devices and linux.devices hold {0} entries, more than {MAX_RULES}")]
    TooMany(usize),
}

/// Checks the types of the device rules in a spec's or an update's JSON
/// (`devices`, the array of `linux.resources.devices`) before it is parsed
/// into the OCI types, whose message for an unknown letter would not name
/// the field.
///
/// # Errors
///
/// [`RuleError::Type`] naming the entry.
pub fn check_rule_types(devices: Option<&Value>) -> Result<(), RuleError> {
    let Some(rules) = devices.and_then(Value::as_array) else {
        return Ok(());
    };
    for (index, rule) in rules.iter().enumerate() {
        match rule.get("type") {
            None | Some(Value::Null) => {}
            Some(Value::String(kind)) if matches!(kind.as_str(), "a" | "b" | "c") => {}
            Some(other) => {
                return Err(RuleError::Type {
                    field: format!("linux.resources.devices[{index}].type"),
                    value: other.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// The container's rules for `linux`, in order: the spec's, its device
/// nodes', the defaults.
///
/// # Errors
///
/// [`RuleError`] naming the field at fault.
pub fn spec_rules(linux: &Linux) -> Result<Vec<Rule>, RuleError> {
    let cgroup_rules = linux
        .resources()
        .as_ref()
        .and_then(|resources| resources.devices().as_deref())
        .unwrap_or_default();
    rules(cgroup_rules, linux.devices().as_deref().unwrap_or_default())
}

/// The rules of `cgroup_rules` (`linux.resources.devices`), then of
/// `nodes` (`linux.devices`), then the defaults.
///
/// # Errors
///
/// [`RuleError`] naming the field at fault.
pub fn rules(
    cgroup_rules: &[LinuxDeviceCgroup],
    nodes: &[LinuxDevice],
) -> Result<Vec<Rule>, RuleError> {
    let count = cgroup_rules.len() + nodes.len();
    if count > MAX_RULES {
        return Err(RuleError::TooMany(count));
    }
    let mut rules = Vec::with_capacity(count + DEFAULT_RULES.len());
    for (index, rule) in cgroup_rules.iter().enumerate() {
        rules.push(cgroup_rule(index, rule)?);
    }
    for (index, node) in nodes.iter().enumerate() {
        if let Some(rule) = node_rule(index, node)? {
            rules.push(rule);
        }
    }
    rules.extend(DEFAULT_RULES);
    Ok(rules)
}

/// `linux.resources.devices[index]`. No type is `a` and no number any, as
/// in runc; the access is required, as runc requires it.
fn cgroup_rule(index: usize, rule: &LinuxDeviceCgroup) -> Result<Rule, RuleError> {
    let field = |name: &str| format!("linux.resources.devices[{index}].{name}");
    let kind = match rule.typ() {
        None | Some(LinuxDeviceType::A) => DeviceKind::All,
        Some(LinuxDeviceType::B) => DeviceKind::Block,
        Some(LinuxDeviceType::C) => DeviceKind::Char,
        Some(other @ (LinuxDeviceType::U | LinuxDeviceType::P)) => {
            return Err(RuleError::Type {
                field: field("type"),
                value: format!("{:?}", other.as_str()),
            })
        }
    };
    let letters = rule.access().as_deref().unwrap_or_default();
    let access = Access::parse(letters).ok_or_else(|| RuleError::Access {
        field: field("access"),
        value: letters.to_owned(),
    })?;
    Ok(Rule {
        allow: rule.allow(),
        kind,
        major: number(rule.major(), || field("major"))?,
        minor: number(rule.minor(), || field("minor"))?,
        access,
    })
}

/// An allow rule for `linux.devices[index]`; none for a FIFO, which the
/// device cgroup does not govern.
fn node_rule(index: usize, node: &LinuxDevice) -> Result<Option<Rule>, RuleError> {
    let field = |name: &str| format!("linux.devices[{index}].{name}");
    let kind = match node.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => DeviceKind::Char,
        LinuxDeviceType::B => DeviceKind::Block,
        LinuxDeviceType::P => return Ok(None),
        LinuxDeviceType::A => {
            return Err(RuleError::Type {
                field: field("type"),
                value: "\"a\"".to_owned(),
            })
        }
    };
    Ok(Some(Rule {
        allow: true,
        kind,
        major: number(Some(node.major()), || field("major"))?,
        minor: number(Some(node.minor()), || field("minor"))?,
        access: Access::ALL,
    }))
}

/// A device number; `None` and -1 are any.
fn number(value: Option<i64>, field: impl FnOnce() -> String) -> Result<Option<u32>, RuleError> {
    match value {
        None | Some(-1) => Ok(None),
        Some(value) => u32::try_from(value)
            .map(Some)
            .map_err(|_| RuleError::Number {
                field: field(),
                value,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(json: Value) -> Linux {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn test_access_letters_as_runc_takes_them() {
        assert_eq!(Access::parse("rwm"), Some(Access::ALL));
        assert_eq!(Access::parse("mr"), Some(Access(3)));
        assert_eq!(Access::parse("w"), Some(Access::WRITE));
        assert_eq!(Access::parse(""), None);
        assert_eq!(Access::parse("rwx"), None);
        assert!(Access::ALL.contains(Access::READ));
        assert!(!Access::READ.contains(Access::ALL));
    }

    #[test]
    fn test_spec_rules_come_first_then_nodes_then_defaults() {
        let rules = spec_rules(&linux(serde_json::json!({
            "resources": {"devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "major": 1, "minor": 11, "access": "r"},
                {"allow": true, "type": "b", "major": 8, "access": "m"}
            ]},
            "devices": [
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
                {"path": "/dev/fifo", "type": "p", "major": 0, "minor": 0},
                {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}
            ]
        })))
        .unwrap();
        assert_eq!(rules.len(), 3 + 2 + DEFAULT_RULES.len());
        let deny_all = Rule {
            allow: false,
            kind: DeviceKind::All,
            major: None,
            minor: None,
            access: Access::ALL,
        };
        assert_eq!(rules[0], deny_all);
        assert_eq!(
            rules[1],
            Rule {
                allow: true,
                kind: DeviceKind::Char,
                major: Some(1),
                minor: Some(11),
                access: Access::READ,
            }
        );
        assert_eq!((rules[2].major, rules[2].minor), (Some(8), None));
        assert_eq!(rules[3], allow_char(10, Some(229)));
        assert_eq!(rules[4].kind, DeviceKind::Block);
        assert_eq!(rules[5..], DEFAULT_RULES);
    }

    #[test]
    fn test_a_spec_without_rules_gets_the_defaults() {
        assert_eq!(spec_rules(&Linux::default()).unwrap(), DEFAULT_RULES);
    }

    #[test]
    fn test_bad_rules_name_their_field() {
        let err = |rule: Value| {
            spec_rules(&linux(serde_json::json!({"resources": {"devices": [
                {"allow": false, "access": "rwm"}, rule
            ]}})))
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            err(serde_json::json!({"allow": true, "type": "c", "access": "rwx"})),
            "linux.resources.devices[1].access: \"rwx\" is not a combination of r, w and m"
        );
        assert_eq!(
            err(serde_json::json!({"allow": true, "type": "c"})),
            "linux.resources.devices[1].access: \"\" is not a combination of r, w and m"
        );
        assert_eq!(
            err(serde_json::json!({"allow": true, "type": "p", "access": "r"})),
            "linux.resources.devices[1].type: \"p\" is not a, b or c"
        );
        assert_eq!(
            err(serde_json::json!({"allow": true, "type": "c", "major": -2, "access": "r"})),
            "linux.resources.devices[1].major: -2 is not a device number or -1"
        );
        assert_eq!(
            err(serde_json::json!({"allow": true, "minor": 1i64 << 33, "access": "r"})),
            format!(
                "linux.resources.devices[1].minor: {} is not a device number or -1",
                1i64 << 33
            )
        );
    }

    #[test]
    fn test_unknown_type_letters_are_caught_in_the_json() {
        let spec = serde_json::json!({"linux": {"resources": {"devices": [
            {"allow": true, "type": "c", "access": "r"},
            {"allow": true, "type": "x", "access": "r"}
        ]}}});
        assert_eq!(
            check_rule_types(spec.pointer("/linux/resources/devices"))
                .unwrap_err()
                .to_string(),
            "linux.resources.devices[1].type: \"x\" is not a, b or c"
        );
        let number = serde_json::json!([{"type": 7}]);
        assert!(check_rule_types(Some(&number)).is_err());
        assert_eq!(check_rule_types(None), Ok(()));
    }

    #[test]
    fn test_too_many_rules_are_refused() {
        let many: Vec<Value> = (0..=MAX_RULES)
            .map(|_| serde_json::json!({"allow": true, "type": "c", "access": "r"}))
            .collect();
        let err = spec_rules(&linux(serde_json::json!({"resources": {"devices": many}})));
        assert_eq!(err, Err(RuleError::TooMany(MAX_RULES + 1)));
    }
}
