// SPDX-License-Identifier: Apache-2.0
//! The process part of a plan, shared by a container's init and its
//! exec'd processes: argv and envp for execve, the PATH search, cwd, user,
//! capabilities, terminal.

use std::ffi::CString;
use std::str::FromStr;

use oci_spec::runtime::Process;

use super::limits::plan_rlimits;
use super::{cstring, path_cstring, PlanError};

/// PATH for finding the program when the process environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The terminal size when the spec gives none: (rows, columns).
const DEFAULT_CONSOLE_SIZE: (u16, u16) = (24, 80);

/// The capability number assumed when the kernel does not say.
const FALLBACK_LAST_CAP: u32 = 40;

/// NUL-terminated strings and the NULL-terminated pointer array execve
/// takes, built before the clone.
#[derive(Debug)]
pub struct CStrArray {
    strings: Vec<CString>,
    pointers: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the heap buffers of `strings`, which the
// struct owns and never changes; moving the struct to another thread moves
// neither the buffers nor what the pointers mean.
unsafe impl Send for CStrArray {}

// SAFETY: nothing changes the strings or the pointers after `new`, so
// shared references on several threads only read.
unsafe impl Sync for CStrArray {}

impl CStrArray {
    fn new(strings: Vec<CString>) -> Self {
        let mut pointers: Vec<_> = strings.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        CStrArray { strings, pointers }
    }

    /// The array for execve.
    pub fn as_ptr(&self) -> *const *const libc::c_char {
        self.pointers.as_ptr()
    }

    /// The strings.
    pub fn strings(&self) -> &[CString] {
        &self.strings
    }
}

/// Capability sets as bit masks (bit N = capability N).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CapSets {
    /// The bounding set.
    pub bounding: u64,
    /// The effective set.
    pub effective: u64,
    /// The permitted set.
    pub permitted: u64,
    /// The inheritable set.
    pub inheritable: u64,
    /// The ambient set.
    pub ambient: u64,
    /// The highest capability number the kernel knows.
    pub last_cap: u32,
}

/// The process part of a plan: shared by a container's init and its
/// exec'd processes.
#[derive(Debug)]
pub struct ProcessPlan {
    /// argv.
    pub args: CStrArray,
    /// envp.
    pub env: CStrArray,
    /// Where to look for argv\[0\], in order (PATH search done here).
    pub exec_candidates: Vec<CString>,
    /// The working directory, container-absolute.
    pub cwd: CString,
    /// User and groups.
    pub uid: libc::uid_t,
    /// Primary group.
    pub gid: libc::gid_t,
    /// Supplementary groups.
    pub groups: Vec<libc::gid_t>,
    /// The umask, if the spec sets one.
    pub umask: Option<libc::mode_t>,
    /// (resource, limits) for setrlimit.
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    /// Capability sets; `None` leaves them as they are.
    pub caps: Option<CapSets>,
    /// `process.noNewPrivileges`.
    pub no_new_privileges: bool,
    /// `/proc/self/oom_score_adj` text, if set.
    pub oom_score_adj: Option<CString>,
    /// A terminal instead of pipes.
    pub terminal: bool,
    /// The terminal's (rows, columns).
    pub console_size: (u16, u16),
    /// The container's seccomp filters, in installation order.
    pub seccomp: Vec<Vec<seccompiler::sock_filter>>,
}

