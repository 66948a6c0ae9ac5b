// SPDX-License-Identifier: Apache-2.0
//! Create: the container's root file system into the pod's share, its spec
//! to the agent; the pod's first container boots the pod VM. A failed create
//! leaves nothing behind, not even the VM it booted.

use std::collections::HashMap;
use std::path::Path;

use containerd_shim::api::{CreateTaskRequest, CreateTaskResponse};
use containerd_shim::protos::events::task::{TaskCreate, TaskIO};
use containerd_shim::protos::topics;
use protobuf::MessageField;
use ttrpc::Code;
use vmpod_agent_api::messages::Mount;
use vmpod_agent_api::ProcessId;

use super::error::{agent_status, check_id, host_status, status, MAX_ID_LEN};
use super::launch::PodRequest;
use super::state::Container;
use super::{Agent, TaskService, POD_DIR_FILE};
use crate::io::StdioPaths;
use crate::process::Process;
use crate::share::ContainerShare;
use crate::spec;

impl TaskService {
    /// Create: checks the request, finds or boots the pod VM, creates the
    /// container in it and publishes TaskCreate.
    pub(super) async fn create_task(
        &self,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        check_id("container", &req.id, MAX_ID_LEN)?;
        if self.containers().contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("container {:?} exists", req.id),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "checkpoint/restore is not supported",
            ));
        }
        let spec = spec::load(Path::new(&req.bundle))
            .map_err(|err| host_status(Code::INVALID_ARGUMENT, &err))?;
        let pod_id = spec::pod_id(&spec, &req.id);
        let annotations = spec.annotations().clone().unwrap_or_default();
        let pod_spec =
            spec::pod_spec(&spec).map_err(|err| host_status(Code::INVALID_ARGUMENT, &err))?;
        let resources = spec
            .linux()
            .as_ref()
            .and_then(|linux| linux.resources().as_ref());
        let pod = self
            .pod_for(&PodRequest {
                pod_id: &pod_id,
                container_id: &req.id,
                annotations: &annotations,
                resources,
                spec: &pod_spec,
            })
            .await?;
        let member = spec::Membership {
            sandbox: pod_id == req.id,
            vmm_pid: pod.handle.vmm_pid,
            shm_source: pod.handle.shm_source.as_deref(),
        };
        let share = ContainerShare::new(&pod.dir, &req.id);
        if let Err(err) = create_in_pod(
            &req,
            spec,
            member,
            pod.handle.agent.as_ref(),
            &share,
            &pod.dir,
        )
        .await
        {
            self.roll_back_create(&req, &share, pod.launched).await;
            return Err(err);
        }
        self.containers()
            .insert(req.id.clone(), new_container(&req, share));
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(task_create(&req, pod.handle.vmm_pid)),
        )
        .await;
        Ok(CreateTaskResponse {
            pid: pod.handle.vmm_pid,
            ..Default::default()
        })
    }

    /// Undoes what a failed create made: the container's share, the bundle's
    /// pod marker and, when the create booted it, the pod VM.
    async fn roll_back_create(
        &self,
        req: &CreateTaskRequest,
        share: &ContainerShare,
        launched: bool,
    ) {
        if let Err(cleanup) = share.remove() {
            tracing::warn!(
                "rollback of {:?}: {}",
                req.id,
                vmpod_sys::error::chain(&cleanup)
            );
        }
        let _ = std::fs::remove_file(Path::new(&req.bundle).join(POD_DIR_FILE));
        if launched {
            // A failure is logged; the pod stays for Shutdown to retry.
            let _ = self.shut_down_pod().await;
        }
    }
}

/// The steps of Create after the pod runs; undone by the caller on failure.
async fn create_in_pod(
    req: &CreateTaskRequest,
    spec: oci_spec::runtime::Spec,
    member: spec::Membership<'_>,
    agent: &dyn Agent,
    share: &ContainerShare,
    pod_dir: &Path,
) -> Result<(), ttrpc::Error> {
    let bundle = Path::new(&req.bundle);
    let marker = bundle.join(POD_DIR_FILE);
    std::fs::write(&marker, pod_dir.as_os_str().as_encoded_bytes())
        .map_err(|err| status(Code::INTERNAL, format!("write {}: {err}", marker.display())))?;
    // Without mounts from containerd, the spec's root is a prepared
    // directory (relative to the bundle, or absolute as with `ctr run --rootfs`).
    let root = spec
        .root()
        .as_ref()
        .map_or_else(|| bundle.join("rootfs"), |root| bundle.join(root.path()));
    let readonly = spec
        .root()
        .as_ref()
        .and_then(|root| root.readonly())
        .unwrap_or(false);
    let mount_points = readonly.then(|| spec::mount_points(&spec));
    share
        .mount_rootfs(&req.rootfs, &root, mount_points.as_deref())
        .map_err(|err| host_status(Code::INTERNAL, &err))?;
    tracing::debug!(container = req.id, "root file system in the share");
    let guest_spec = spec::for_guest(spec, share, member)
        .map_err(|err| host_status(Code::INVALID_ARGUMENT, &err))?;
    let mut rootfs = Mount::new();
    rootfs.source = share.guest_rootfs();
    rootfs.fstype = "bind".into();
    agent
        .create_container(&req.id, guest_spec, rootfs)
        .await
        .map_err(agent_status)
}

