// SPDX-License-Identifier: Apache-2.0
//! An OCI seccomp profile as BPF programs, compiled with rust-vmm's
//! `seccompiler` before the clone and installed by the child.
//!
//! seccompiler gives a filter one action on match and one on mismatch; an
//! OCI profile has a default action and an action per rule. The profile is
//! therefore split into filters that the kernel runs together, where the
//! most restrictive result wins:
//! - a default filter: every syscall the profile names (with its argument
//!   conditions) is allowed, anything else gets the default action;
//! - one filter per other (action, errno) of the rules: its rules get that
//!   action, anything else is allowed.
//!
//! A call no rule matches gets the default action; a call that matches
//! rules gets the most restrictive of their actions (as with libseccomp
//! when rules overlap). Only x86_64 is compiled; unknown syscall names are
//! skipped with a warning, as runc does.
//!
//! Every container process also gets the agent's own filter, whatever its
//! profile: no AF_VSOCK sockets ([`vsock_filter`]).

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompOperator};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// A profile the agent cannot compile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// An action seccompiler has no equivalent for.
    #[error("linux.seccomp: action {0} is not supported")]
    Action(String),
    /// An argument index above 5.
    #[error("linux.seccomp: syscall {name}: argument index {index} is above 5")]
    ArgIndex {
        /// The syscall.
        name: String,
        /// The index.
        index: usize,
    },
    /// seccompiler refused the filter.
    #[error("linux.seccomp: {0}")]
    Compile(String),
}

/// errno when a profile asks for SCMP_ACT_ERRNO without one.
const DEFAULT_ERRNO: u32 = libc::EPERM as u32;

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(DEFAULT_ERRNO)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        other => return Err(SeccompError::Action(other.to_string())),
    })
}

fn condition(name: &str, arg: &LinuxSeccompArg) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|&i| i <= 5)
        .ok_or_else(|| SeccompError::ArgIndex {
            name: name.to_owned(),
            index: arg.index(),
        })?;
    let (operator, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // OCI: (arg & value) == valueTwo.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, operator, value)
        .map_err(|err| SeccompError::Compile(err.to_string()))
}

/// Rules by syscall number; an empty list matches unconditionally.
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn add_rule(rules: &mut Rules, number: i64, rule: Option<SeccompRule>) {
    let entry = rules.entry(number);
    match (entry, rule) {
        (std::collections::btree_map::Entry::Vacant(slot), rule) => {
            slot.insert(rule.into_iter().collect());
        }
        (std::collections::btree_map::Entry::Occupied(mut slot), Some(rule)) => {
            // Already unconditional: stays so.
            if !slot.get().is_empty() {
                slot.get_mut().push(rule);
            }
        }
        (std::collections::btree_map::Entry::Occupied(mut slot), None) => slot.get_mut().clear(),
    }
}

fn compile_filter(
    rules: Rules,
    mismatch: SeccompAction,
    on_match: SeccompAction,
) -> Result<Vec<sock_filter>, SeccompError> {
    let filter = SeccompFilter::new(rules, mismatch, on_match, TargetArch::x86_64)
        .map_err(|err| SeccompError::Compile(err.to_string()))?;
    BpfProgram::try_from(filter).map_err(|err| SeccompError::Compile(err.to_string()))
}