/// The process part of a plan. The program is looked up along the
/// process's PATH by the child, inside the container's root.
///
/// # Errors
///
/// [`PlanError`] naming the field at fault.
pub fn plan_process(process: &Process) -> Result<ProcessPlan, PlanError> {
    let args = plan_args(process)?;
    let (env, path_var) = plan_env(process)?;
    let exec_candidates = exec_candidates(&args[0], &path_var)?;
    let cwd = process.cwd();
    if !cwd.is_absolute() {
        return Err(PlanError::NotAbsolute {
            field: "process.cwd",
            path: cwd.display().to_string(),
        });
    }
    let user = process.user();
    let rlimits = plan_rlimits(process)?;
    let caps = process.capabilities().as_ref().map(plan_caps).transpose()?;
    Ok(ProcessPlan {
        args: CStrArray::new(args),
        env: CStrArray::new(env),
        exec_candidates,
        cwd: path_cstring("process.cwd", cwd)?,
        uid: user.uid(),
        gid: user.gid(),
        groups: user.additional_gids().clone().unwrap_or_default(),
        umask: user.umask(),
        rlimits,
        caps,
        no_new_privileges: process.no_new_privileges().unwrap_or(false),
        oom_score_adj: process
            .oom_score_adj()
            .map(|adj| cstring("process.oomScoreAdj", adj.to_string()))
            .transpose()?,
        terminal: process.terminal().unwrap_or(false),
        console_size: process.console_size().map_or(DEFAULT_CONSOLE_SIZE, |size| {
            (
                u16::try_from(size.height()).unwrap_or(u16::MAX),
                u16::try_from(size.width()).unwrap_or(u16::MAX),
            )
        }),
        seccomp: Vec::new(),
    })
}

/// `process.args`, at least one.
fn plan_args(process: &Process) -> Result<Vec<CString>, PlanError> {
    process
        .args()
        .as_ref()
        .filter(|a| !a.is_empty())
        .ok_or(PlanError::NoArgs)?
        .iter()
        .map(|a| cstring("process.args", a.as_str()))
        .collect()
}

/// `process.env`, each entry NAME=VALUE, and the PATH it sets (its last
/// one) or the default.
fn plan_env(process: &Process) -> Result<(Vec<CString>, String), PlanError> {
    let env = process.env().clone().unwrap_or_default();
    if let Some(entry) = env.iter().find(|entry| !entry.contains('=')) {
        return Err(PlanError::Env(entry.clone()));
    }
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_owned();
    let env = env
        .into_iter()
        .map(|e| cstring("process.env", e))
        .collect::<Result<_, _>>()?;
    Ok((env, path_var))
}

/// The paths execve tries for `program`: itself if it has a `/`, else
/// each directory of `path_var` in order.
fn exec_candidates(program: &CString, path_var: &str) -> Result<Vec<CString>, PlanError> {
    let name = program.to_bytes();
    if name.contains(&b'/') {
        return Ok(vec![program.clone()]);
    }
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| {
            let mut path = dir.as_bytes().to_vec();
            path.push(b'/');
            path.extend_from_slice(name);
            cstring("process.env PATH", path)
        })
        .collect()
}

/// `process.capabilities` as bit masks. The kernel raises an ambient
/// capability only if it is both permitted and inheritable; runc skips
/// the others too, and so does this (with a warning).
fn plan_caps(caps: &oci_spec::runtime::LinuxCapabilities) -> Result<CapSets, PlanError> {
    let permitted = capability_mask(caps.permitted())?;
    let inheritable = capability_mask(caps.inheritable())?;
    let ambient = capability_mask(caps.ambient())?;
    let raisable = ambient & permitted & inheritable;
    if raisable != ambient {
        tracing::warn!(
            "ambient capabilities {:#x} are not both permitted and inheritable: not raised",
            ambient & !raisable
        );
    }
    Ok(CapSets {
        bounding: capability_mask(caps.bounding())?,
        effective: capability_mask(caps.effective())?,
        permitted,
        inheritable,
        ambient: raisable,
        last_cap: last_capability(),
    })
}

/// One capability set as a mask (bit N = capability N).
fn capability_mask(set: &Option<oci_spec::runtime::Capabilities>) -> Result<u64, PlanError> {
    let mut bits = 0;
    for cap in set.iter().flatten() {
        let name = format!("CAP_{cap}");
        let parsed =
            caps::Capability::from_str(&name).map_err(|_| PlanError::Capability(name.clone()))?;
        bits |= 1u64 << parsed.index();
    }
    Ok(bits)
}

