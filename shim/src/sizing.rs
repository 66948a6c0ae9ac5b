// SPDX-License-Identifier: Apache-2.0
//! How big a pod's VM is, and whether a container fits in it.
//!
//! A pod VM has a fixed size from boot (no hot-plug), chosen when its first
//! container is created, in this order:
//! 1. vmpod's own annotations ([`VCPUS_ANNOTATION`], [`MEMORY_ANNOTATION`]),
//!    which name the size outright;
//! 2. the sandbox sizing annotations containerd's CRI plugin sets from the
//!    kubelet's pod resources (`io.kubernetes.cri.sandbox-cpu-quota`/`-period`,
//!    `io.kubernetes.cri.sandbox-memory`), added to the configured defaults,
//!    which stay the guest's own share (its kernel, the agent), as Kata does;
//! 3. for a pod of one container outside Kubernetes (`ctr run`), that
//!    container's own CPU and memory limits, added the same way;
//! 4. the configured defaults.
//!
//! Every size stays within `max-vcpus` and `max-memory`; beyond, the create
//! fails with one line naming what asked for it. A later container of the
//! pod whose limits exceed the VM fails the same way instead of being
//! promised what the VM cannot give.

use std::collections::HashMap;

use oci_spec::runtime::LinuxResources;

/// Pod annotation asking for a number of vCPUs (at most `max-vcpus`).
pub const VCPUS_ANNOTATION: &str = "io.vmpod.vm.vcpus";
/// Pod annotation asking for guest memory in MiB (at most `max-memory`).
pub const MEMORY_ANNOTATION: &str = "io.vmpod.vm.memory";
/// containerd's CRI plugin: the pod's summed CPU quota (µs per period).
pub const SANDBOX_CPU_QUOTA_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-quota";
/// containerd's CRI plugin: the period of [`SANDBOX_CPU_QUOTA_ANNOTATION`].
pub const SANDBOX_CPU_PERIOD_ANNOTATION: &str = "io.kubernetes.cri.sandbox-cpu-period";
/// containerd's CRI plugin: the pod's summed memory limit in bytes.
pub const SANDBOX_MEMORY_ANNOTATION: &str = "io.kubernetes.cri.sandbox-memory";

/// The pod annotations containerd's CRI plugin must copy into the specs
/// (the runtime's `pod_annotations`) for a pod to name its VM's size; the
/// sandbox sizing annotations it sets itself.
pub const POD_ANNOTATIONS: [&str; 2] = [VCPUS_ANNOTATION, MEMORY_ANNOTATION];

const MIB: u64 = 1 << 20;

/// The size of one pod VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmSize {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest memory, MiB.
    pub memory_mib: u32,
}

/// What the configuration allows: the defaults and the maxima.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    /// `vcpus`: a pod's vCPUs when nothing asks for more.
    pub vcpus: u8,
    /// `max-vcpus`.
    pub max_vcpus: u8,
    /// `memory`: a pod's memory (MiB) when nothing asks for more.
    pub memory_mib: u32,
    /// `max-memory`.
    pub max_memory_mib: u32,
    /// The least memory (MiB) that boots the agent.
    pub min_memory_mib: u32,
}

/// CPU (whole vCPUs, rounded up) and memory (MiB, rounded up) a workload
/// asks for; zero where it sets no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Workload {
    vcpus: u64,
    memory_mib: u64,
}

/// The VM size for a pod whose first container carries `annotations` and
/// `resources` (see the module's order).
///
/// # Errors
/// A one-line message naming the annotation or limit at fault.
pub fn vm_size(
    limits: SizeLimits,
    annotations: &HashMap<String, String>,
    resources: Option<&LinuxResources>,
) -> Result<VmSize, String> {
    let (workload, source) = match sandbox_workload(annotations)? {
        Some(workload) => (workload, "the pod's sandbox sizing annotations"),
        None => (container_workload(resources), "the container's limits"),
    };
    let mut size = VmSize {
        vcpus: added(limits.vcpus.into(), workload.vcpus, limits.max_vcpus.into())
            .and_then(|vcpus| u8::try_from(vcpus).ok())
            .ok_or_else(|| {
                format!(
                    "{source} ask for {} vCPUs; with the guest's own {} that exceeds max-vcpus ({})",
                    workload.vcpus, limits.vcpus, limits.max_vcpus
                )
            })?,
        memory_mib: added(
            limits.memory_mib.into(),
            workload.memory_mib,
            limits.max_memory_mib.into(),
        )
        .and_then(|mib| u32::try_from(mib).ok())
        .ok_or_else(|| {
            format!(
                "{source} ask for {} MiB; with the guest's own {} MiB that exceeds max-memory ({} MiB)",
                workload.memory_mib, limits.memory_mib, limits.max_memory_mib
            )
        })?,
    };
    if let Some(value) = annotations.get(VCPUS_ANNOTATION) {
        size.vcpus = value
            .parse()
            .ok()
            .filter(|vcpus| (1..=limits.max_vcpus).contains(vcpus))
            .ok_or_else(|| {
                format!(
                    "annotation {VCPUS_ANNOTATION}={value:?}: not a number within 1..={} (max-vcpus)",
                    limits.max_vcpus
                )
            })?;
    }
    if let Some(value) = annotations.get(MEMORY_ANNOTATION) {
        size.memory_mib = value
            .parse()
            .ok()
            .filter(|mib| (limits.min_memory_mib..=limits.max_memory_mib).contains(mib))
            .ok_or_else(|| {
                format!(
                    "annotation {MEMORY_ANNOTATION}={value:?}: not a number of MiB within {}..={} (max-memory)",
                    limits.min_memory_mib, limits.max_memory_mib
                )
            })?;
    }
    Ok(size)
}

