// SPDX-License-Identifier: Apache-2.0
//! Device rules compiled to a `BPF_PROG_TYPE_CGROUP_DEVICE` program. The
//! kernel runs it on every open and mknod of a device node by a process
//! of the cgroup, with a `struct bpf_cgroup_dev_ctx` (linux/bpf.h:
//! `access_type` = access bits << 16 | device type, `major`, `minor`);
//! it returns 1 to allow, 0 to refuse (EPERM).
//!
//! Each access the request asks for (read, write, mknod) is decided on its
//! own by the last rule that names both the device and that access; the
//! request passes when each of its accesses is allowed, and no rule means
//! refused. For the rules containerd and Kubernetes write (deny all, then
//! allows) this is runc's and crun's result; unlike runc's cgroup v1
//! emulation, a deny after a wildcard allow does refuse the device.

use super::rules::{Access, DeviceKind, Rule, RuleError, MAX_RULES};
use super::DEFAULT_RULES;

/// One BPF instruction, as the kernel's `struct bpf_insn`: the opcode,
/// the destination register in the low and the source register in the
/// high nibble of `regs`, a jump offset and an immediate.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// BPF_CLASS | BPF_OP | BPF_SRC (or size and mode for loads).
    pub code: u8,
    /// dst_reg | src_reg << 4.
    pub regs: u8,
    /// Jump offset, in instructions after the next one; load offset.
    pub off: i16,
    /// Immediate operand.
    pub imm: i32,
}

/// `BPF_LDX | BPF_MEM | BPF_W`: dst = *(u32 *)(src + off).
const LOAD_U32: u8 = 0x61;
/// `BPF_ALU64 | BPF_MOV | BPF_X`.
const MOV_REG: u8 = 0xbf;
/// `BPF_ALU64 | BPF_MOV | BPF_K`.
const MOV_IMM: u8 = 0xb7;
/// `BPF_ALU64 | BPF_AND | BPF_K`.
const AND_IMM: u8 = 0x57;
/// `BPF_ALU64 | BPF_RSH | BPF_K`.
const RSH_IMM: u8 = 0x77;
/// `BPF_JMP | BPF_JA`.
const JUMP: u8 = 0x05;
/// `BPF_JMP | BPF_JNE | BPF_K`.
const JUMP_NE: u8 = 0x55;
/// `BPF_JMP | BPF_JSET | BPF_K`: jump if dst & imm.
const JUMP_SET: u8 = 0x45;
/// `BPF_JMP32 | BPF_JNE | BPF_K`: compares the low 32 bits, so that the
/// immediate holds any u32 device number.
const JUMP32_NE: u8 = 0x56;
/// `BPF_JMP | BPF_EXIT`.
const EXIT: u8 = 0x95;

/// Registers: R0 the result, R1 the context; the program keeps the
/// request's accesses in R2, device type in R3, major in R4, minor in R5.
const R0: u8 = 0;
const R1: u8 = 1;
const ACCESS: u8 = 2;
const TYPE: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;

/// `BPF_DEVCG_DEV_BLOCK` and `BPF_DEVCG_DEV_CHAR`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;

/// Offsets in `struct bpf_cgroup_dev_ctx`.
const CTX_ACCESS_TYPE: i16 = 0;
const CTX_MAJOR: i16 = 4;
const CTX_MINOR: i16 = 8;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// A place in the program that jumps name before it is known.
#[derive(Debug, Clone, Copy)]
struct Label(usize);

/// Instructions with jumps to labels, resolved at the end.
#[derive(Default)]
struct Assembler {
    insns: Vec<Insn>,
    /// (instruction index, label) of every jump to a label.
    jumps: Vec<(usize, Label)>,
    /// Where each label is bound.
    labels: Vec<Option<usize>>,
}

impl Assembler {
    fn push(&mut self, insn: Insn) {
        self.insns.push(insn);
    }

    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.insns.len());
    }

    fn is_used(&self, label: Label) -> bool {
        self.jumps.iter().any(|(_, used)| used.0 == label.0)
    }

    /// `code` on `dst` and `imm`, jumping to `target`.
    fn jump(&mut self, code: u8, dst: u8, imm: i32, target: Label) {
        self.jumps.push((self.insns.len(), target));
        self.push(insn(code, dst, 0, 0, imm));
    }

    fn finish(mut self, rules: usize) -> Result<Vec<Insn>, RuleError> {
        for (at, label) in &self.jumps {
            let target = self.labels[label.0].ok_or(RuleError::TooMany(rules))?;
            let off = target as i64 - (*at as i64 + 1);
            self.insns[*at].off = i16::try_from(off).map_err(|_| RuleError::TooMany(rules))?;
        }
        Ok(self.insns)
    }
}