/// The kernel's highest capability number.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(FALLBACK_LAST_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: serde_json::Value) -> Process {
        serde_json::from_value(json).unwrap()
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}})
    }

    #[test]
    fn test_program_is_looked_up_along_the_process_path() {
        let mut json = minimal();
        json["env"] = serde_json::json!(["PATH=/nope", "HOME=/", "PATH=/bin::/usr/bin"]);
        let plan = plan_process(&process(json)).unwrap();
        assert_eq!(
            plan.exec_candidates,
            vec![c"/bin/sh".to_owned(), c"/usr/bin/sh".to_owned()]
        );
        assert_eq!(plan.env.strings().len(), 3);
    }

    #[test]
    fn test_program_without_path_uses_the_default_path() {
        let plan = plan_process(&process(minimal())).unwrap();
        assert_eq!(plan.exec_candidates.len(), DEFAULT_PATH.split(':').count());
        assert_eq!(plan.exec_candidates[0], c"/usr/local/sbin/sh".to_owned());
    }

    #[test]
    fn test_program_with_a_slash_is_taken_as_it_is() {
        let mut json = minimal();
        json["args"] = serde_json::json!(["./run", "x"]);
        let plan = plan_process(&process(json)).unwrap();
        assert_eq!(plan.exec_candidates, vec![c"./run".to_owned()]);
        assert_eq!(plan.args.strings(), [c"./run".to_owned(), c"x".to_owned()]);
    }

    #[test]
    fn test_args_are_null_terminated_for_execve() {
        let plan = plan_process(&process(minimal())).unwrap();
        // SAFETY: the array has one pointer per string and a final null.
        let last = unsafe { *plan.args.as_ptr().add(1) };
        assert!(last.is_null());
    }

    #[test]
    fn test_empty_args_are_refused() {
        let mut json = minimal();
        json["args"] = serde_json::json!([]);
        assert!(matches!(
            plan_process(&process(json)),
            Err(PlanError::NoArgs)
        ));
    }

    #[test]
    fn test_env_entry_without_equals_is_refused() {
        let mut json = minimal();
        json["env"] = serde_json::json!(["HOME=/", "JUNK"]);
        let err = plan_process(&process(json)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "process.env entry \"JUNK\" is not NAME=VALUE"
        );
    }

    #[test]
    fn test_relative_cwd_is_refused() {
        let mut json = minimal();
        json["cwd"] = serde_json::json!("work");
        let err = plan_process(&process(json)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "process.cwd \"work\" is not an absolute path"
        );
    }

    #[test]
    fn test_user_terminal_and_defaults() {
        let mut json = minimal();
        json["user"] =
            serde_json::json!({"uid": 1000, "gid": 100, "additionalGids": [10], "umask": 18});
        json["terminal"] = serde_json::json!(true);
        json["oomScoreAdj"] = serde_json::json!(-500);
        let plan = plan_process(&process(json)).unwrap();
        assert_eq!(
            (plan.uid, plan.gid, plan.groups.clone()),
            (1000, 100, vec![10])
        );
        assert_eq!(plan.umask, Some(0o22));
        assert!(plan.terminal);
        assert_eq!(plan.console_size, DEFAULT_CONSOLE_SIZE);
        assert_eq!(plan.oom_score_adj.as_deref(), Some(c"-500"));
        assert!(plan.caps.is_none());
        assert!(!plan.no_new_privileges);
    }

    #[test]
    fn test_capabilities_become_masks_and_unraisable_ambient_ones_are_dropped() {
        let mut json = minimal();
        json["capabilities"] = serde_json::json!({
            "bounding": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
            "effective": ["CAP_CHOWN"],
            "permitted": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"],
            "inheritable": ["CAP_NET_BIND_SERVICE"],
            "ambient": ["CAP_NET_BIND_SERVICE", "CAP_CHOWN"]
        });
        let chown = 1u64 << caps::Capability::CAP_CHOWN.index();
        let bind = 1u64 << caps::Capability::CAP_NET_BIND_SERVICE.index();
        let sets = plan_process(&process(json)).unwrap().caps.unwrap();
        assert_eq!(sets.bounding, chown | bind);
        assert_eq!(sets.effective, chown);
        assert_eq!(sets.permitted, chown | bind);
        assert_eq!(sets.inheritable, bind);
        assert_eq!(sets.ambient, bind, "CHOWN is not inheritable");
        assert!(sets.last_cap >= u32::from(caps::Capability::CAP_NET_BIND_SERVICE.index()));
    }
}