/// Whether container `id`, with `resources`, fits in a pod VM of `size`.
///
/// # Errors
/// A one-line message naming the limit that does not fit.
pub fn check_fits(
    id: &str,
    size: VmSize,
    resources: Option<&LinuxResources>,
) -> Result<(), String> {
    let asks = container_workload(resources);
    if asks.vcpus > u64::from(size.vcpus) {
        return Err(format!(
            "container {id:?}: its CPU limit needs {} vCPUs and its pod VM has {} \
             (size the pod with {SANDBOX_CPU_QUOTA_ANNOTATION} or {VCPUS_ANNOTATION})",
            asks.vcpus, size.vcpus
        ));
    }
    if asks.memory_mib > u64::from(size.memory_mib) {
        return Err(format!(
            "container {id:?}: its memory limit of {} MiB exceeds its pod VM's {} MiB \
             (size the pod with {SANDBOX_MEMORY_ANNOTATION} or {MEMORY_ANNOTATION})",
            asks.memory_mib, size.memory_mib
        ));
    }
    Ok(())
}

/// `base + extra` when it is at most `max`.
fn added(base: u64, extra: u64, max: u64) -> Option<u64> {
    base.checked_add(extra).filter(|total| *total <= max)
}

/// What the CRI plugin's sandbox sizing annotations ask for; `None` when
/// it set none.
fn sandbox_workload(annotations: &HashMap<String, String>) -> Result<Option<Workload>, String> {
    let number = |key: &str| -> Result<Option<i64>, String> {
        annotations
            .get(key)
            .map(|value| {
                value
                    .parse::<i64>()
                    .map_err(|_| format!("annotation {key}={value:?}: not an integer"))
            })
            .transpose()
    };
    let quota = number(SANDBOX_CPU_QUOTA_ANNOTATION)?;
    let period = number(SANDBOX_CPU_PERIOD_ANNOTATION)?;
    let memory = number(SANDBOX_MEMORY_ANNOTATION)?;
    if quota.is_none() && period.is_none() && memory.is_none() {
        return Ok(None);
    }
    Ok(Some(Workload {
        vcpus: cpus(quota, period.and_then(|p| u64::try_from(p).ok())),
        memory_mib: memory
            .and_then(|bytes| u64::try_from(bytes).ok())
            .map_or(0, |bytes| bytes.div_ceil(MIB)),
    }))
}

/// What a container's own limits ask for.
fn container_workload(resources: Option<&LinuxResources>) -> Workload {
    let Some(resources) = resources else {
        return Workload::default();
    };
    let cpu = resources.cpu().as_ref();
    let memory_bytes = resources
        .memory()
        .as_ref()
        .and_then(|memory| memory.limit())
        .and_then(|bytes| u64::try_from(bytes).ok());
    Workload {
        vcpus: cpus(
            cpu.and_then(|cpu| cpu.quota()),
            cpu.and_then(|cpu| cpu.period()),
        ),
        memory_mib: memory_bytes.map_or(0, |bytes| bytes.div_ceil(MIB)),
    }
}

