// SPDX-License-Identifier: Apache-2.0
//! The container's device cgroup: which device nodes its processes may
//! open or make. On cgroup v2 that is a `BPF_PROG_TYPE_CGROUP_DEVICE`
//! program attached to the container's cgroup, as runc and crun attach
//! one. `rules` turns `linux.resources.devices`, `linux.devices` and
//! runc's default allow-list into rules; `program` compiles the rules to
//! BPF instructions; `cache` loads each program once per VM; `attach`
//! loads a program and attaches it.

mod attach;
mod cache;
mod program;
mod rules;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup};

pub use self::attach::{attach, replace, AttachError};
pub use self::cache::Programs;
pub use self::program::{compile, Insn};
pub use self::rules::{
    check_rule_types, rules, spec_rules, Access, DeviceKind, Rule, RuleError, DEFAULT_RULES,
    MAX_RULES,
};

/// The device program of a container whose spec has `linux`: its rules
/// ([`spec_rules`]) compiled.
///
/// # Errors
///
/// [`RuleError`] naming the field at fault, or too many rules.
pub fn spec_program(linux: &oci_spec::runtime::Linux) -> Result<Vec<Insn>, RuleError> {
    compile(&spec_rules(linux)?)
}

/// A container's attached device program, the spec's device nodes an
/// updated program still allows, and the agent's loaded programs an update
/// takes its program from.
#[derive(Debug)]
pub struct DeviceCgroup {
    program: Arc<OwnedFd>,
    nodes: Vec<LinuxDevice>,
    programs: Arc<Programs>,
}

impl DeviceCgroup {
    /// Attaches `program` (compiled from the spec, whose `linux.devices`
    /// are `nodes`), loaded or taken from `programs`, to the cgroup open
    /// as `cgroup`.
    ///
    /// # Errors
    ///
    /// [`AttachError`].
    pub fn attach(
        cgroup: impl AsFd,
        program: &[Insn],
        nodes: Option<Vec<LinuxDevice>>,
        programs: &Arc<Programs>,
    ) -> Result<Self, AttachError> {
        let program = programs.get_or_load(program)?;
        attach(cgroup, program.as_fd())?;
        Ok(DeviceCgroup {
            program,
            nodes: nodes.unwrap_or_default(),
            programs: Arc::clone(programs),
        })
    }

    /// The program for an update's `linux.resources.devices`, checked
    /// before anything changes.
    ///
    /// # Errors
    ///
    /// [`RuleError`] naming the field at fault.
    pub fn compile_update(&self, rules: &[LinuxDeviceCgroup]) -> Result<Vec<Insn>, RuleError> {
        compile(&self::rules(rules, &self.nodes)?)
    }

    /// Puts `program` in the place of the attached one, in one step.
    ///
    /// # Errors
    ///
    /// [`AttachError`]; the old program stays.
    pub fn replace(&mut self, cgroup: impl AsFd, program: &[Insn]) -> Result<(), AttachError> {
        let program = self.programs.get_or_load(program)?;
        replace(cgroup, self.program.as_fd(), program.as_fd())?;
        self.program = program;
        Ok(())
    }
}
