// SPDX-License-Identifier: Apache-2.0
//! Limits and kernel settings of a plan: `process.rlimits` as setrlimit
//! arguments and `linux.sysctl` as /proc/sys writes, each refused when the
//! agent cannot apply it as asked.

use std::ffi::CString;

use oci_spec::runtime::Process;

use super::{cstring, PlanError};

/// `process.rlimits` as (resource, limits) for setrlimit.
pub(super) fn plan_rlimits(
    process: &Process,
) -> Result<Vec<(libc::__rlimit_resource_t, libc::rlimit)>, PlanError> {
    process
        .rlimits()
        .iter()
        .flatten()
        .map(|limit| {
            let resource = rlimit_resource(&limit.typ().to_string())?;
            let limits = libc::rlimit {
                rlim_cur: limit.soft(),
                rlim_max: limit.hard(),
            };
            Ok((resource, limits))
        })
        .collect()
}

/// The RLIMIT_* number of an OCI rlimit type name.
fn rlimit_resource(name: &str) -> Result<libc::__rlimit_resource_t, PlanError> {
    Ok(match name {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => return Err(PlanError::Rlimit(name.to_owned())),
    })
}

/// `linux.sysctl` as (path under /proc/sys, value).
pub(super) fn plan_sysctls(
    linux: &oci_spec::runtime::Linux,
    clone_flags: u64,
) -> Result<Vec<(CString, CString)>, PlanError> {
    linux
        .sysctl()
        .iter()
        .flatten()
        .map(|(key, value)| sysctl(key, value, clone_flags))
        .collect()
}

/// The pod's sysctls (CreateSandbox) as (path under /proc/sys, value),
/// ordered by name: those of the namespaces a pod has (IPC, UTS, and the
/// network, which is the VM's).
///
/// # Errors
/// [`PlanError::Sysctl`] for one that would change the whole guest.
pub fn plan_pod_sysctls(
    sysctls: &std::collections::HashMap<String, String>,
) -> Result<Vec<(CString, CString)>, PlanError> {
    let pod = (libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNET) as u64;
    let mut sorted: Vec<_> = sysctls.iter().collect();
    sorted.sort();
    sorted
        .into_iter()
        .map(|(key, value)| sysctl(key, value, pod))
        .collect()
}