/// The program for `rules` (in the spec's order, last match wins).
///
/// # Errors
///
/// [`RuleError::TooMany`] when the rules do not fit in one program.
pub fn compile(rules: &[Rule]) -> Result<Vec<Insn>, RuleError> {
    if rules.len() > MAX_RULES + DEFAULT_RULES.len() {
        return Err(RuleError::TooMany(rules.len()));
    }
    let mut asm = Assembler::default();
    asm.push(insn(LOAD_U32, ACCESS, R1, CTX_ACCESS_TYPE, 0));
    asm.push(insn(MOV_REG, TYPE, ACCESS, 0, 0));
    asm.push(insn(AND_IMM, TYPE, 0, 0, 0xffff));
    asm.push(insn(RSH_IMM, ACCESS, 0, 0, 16));
    asm.push(insn(LOAD_U32, MAJOR, R1, CTX_MAJOR, 0));
    asm.push(insn(LOAD_U32, MINOR, R1, CTX_MINOR, 0));
    let deny = asm.label();
    for access in [Access::READ, Access::WRITE, Access::MKNOD] {
        let decided = asm.label();
        // Not asked for: nothing to decide.
        asm.push(insn(JUMP_SET, ACCESS, 0, 1, i32::from(access.bits())));
        asm.jump(JUMP, 0, 0, decided);
        decide(&mut asm, rules, access, decided, deny);
        asm.bind(decided);
    }
    asm.push(insn(MOV_IMM, R0, 0, 0, 1));
    asm.push(insn(EXIT, 0, 0, 0, 0));
    // The verifier refuses unreachable instructions: a refusal block only
    // if some rule or a missing rule leads there.
    if asm.is_used(deny) {
        asm.bind(deny);
        asm.push(insn(MOV_IMM, R0, 0, 0, 0));
        asm.push(insn(EXIT, 0, 0, 0, 0));
    }
    asm.finish(rules.len())
}

/// Tests the rules that name `access`, last first; the first that matches
/// jumps to `allowed` or `deny`, none matching goes to `deny`. Only the rules
/// that can change the outcome are emitted (see [`deciding_rules`]).
fn decide(asm: &mut Assembler, rules: &[Rule], access: Access, allowed: Label, deny: Label) {
    let (deciding, fallback) = deciding_rules(rules, access);
    for rule in deciding.iter().rev() {
        let kind = match rule.kind {
            DeviceKind::All => None,
            DeviceKind::Block => Some(DEV_BLOCK),
            DeviceKind::Char => Some(DEV_CHAR),
        };
        let verdict = if rule.allow { allowed } else { deny };
        let next = asm.label();
        if let Some(kind) = kind {
            asm.jump(JUMP_NE, TYPE, kind, next);
        }
        // Device numbers as the 32-bit patterns JMP32 compares.
        if let Some(major) = rule.major {
            asm.jump(JUMP32_NE, MAJOR, major as i32, next);
        }
        if let Some(minor) = rule.minor {
            asm.jump(JUMP32_NE, MINOR, minor as i32, next);
        }
        asm.jump(JUMP, 0, 0, verdict);
        asm.bind(next);
    }
    asm.jump(JUMP, 0, 0, if fallback { allowed } else { deny });
}