/// Whole CPUs for a CFS quota and period; none for no or an unlimited (-1)
/// quota.
fn cpus(quota: Option<i64>, period: Option<u64>) -> u64 {
    match (quota.and_then(|q| u64::try_from(q).ok()), period) {
        (Some(quota), Some(period)) if quota > 0 && period > 0 => quota.div_ceil(period),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SizeLimits = SizeLimits {
        vcpus: 1,
        max_vcpus: 2,
        memory_mib: 256,
        max_memory_mib: 1024,
        min_memory_mib: 64,
    };

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn resources(json: serde_json::Value) -> LinuxResources {
        serde_json::from_value(json).unwrap()
    }

    fn size(vcpus: u8, memory_mib: u32) -> VmSize {
        VmSize { vcpus, memory_mib }
    }

    #[test]
    fn test_vmpod_annotations_size_the_vm_within_the_maxima() {
        assert_eq!(vm_size(LIMITS, &annotations(&[]), None), Ok(size(1, 256)));
        assert_eq!(
            vm_size(
                LIMITS,
                &annotations(&[(VCPUS_ANNOTATION, "2"), (MEMORY_ANNOTATION, "512")]),
                None
            ),
            Ok(size(2, 512))
        );
        for (key, value) in [
            (VCPUS_ANNOTATION, "3"),
            (VCPUS_ANNOTATION, "0"),
            (VCPUS_ANNOTATION, "many"),
            (MEMORY_ANNOTATION, "2048"),
            (MEMORY_ANNOTATION, "16"),
        ] {
            let err = vm_size(LIMITS, &annotations(&[(key, value)]), None).unwrap_err();
            assert!(err.starts_with(&format!("annotation {key}=")), "{err}");
        }
    }

    #[test]
    fn test_cri_sandbox_annotations_add_the_pods_resources_to_the_defaults() {
        let pod = annotations(&[
            (SANDBOX_CPU_QUOTA_ANNOTATION, "50000"),
            (SANDBOX_CPU_PERIOD_ANNOTATION, "100000"),
            (SANDBOX_MEMORY_ANNOTATION, "134217728"),
        ]);
        assert_eq!(vm_size(LIMITS, &pod, None), Ok(size(2, 384)));
        // Unlimited CPU and no memory limit: the defaults.
        let unlimited = annotations(&[
            (SANDBOX_CPU_QUOTA_ANNOTATION, "-1"),
            (SANDBOX_CPU_PERIOD_ANNOTATION, "100000"),
            (SANDBOX_MEMORY_ANNOTATION, "0"),
        ]);
        assert_eq!(vm_size(LIMITS, &unlimited, None), Ok(size(1, 256)));
        // vmpod's own annotations win.
        let mut both = pod.clone();
        both.insert(MEMORY_ANNOTATION.into(), "1024".into());
        assert_eq!(vm_size(LIMITS, &both, None), Ok(size(2, 1024)));
    }

    #[test]
    fn test_a_pod_that_asks_for_more_than_the_maxima_fails_in_one_line() {
        let err = vm_size(
            LIMITS,
            &annotations(&[(SANDBOX_MEMORY_ANNOTATION, &(1u64 << 30).to_string())]),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "the pod's sandbox sizing annotations ask for 1024 MiB; with the guest's own 256 MiB \
             that exceeds max-memory (1024 MiB)"
        );
        let err = vm_size(
            LIMITS,
            &annotations(&[
                (SANDBOX_CPU_QUOTA_ANNOTATION, "250000"),
                (SANDBOX_CPU_PERIOD_ANNOTATION, "100000"),
            ]),
            None,
        )
        .unwrap_err();
        assert!(
            err.contains("ask for 3 vCPUs") && err.contains("max-vcpus (2)"),
            "{err}"
        );
        let err = vm_size(
            LIMITS,
            &annotations(&[(SANDBOX_MEMORY_ANNOTATION, "lots")]),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "annotation io.kubernetes.cri.sandbox-memory=\"lots\": not an integer"
        );
    }

    #[test]
    fn test_a_lone_containers_limits_size_its_pod() {
        let limits = resources(serde_json::json!({
            "cpu": {"quota": 100000, "period": 100000},
            "memory": {"limit": 268435456}
        }));
        assert_eq!(
            vm_size(LIMITS, &annotations(&[]), Some(&limits)),
            Ok(size(2, 512))
        );
        // The sandbox annotations, when set, size the pod instead.
        let pod = annotations(&[(SANDBOX_MEMORY_ANNOTATION, "1048576")]);
        assert_eq!(vm_size(LIMITS, &pod, Some(&limits)), Ok(size(1, 257)));
    }

    #[test]
    fn test_a_container_that_does_not_fit_its_pod_vm_is_named() {
        let pod = size(1, 256);
        assert_eq!(check_fits("c", pod, None), Ok(()));
        let fits = resources(serde_json::json!({"memory": {"limit": 268435456}}));
        assert_eq!(check_fits("c", pod, Some(&fits)), Ok(()));
        let too_big = resources(serde_json::json!({"memory": {"limit": 268435457}}));
        assert_eq!(
            check_fits("c", pod, Some(&too_big)),
            Err(
                "container \"c\": its memory limit of 257 MiB exceeds its pod VM's 256 MiB \
                 (size the pod with io.kubernetes.cri.sandbox-memory or io.vmpod.vm.memory)"
                    .to_string()
            )
        );
        let two_cpus = resources(serde_json::json!({"cpu": {"quota": 150000, "period": 100000}}));
        let err = check_fits("c", pod, Some(&two_cpus)).unwrap_err();
        assert!(
            err.starts_with("container \"c\": its CPU limit needs 2 vCPUs"),
            "{err}"
        );
        let unlimited = resources(serde_json::json!({"cpu": {"quota": -1, "period": 100000}}));
        assert_eq!(check_fits("c", pod, Some(&unlimited)), Ok(()));
    }
}