/// The BPF programs for `profile`, in the order to install them.
///
/// # Errors
///
/// [`SeccompError`] naming the unsupported part.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<Vec<sock_filter>>, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut named: Rules = BTreeMap::new();
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for syscall in profile.syscalls().iter().flatten() {
        let rule_action = action(syscall.action(), syscall.errno_ret())?;
        for name in syscall.names() {
            let Ok(number) = syscalls::Sysno::from_str(name) else {
                tracing::warn!("seccomp: unknown syscall {name:?} skipped");
                continue;
            };
            let number = i64::from(number.id());
            let conditions = syscall
                .args()
                .iter()
                .flatten()
                .map(|arg| condition(name, arg))
                .collect::<Result<Vec<_>, _>>()?;
            let rule = if conditions.is_empty() {
                None
            } else {
                Some(
                    SeccompRule::new(conditions)
                        .map_err(|err| SeccompError::Compile(err.to_string()))?,
                )
            };
            add_rule(&mut named, number, rule.clone());
            if rule_action != SeccompAction::Allow {
                let index = match by_action.iter().position(|(a, _)| *a == rule_action) {
                    Some(index) => index,
                    None => {
                        by_action.push((rule_action.clone(), BTreeMap::new()));
                        by_action.len() - 1
                    }
                };
                add_rule(&mut by_action[index].1, number, rule);
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(compile_filter(named, default, SeccompAction::Allow)?);
    }
    for (rule_action, rules) in by_action {
        programs.push(compile_filter(rules, SeccompAction::Allow, rule_action)?);
    }
    Ok(programs)
}

/// The filter every container process gets: socket(AF_VSOCK) fails with
/// EPERM (as in Docker's default profile). vsock is the agent's channel to
/// the host: a container could otherwise connect to the host's ports the
/// VMM forwards, such as the one the shim reads the agent's log lines
/// from, and write lines that read as the agent's. (The guest kernel has
/// no vsock loopback and no io_uring, so neither the agent's own listener
/// nor a socket made without socket(2) is a way around it.)
///
/// # Errors
///
/// [`SeccompError::Compile`] if seccompiler refuses it.
pub fn vsock_filter() -> Result<Vec<sock_filter>, SeccompError> {
    let family = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        libc::AF_VSOCK as u64,
    )
    .map_err(|err| SeccompError::Compile(err.to_string()))?;
    let rule =
        SeccompRule::new(vec![family]).map_err(|err| SeccompError::Compile(err.to_string()))?;
    let rules = BTreeMap::from([(libc::SYS_socket, vec![rule])]);
    compile_filter(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn test_allowlist_is_one_filter_denylist_one_per_action() {
        let allow = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]
        }));
        assert_eq!(compile(&allow).unwrap().len(), 1);
        let deny = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                {"names": ["chmod"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 1, "value": 511, "op": "SCMP_CMP_EQ"}]},
                {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]
        }));
        assert_eq!(compile(&deny).unwrap().len(), 3);
    }

    #[test]
    fn test_unknown_names_are_skipped_and_bad_parts_refused() {
        let unknown = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["no_such_syscall"], "action": "SCMP_ACT_ERRNO"}]
        }));
        // Nothing left to filter.
        assert!(compile(&unknown).unwrap().is_empty());
        let notify = profile(serde_json::json!({"defaultAction": "SCMP_ACT_NOTIFY"}));
        assert!(compile(&notify)
            .unwrap_err()
            .to_string()
            .contains("SCMP_ACT_NOTIFY"));
        let index = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ERRNO",
                          "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]
        }));
        assert!(compile(&index)
            .unwrap_err()
            .to_string()
            .contains("argument index 6"));
    }

    /// The vsock filter in the host's kernel: a forked process under it
    /// gets EPERM for an AF_VSOCK socket and still makes others.
    #[test]
    fn test_the_vsock_filter_refuses_vsock_sockets_only() {
        let program = vsock_filter().unwrap();
        #[repr(C)]
        struct SockFprog {
            len: libc::c_ushort,
            filter: *const sock_filter,
        }
        let fprog = SockFprog {
            len: program.len() as libc::c_ushort,
            filter: program.as_ptr(),
        };
        // SAFETY: the child only makes system calls on data prepared here,
        // then _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: prctl, seccomp and socket on live data; _exit.
            unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                let rc = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &raw const fprog,
                );
                if rc != 0 {
                    libc::_exit(10);
                }
                let vsock = libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0);
                let errno = *libc::__errno_location();
                let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::_exit(match (vsock, errno, unix) {
                    (-1, libc::EPERM, fd) if fd >= 0 => 0,
                    (-1, libc::EPERM, _) => 2,
                    _ => 1,
                });
            }
        }
        assert!(pid > 0);
        let mut status = 0;
        // SAFETY: waits for our child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status), "{status:#x}");
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "1: vsock allowed, 2: unix refused, 10: no filter"
        );
    }
}