/// The rules naming `access` that can change its outcome, in the spec's
/// order, and the outcome when none of them matches. Rules before the last
/// rule matching every device never decide; that rule (or, without one, a
/// refusal) is the fallback; and the rules right after it with the same
/// verdict, up to the first with the other, decide nothing the fallback
/// does not. A privileged container's spec (allow everything, then each of
/// the host's devices, then the defaults) is one jump, not hundreds of
/// tests the guest kernel's verifier would walk through.
fn deciding_rules(rules: &[Rule], access: Access) -> (Vec<Rule>, bool) {
    let named: Vec<Rule> = rules
        .iter()
        .filter(|rule| rule.access.contains(access))
        .copied()
        .collect();
    let matches_all =
        |rule: &Rule| rule.kind == DeviceKind::All && rule.major.is_none() && rule.minor.is_none();
    let (after, fallback) = match named.iter().rposition(matches_all) {
        Some(at) => (named.get(at + 1..).unwrap_or_default(), named[at].allow),
        None => (&named[..], false),
    };
    let first_other = after
        .iter()
        .position(|rule| rule.allow != fallback)
        .unwrap_or(after.len());
    (after[first_other..].to_vec(), fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: bool, kind: DeviceKind, major: Option<u32>, access: Access) -> Rule {
        Rule {
            allow,
            kind,
            major,
            minor: None,
            access,
        }
    }

    /// Every jump lands inside the program, forward, and every
    /// instruction is reachable (the verifier's structural checks).
    fn assert_well_formed(program: &[Insn]) {
        let mut reached = vec![false; program.len()];
        reached[0] = true;
        for (at, insn) in program.iter().enumerate() {
            if !reached[at] {
                panic!("instruction {at} is unreachable: {program:#?}");
            }
            let target = at as i64 + 1 + i64::from(insn.off);
            let is_jump = matches!(insn.code, JUMP | JUMP_NE | JUMP_SET | JUMP32_NE);
            if is_jump {
                assert!(insn.off >= 0, "a backward jump at {at}");
                assert!((target as usize) < program.len(), "jump out at {at}");
                reached[target as usize] = true;
            }
            if insn.code != JUMP && insn.code != EXIT && at + 1 < program.len() {
                reached[at + 1] = true;
            }
        }
        assert_eq!(program.last().map(|i| i.code), Some(EXIT));
    }

    #[test]
    fn test_the_default_program_is_well_formed() {
        let program = compile(&DEFAULT_RULES).unwrap();
        assert_well_formed(&program);
        // Reads are decided by the nine rwm rules: type, major, and a minor
        // for all but the pts rule, then the verdict.
        assert_eq!(program[0], insn(LOAD_U32, ACCESS, R1, 0, 0));
        assert_eq!(program[6].code, JUMP_SET);
        assert_eq!(program[6].imm, 2);
        // The last rule (tun, 10:200) is tested first.
        assert_eq!(program[8], insn(JUMP_NE, TYPE, 0, 3, DEV_CHAR));
        assert_eq!(program[9].imm, 10);
        assert_eq!(program[10].imm, 200);
    }

    #[test]
    fn test_a_wildcard_rule_ends_the_chain() {
        let rules = [
            rule(true, DeviceKind::Char, Some(1), Access::ALL),
            rule(true, DeviceKind::All, None, Access::ALL),
        ];
        let program = compile(&rules).unwrap();
        assert_well_formed(&program);
        // Allow-all: no instruction refuses.
        assert!(!program
            .windows(2)
            .any(|pair| pair[0] == insn(MOV_IMM, R0, 0, 0, 0) && pair[1].code == EXIT));
        // Nothing at all: everything is refused.
        let program = compile(&[]).unwrap();
        assert_well_formed(&program);
        assert_eq!(program.len(), 6 + 3 * 3 + 4);
    }

    #[test]
    fn test_rules_that_cannot_change_the_outcome_are_left_out() {
        let allow_all = rule(true, DeviceKind::All, None, Access::ALL);
        // --privileged: allow everything, then each host device, then the
        // defaults: the same program as allow-all alone.
        let mut privileged = vec![allow_all];
        privileged.extend((0..100).map(|n| Rule {
            minor: Some(n),
            ..rule(true, DeviceKind::Char, Some(1), Access::ALL)
        }));
        privileged.extend(DEFAULT_RULES);
        let program = compile(&privileged).unwrap();
        assert_well_formed(&program);
        assert_eq!(program, compile(&[allow_all]).unwrap());
        assert_eq!(program.len(), 6 + 3 * 3 + 2);
        // An allow after a deny that follows allow-all still decides, and so
        // does that deny.
        let c11 = |allow, access| Rule {
            minor: Some(1),
            ..rule(allow, DeviceKind::Char, Some(1), access)
        };
        let rules = [allow_all, c11(false, Access::ALL), c11(true, Access::READ)];
        let (deciding, fallback) = deciding_rules(&rules, Access::READ);
        assert_eq!((deciding, fallback), (rules[1..].to_vec(), true));
        let (deciding, _) = deciding_rules(&rules, Access::WRITE);
        assert_eq!(deciding, vec![rules[1]]);
        // Leading refusals decide nothing the default refusal does not.
        let rules = [c11(false, Access::ALL), c11(true, Access::ALL)];
        assert_eq!(
            deciding_rules(&rules, Access::MKNOD),
            (vec![rules[1]], false)
        );
    }

    #[test]
    fn test_large_numbers_use_32_bit_compares() {
        let rules = [Rule {
            allow: true,
            kind: DeviceKind::Block,
            major: Some(u32::MAX),
            minor: Some(0x8000_0000),
            access: Access::READ,
        }];
        let program = compile(&rules).unwrap();
        assert_well_formed(&program);
        let compares: Vec<i32> = program
            .iter()
            .filter(|i| i.code == JUMP32_NE)
            .map(|i| i.imm)
            .collect();
        assert_eq!(compares, vec![-1, i32::MIN]);
    }

    #[test]
    fn test_too_many_rules_do_not_compile() {
        let rules = vec![rule(true, DeviceKind::Char, Some(1), Access::ALL); MAX_RULES + 12];
        assert!(matches!(compile(&rules), Err(RuleError::TooMany(_))));
        let most = vec![
            Rule {
                minor: Some(1),
                ..rule(false, DeviceKind::Char, Some(1), Access::ALL)
            };
            MAX_RULES + DEFAULT_RULES.len()
        ];
        let program = compile(&most).unwrap();
        assert_well_formed(&program);
    }
}