fn stdio(req: &CreateTaskRequest) -> StdioPaths {
    StdioPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    }
}

fn new_container(req: &CreateTaskRequest, share: ContainerShare) -> Container {
    Container {
        bundle: req.bundle.clone(),
        share,
        init: Process::new(ProcessId::init(&req.id), stdio(req), None),
        execs: HashMap::new(),
        paused: false,
    }
}

fn task_create(req: &CreateTaskRequest, vmm_pid: u32) -> TaskCreate {
    TaskCreate {
        container_id: req.id.clone(),
        bundle: req.bundle.clone(),
        rootfs: req.rootfs.clone(),
        io: MessageField::some(TaskIO {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
            ..Default::default()
        }),
        pid: vmm_pid,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim::api::Status;

    use super::*;
    use crate::pod::PodError;
    use crate::sizing::VmSize;
    use crate::spec::CONTAINER_TYPE_ANNOTATION;
    use crate::task::fake::{in_pod, minimal_spec, refusal, Harness, VMM_PID};
    use crate::task::lock;

    #[tokio::test]
    async fn test_create_boots_the_pod_and_publishes_task_create() {
        let harness = Harness::new();
        let bundle = harness.bundle("c1");
        let response = harness.create_in("c1", &bundle).await.unwrap();
        assert_eq!(response.pid, VMM_PID);
        assert_eq!(
            *lock(&harness.launcher.launches),
            [VmSize {
                vcpus: 1,
                memory_mib: 256
            }]
        );
        assert_eq!(
            harness.agent.calls(),
            ["CreateContainer c1 /run/vmpod/shared/c1/rootfs"]
        );
        let event = harness.events.one::<TaskCreate>();
        assert_eq!(event.container_id, "c1");
        assert_eq!(event.bundle, bundle.display().to_string());
        assert_eq!(event.pid, VMM_PID);
        assert_eq!(harness.events.topics(), [topics::TASK_CREATE_EVENT_TOPIC]);
        assert_eq!(harness.status("c1", "").unwrap(), Status::CREATED);
        // The bundle names the pod's directory, for a delete after the shim.
        let marker = std::fs::read_to_string(bundle.join(POD_DIR_FILE)).unwrap();
        assert_eq!(
            std::path::PathBuf::from(marker),
            harness.shared("c1").parent().unwrap()
        );
        // The prepared root is bound into the share.
        std::fs::write(bundle.join("rootfs/marker"), "root").unwrap();
        let shared_root = harness.shared("c1").join("c1/rootfs");
        assert_eq!(
            std::fs::read_to_string(shared_root.join("marker")).unwrap(),
            "root"
        );
    }

    #[tokio::test]
    async fn test_create_refuses_what_cannot_be_created() {
        let harness = Harness::new();
        harness.created("c1").await;
        let bundle = harness.bundle("c1");
        assert_eq!(
            refusal(harness.create_in("c1", &bundle).await),
            (Code::ALREADY_EXISTS, "container \"c1\" exists".into())
        );
        let (code, message) = refusal(harness.create_in("../c2", &bundle).await);
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(
            message.starts_with("container \"../c2\": want 1 to 128"),
            "{message}"
        );
        let (code, message) = refusal(
            harness
                .service
                .create_task(CreateTaskRequest {
                    id: "c3".into(),
                    bundle: bundle.display().to_string(),
                    checkpoint: "/tmp/cp".into(),
                    ..Default::default()
                })
                .await,
        );
        assert_eq!(
            (code, message.as_str()),
            (Code::UNIMPLEMENTED, "checkpoint/restore is not supported")
        );
        let (code, message) = refusal(
            harness
                .create_in(
                    "c4",
                    &harness.bundle_with("c4", serde_json::json!({"ociVersion": 7})),
                )
                .await,
        );
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(message.contains("config.json"), "{message}");
        assert_eq!(harness.agent.calls().len(), 1);
        assert_eq!(harness.events.topics().len(), 1);
    }

    #[tokio::test]
    async fn test_an_unusable_configuration_fails_create_with_its_message() {
        let harness = Harness::with_config(|_| Err("config x.toml: memory: bad".into()));
        let bundle = harness.bundle("c1");
        assert_eq!(
            refusal(harness.create_in("c1", &bundle).await),
            (
                Code::FAILED_PRECONDITION,
                "config x.toml: memory: bad".into()
            )
        );
        assert!(lock(&harness.launcher.launches).is_empty());
    }

    #[tokio::test]
    async fn test_the_pods_containers_join_its_vm() {
        let harness = Harness::new();
        let orphan = harness.bundle_with("c2", in_pod("pod1"));
        assert_eq!(
            refusal(harness.create_in("c2", &orphan).await),
            (
                Code::NOT_FOUND,
                "container \"c2\" names pod \"pod1\", which does not run".into()
            )
        );
        harness.created("pod1").await;
        harness.create_in("c2", &orphan).await.unwrap();
        assert_eq!(lock(&harness.launcher.launches).len(), 1);
        assert!(harness.shared("pod1").join("c2/rootfs").is_dir());
        let stranger = harness.bundle_with("c3", in_pod("pod2"));
        assert_eq!(
            refusal(harness.create_in("c3", &stranger).await),
            (
                Code::INVALID_ARGUMENT,
                "container \"c3\" names pod \"pod2\", this shim runs pod \"pod1\"".into()
            )
        );
        assert_eq!(harness.events.all::<TaskCreate>().len(), 2);
    }

    /// A spec of kind `kind` in pod `pod_id` binding `shm` at `/dev/shm`
    /// as containerd's CRI plugin does.
    fn binding_shm(kind: &str, pod_id: &str, shm: &str) -> serde_json::Value {
        let mut spec = in_pod(pod_id);
        spec["annotations"][CONTAINER_TYPE_ANNOTATION] = kind.into();
        spec["mounts"] = serde_json::json!([{"destination": "/dev/shm", "type": "bind",
            "source": shm, "options": ["rbind", "nosuid", "nodev", "noexec"]}]);
        spec
    }

    #[tokio::test]
    async fn test_the_pods_shm_is_not_shared_with_the_guest() {
        let host_tmpfs = vmpod_sys::mountinfo::mounts()
            .unwrap()
            .iter()
            .any(|m| m.point == std::path::Path::new("/dev/shm") && m.fs_type == "tmpfs");
        if !host_tmpfs {
            eprintln!("SKIP: this host's /dev/shm is no tmpfs to stand for a pod's");
            return;
        }
        let harness = Harness::new();
        let missing = binding_shm("sandbox", "pod1", "/nonexistent/vmpod/shm");
        let (code, message) = refusal(
            harness
                .create_in("pod1", &harness.bundle_with("pod1", missing))
                .await,
        );
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert_eq!(
            message,
            "the sandbox's /dev/shm source /nonexistent/vmpod/shm: \
             No such file or directory (os error 2)"
        );
        assert!(lock(&harness.launcher.launches).is_empty());
        let sandbox = binding_shm("sandbox", "pod1", "/dev/shm");
        harness
            .create_in("pod1", &harness.bundle_with("pod1", sandbox))
            .await
            .unwrap();
        let member = binding_shm("container", "pod1", "/dev/shm");
        harness
            .create_in("c2", &harness.bundle_with("c2", member))
            .await
            .unwrap();
        // Both bound the guest's tmpfs: neither has a bind in the share.
        for id in ["pod1", "c2"] {
            let part = harness.shared("pod1").join(id);
            assert!(part.join("rootfs").is_dir());
            assert!(!part.join("mounts").exists(), "{id}'s /dev/shm was shared");
        }
    }

    #[tokio::test]
    async fn test_annotations_size_the_pod_vm_within_the_maxima() {
        let harness = Harness::new();
        let mut spec = minimal_spec();
        spec["annotations"] = serde_json::json!({crate::sizing::VCPUS_ANNOTATION: "3"});
        let (code, message) = refusal(
            harness
                .create_in("c1", &harness.bundle_with("c1", spec.clone()))
                .await,
        );
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(
            message.starts_with("annotation io.vmpod.vm.vcpus=\"3\""),
            "{message}"
        );
        spec["annotations"] = serde_json::json!({crate::sizing::VCPUS_ANNOTATION: "2"});
        harness
            .create_in("c1", &harness.bundle_with("c1", spec))
            .await
            .unwrap();
        assert_eq!(
            *lock(&harness.launcher.launches),
            [VmSize {
                vcpus: 2,
                memory_mib: 256
            }]
        );
    }

    #[tokio::test]
    async fn test_a_container_must_fit_its_pod_vm() {
        let harness = Harness::new();
        // A lone container's limits size its pod: the defaults plus them.
        let mut first = minimal_spec();
        first["linux"]["resources"] = serde_json::json!({"memory": {"limit": 128 << 20}});
        harness
            .create_in("pod1", &harness.bundle_with("pod1", first))
            .await
            .unwrap();
        assert_eq!(
            *lock(&harness.launcher.launches),
            [VmSize {
                vcpus: 1,
                memory_mib: 384
            }]
        );
        let mut too_big = in_pod("pod1");
        too_big["linux"]["resources"] = serde_json::json!({"memory": {"limit": 512 << 20}});
        let (code, message) = refusal(
            harness
                .create_in("c2", &harness.bundle_with("c2", too_big))
                .await,
        );
        assert_eq!(code, Code::INVALID_ARGUMENT);
        assert!(
            message.starts_with(
                "container \"c2\": its memory limit of 512 MiB exceeds its pod VM's 384 MiB"
            ),
            "{message}"
        );
        assert!(!harness.shared("pod1").join("c2").exists());
        assert_eq!(harness.events.all::<TaskCreate>().len(), 1);
        let mut fits = in_pod("pod1");
        fits["linux"]["resources"] = serde_json::json!({"memory": {"limit": 384 << 20}});
        harness
            .create_in("c3", &harness.bundle_with("c3", fits))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn test_a_failed_launch_keeps_its_code_and_registers_nothing() {
        let harness = Harness::new();
        *lock(&harness.launcher.failure) = Some(PodError::Exists {
            pod: "c1".into(),
            path: "/run/vmpod/default/c1".into(),
        });
        let bundle = harness.bundle("c1");
        assert_eq!(
            refusal(harness.create_in("c1", &bundle).await),
            (
                Code::ALREADY_EXISTS,
                "pod c1: /run/vmpod/default/c1 already exists".into()
            )
        );
        assert_eq!(refusal(harness.status("c1", "")).0, Code::NOT_FOUND);
        assert!(harness.events.topics().is_empty());
        assert!(!bundle.join(POD_DIR_FILE).exists());
    }

    #[tokio::test]
    async fn test_a_refused_create_rolls_back_the_share_and_the_pod() {
        let harness = Harness::new();
        harness
            .agent
            .refuse("CreateContainer", Code::INVALID_ARGUMENT, "bad spec");
        let bundle = harness.bundle("c1");
        assert_eq!(
            refusal(harness.create_in("c1", &bundle).await),
            (
                Code::INVALID_ARGUMENT,
                "agent CreateContainer: bad spec".into()
            )
        );
        assert_eq!(
            harness
                .launcher
                .shut_downs
                .load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        assert!(!harness.shared("c1").exists());
        assert!(!bundle.join(POD_DIR_FILE).exists());
        assert_eq!(refusal(harness.status("c1", "")).0, Code::NOT_FOUND);
        assert!(harness.events.topics().is_empty());
        assert_eq!(harness.service.vmm_pid(), 0);
    }

    #[tokio::test]
    async fn test_a_refused_create_in_a_running_pod_keeps_the_pod() {
        let harness = Harness::new();
        harness.created("pod1").await;
        harness
            .agent
            .refuse("CreateContainer", Code::RESOURCE_EXHAUSTED, "no memory");
        let (code, _) = refusal(
            harness
                .create_in("c2", &harness.bundle_with("c2", in_pod("pod1")))
                .await,
        );
        assert_eq!(code, Code::RESOURCE_EXHAUSTED);
        assert!(!harness.shared("pod1").join("c2").exists());
        assert!(harness.shared("pod1").join("pod1/rootfs").is_dir());
        assert_eq!(
            harness
                .launcher
                .shut_downs
                .load(std::sync::atomic::Ordering::SeqCst),
            0
        );
        assert_eq!(harness.service.vmm_pid(), VMM_PID);
    }
}
