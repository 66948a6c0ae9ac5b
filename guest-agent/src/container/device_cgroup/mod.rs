// SPDX-License-Identifier: Apache-2.0
//! The container's device cgroup: which device nodes its processes may
//! open or make. On cgroup v2 that is a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program attached to the container's cgroup, as runc and crun attach
//! one. `rules` turns `linux.resources.devices`, `linux.devices` and
//! runc's default allow-list into rules; `program` compiles the rules to
//! BPF instructions; `attach` loads the program and attaches it.

mod attach;
mod program;
mod rules;

pub use self::attach::{attach, replace, AttachError};
pub use self::program::{compile, Insn};
pub use self::rules::{
    check_rule_types, rules, spec_rules, Access, DeviceKind, Rule, RuleError, DEFAULT_RULES,
    MAX_RULES,
};