/// A sysctl as its /proc/sys path, if it belongs to a namespace the
/// container has of its own (as runc checks).
fn sysctl(key: &str, value: &str, clone_flags: u64) -> Result<(CString, CString), PlanError> {
    let has = |flag: libc::c_int| clone_flags & flag as u64 != 0;
    let ipc = key.starts_with("kernel.msg")
        || key.starts_with("kernel.sem")
        || key.starts_with("kernel.shm")
        || key.starts_with("fs.mqueue.");
    let uts = key == "kernel.hostname" || key == "kernel.domainname";
    let net = key.starts_with("net.");
    let allowed = (ipc && has(libc::CLONE_NEWIPC))
        || (uts && has(libc::CLONE_NEWUTS))
        || (net && has(libc::CLONE_NEWNET));
    if !allowed || key.contains('/') || key.split('.').any(|part| part.is_empty() || part == "..") {
        return Err(PlanError::Sysctl(key.to_owned()));
    }
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    Ok((
        cstring("linux.sysctl", path)?,
        cstring("linux.sysctl", value)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_rlimits_map_to_their_resource() {
        let process: Process = serde_json::from_value(serde_json::json!({
            "args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
            ]
        }))
        .unwrap();
        let limits = plan_rlimits(&process).unwrap();
        assert_eq!(limits.len(), 2);
        assert_eq!(limits[0].0, libc::RLIMIT_NOFILE);
        assert_eq!((limits[0].1.rlim_cur, limits[0].1.rlim_max), (1024, 4096));
        assert_eq!(limits[1].0, libc::RLIMIT_CORE);
    }

    #[test]
    fn test_pod_sysctls_are_those_of_the_pods_namespaces_in_order() {
        let sysctls = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<std::collections::HashMap<_, _>>()
        };
        let planned = plan_pod_sysctls(&sysctls(&[
            ("net.ipv4.ip_unprivileged_port_start", "0"),
            ("kernel.shmmni", "1024"),
        ]))
        .unwrap();
        assert_eq!(
            planned,
            [
                (c"/proc/sys/kernel/shmmni".into(), c"1024".into()),
                (
                    c"/proc/sys/net/ipv4/ip_unprivileged_port_start".into(),
                    c"0".into()
                ),
            ]
        );
        let err = plan_pod_sysctls(&sysctls(&[("vm.swappiness", "1")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.sysctl: \"vm.swappiness\" is not a namespaced sysctl"
        );
    }

    #[test]
    fn test_every_oci_rlimit_type_is_known() {
        let names = [
            "RLIMIT_CPU",
            "RLIMIT_FSIZE",
            "RLIMIT_DATA",
            "RLIMIT_STACK",
            "RLIMIT_CORE",
            "RLIMIT_RSS",
            "RLIMIT_NPROC",
            "RLIMIT_NOFILE",
            "RLIMIT_MEMLOCK",
            "RLIMIT_AS",
            "RLIMIT_LOCKS",
            "RLIMIT_SIGPENDING",
            "RLIMIT_MSGQUEUE",
            "RLIMIT_NICE",
            "RLIMIT_RTPRIO",
            "RLIMIT_RTTIME",
        ];
        let rlimits: Vec<_> = names
            .iter()
            .map(|name| serde_json::json!({"type": name, "soft": 1, "hard": 1}))
            .collect();
        let process: Process = serde_json::from_value(serde_json::json!({
            "args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "rlimits": rlimits
        }))
        .unwrap();
        // Through oci-spec's own type names, so that their spelling is the
        // one matched here.
        let mut resources: Vec<_> = plan_rlimits(&process)
            .unwrap()
            .into_iter()
            .map(|(resource, _)| resource)
            .collect();
        resources.sort_unstable();
        resources.dedup();
        assert_eq!(resources.len(), names.len(), "one resource per type");
    }

    #[test]
    fn test_unknown_rlimit_is_refused_by_name() {
        let err = rlimit_resource("RLIMIT_BOGUS").unwrap_err();
        assert!(matches!(err, PlanError::Rlimit(ref name) if name == "RLIMIT_BOGUS"));
        assert_eq!(
            err.to_string(),
            "process.rlimits: unknown type RLIMIT_BOGUS"
        );
    }

    #[test]
    fn test_namespaced_sysctls_become_proc_sys_paths() {
        let net = libc::CLONE_NEWNET as u64;
        let (path, value) = sysctl("net.ipv4.ip_forward", "1", net).unwrap();
        assert_eq!(path.as_c_str(), c"/proc/sys/net/ipv4/ip_forward");
        assert_eq!(value.as_c_str(), c"1");
        let ipc = libc::CLONE_NEWIPC as u64;
        assert!(sysctl("kernel.shmmax", "1", ipc).is_ok());
        assert!(sysctl("fs.mqueue.msg_max", "1", ipc).is_ok());
        let uts = libc::CLONE_NEWUTS as u64;
        assert!(sysctl("kernel.domainname", "x", uts).is_ok());
    }

    #[test]
    fn test_sysctls_outside_the_containers_namespaces_are_refused() {
        // The guest's own network namespace is not the container's.
        assert!(sysctl("net.ipv4.ip_forward", "1", 0).is_err());
        let all = (libc::CLONE_NEWNET | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) as u64;
        let err = sysctl("vm.overcommit_memory", "1", all).unwrap_err();
        assert_eq!(
            err.to_string(),
            "linux.sysctl: \"vm.overcommit_memory\" is not a namespaced sysctl"
        );
        for key in ["net..x", "net.ipv4/../x", "net.ipv4.", "net....x"] {
            assert!(sysctl(key, "1", all).is_err(), "{key}");
        }
    }
}
