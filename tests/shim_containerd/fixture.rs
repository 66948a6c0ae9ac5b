// SPDX-License-Identifier: Apache-2.0
//! What the shim tests share: containerd with the vmpod shim and a busybox
//! image, `ctr` with its output checked, task states, the pods' VMs, the
//! proof that nothing of a pod is left, and the steps tried again when
//! their guest process died of the host fault.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use vmpod_integration_tests::containerd::{
    containerd_or_skip, count_mounts_below, processes_named, unix_sockets_below, Containerd,
    NAMESPACE, RUNTIME,
};
use vmpod_integration_tests::events::Events;
use vmpod_integration_tests::guest_or_skip;
use vmpod_integration_tests::host_faults::{pod_console, ConsoleWatch, Retries, RETRIES};

/// CRI's annotations that put a container into an existing pod.
pub const JOIN: [&str; 2] = ["--annotation", "io.kubernetes.cri.container-type=container"];

/// How long a detached container's process is watched after its start:
/// a process the host's GP fault kills dies in its first seconds (seen
/// 2.5 s in, reported 3.1 s after the start).
pub const STARTUP_WATCH: Duration = Duration::from_secs(12);

/// How long a state change in the guest may take (the guest's system calls
/// are emulated here: ~0.4 ms each).
pub const GUEST_DEADLINE: Duration = Duration::from_secs(120);

/// How long the exit event of a process seen stopped may lag behind.
const EXIT_EVENT_LAG: Duration = Duration::from_secs(10);

/// The children of process `pid` (its main thread's).
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

/// containerd with the vmpod shim, a busybox image and the shim's config.
pub struct Fixture {
    pub containerd: Containerd,
    pub image: String,
    /// The shim's `state-dir`: pod directories.
    pub pods: PathBuf,
    pub work: PathBuf,
    /// The steps tried again after the host fault; summed up on drop.
    pub faults: Retries,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // containerd's log carries the shims' logs (and the agents').
            eprintln!("containerd's log (tail):\n{}", self.containerd.log_tail(80));
        }
        let _ = self.containerd.stop();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Whether the agent initrd is built; if not, says why the test skips.
fn agent_initrd_or_skip(test: &str) -> bool {
    match std::env::var_os("VMPOD_AGENT_INITRD").map(PathBuf::from) {
        Some(path) if path.is_file() => true,
        other => {
            assert!(
                std::env::var_os("VMPOD_REQUIRE_GUEST").is_none(),
                "VMPOD_AGENT_INITRD {other:?} is not a built initrd"
            );
            eprintln!("skipped {test}: no agent initrd (run ./test.sh)");
            false
        }
    }
}

/// The directory [`fixture`] gives `test` (its `work`), removed with it.
pub fn work_dir(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("vmpod-shim-{test}-{}", std::process::id()))
}

/// Starts containerd for `test` with a shim config made of `extra` on top of
/// the guest artifacts; `None` when the test must skip (printed).
pub fn fixture(test: &str, extra: &str) -> Option<Fixture> {
    guest_or_skip(test)?;
    if !agent_initrd_or_skip(test) || !containerd_or_skip(test, &["script"]) {
        return None;
    }
    let work = work_dir(test);
    let _ = std::fs::remove_dir_all(&work);
    let pods = work.join("pods");
    let containerd = Containerd::with_vmpod_shim(&work, extra, false).expect("containerd");
    let image = containerd.import_busybox().expect("busybox image");
    Some(Fixture {
        containerd,
        image,
        pods,
        work,
        faults: Retries::new(test),
    })
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl Fixture {
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.containerd.ctr(args)
    }

    /// `ctr run` with the vmpod runtime; `before_image` are flags.
    pub fn run(&self, before_image: &[&str], id: &str, command: &[&str]) -> Output {
        let mut args = vec!["run", "--runtime", RUNTIME];
        args.extend_from_slice(before_image);
        args.push(&self.image);
        args.push(id);
        args.extend_from_slice(command);
        self.ctr(&args)
    }

    /// Asserts `ctr` succeeded, with its output and containerd's log otherwise.
    pub fn ok(&self, what: &str, out: &Output) {
        assert!(
            out.status.success(),
            "{what}: {:?}\nstdout {:?}\nstderr {:?}\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.containerd.log_tail(40)
        );
    }

    /// The PID column of `ctr task ls` for `id`: what containerd was told
    /// (0: no such task).
    pub fn task_pid(&self, id: &str) -> u32 {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout)
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields.first() == Some(&id)).then(|| fields.get(1)?.parse().ok())?
            })
            .unwrap_or(0)
    }

    /// The status column of `ctr task ls` for `id` (None: no such task).
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["task", "ls"]);
        text(&out.stdout).lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.first() == Some(&id)).then(|| fields.last().unwrap_or(&"").to_string())
        })
    }

    pub fn wait_status(&self, id: &str, wanted: Option<&str>) {
        let deadline = Instant::now() + GUEST_DEADLINE;
        while self.task_status(id).as_deref() != wanted {
            assert!(
                Instant::now() < deadline,
                "task {id}: status {:?}, want {wanted:?}",
                self.task_status(id)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The guest console of pod `pod`.
    pub fn console(&self, pod: &str) -> PathBuf {
        pod_console(&self.pods, pod)
    }

    /// Runs `step` (given the attempt number, for fresh ids) and again while
    /// its guest process died of the host fault on pod `pod`'s console;
    /// `status` reads the process's exit status from the outcome.
    pub fn retry_host_fault<T>(
        &self,
        pod: &str,
        what: &str,
        step: impl FnMut(usize) -> T,
        status: impl Fn(&T) -> Option<i32>,
    ) -> T {
        self.faults.run(&self.console(pod), what, step, status)
    }

    /// `ctr run -d` in pod `pod`, then watches the task for
    /// [`STARTUP_WATCH`]: when its process died of the host fault on the way
    /// in, the container is removed and made again.
    pub fn start_detached(&self, pod: &str, flags: &[&str], id: &str, command: &[&str]) {
        for attempt in 0..=RETRIES {
            let events = Events::watch(&self.containerd, GUEST_DEADLINE);
            let console = ConsoleWatch::start(&self.console(pod));
            let out = self.run(&[&["-d"], flags].concat(), id, command);
            self.ok(&format!("ctr run -d {id}"), &out);
            let watched = Instant::now();
            let mut status = self.task_status(id);
            while status.as_deref() == Some("RUNNING") && watched.elapsed() < STARTUP_WATCH {
                std::thread::sleep(Duration::from_millis(500));
                status = self.task_status(id);
            }
            if status.as_deref() == Some("RUNNING") {
                return;
            }
            let exit = events.exit_status(id, EXIT_EVENT_LAG);
            let fault = console.fault(exit);
            assert!(
                fault.is_some() && attempt < RETRIES,
                "{id}: {status:?} (exit status {exit:?}) instead of RUNNING\n{}",
                self.containerd.log_tail(40)
            );
            if let Some(fault) = fault {
                self.faults.again(&format!("ctr run -d {id}"), &fault);
            }
            let _ = self.ctr(&["task", "rm", "-f", id]);
            let _ = self.ctr(&["container", "rm", id]);
        }
    }

    /// `vmpod-vm` processes of this fixture's pods: an unconfined one names
    /// the pods' directory on its command line; a jailed one (whose paths
    /// are the jail's) is the grandchild of a `vmpod-jailer` that does.
    pub fn vmm_pids(&self) -> Vec<u32> {
        let pods = self.pods.display().to_string();
        let names_pods = |pid: &u32| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| text(&cmdline).contains(&pods))
        };
        let mut pids: Vec<u32> = processes_named("vmpod-vm")
            .into_iter()
            .filter(names_pods)
            .collect();
        for jailer in processes_named("vmpod-jailer")
            .into_iter()
            .filter(names_pods)
        {
            for init in children(jailer) {
                pids.extend(children(init).into_iter().filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim_end() == "vmpod-vm")
                }));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Nothing of any pod is left: no VM, no shim, no mount, no socket, no
    /// pod directory.
    pub fn assert_nothing_left(&self, when: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let vmms = self.vmm_pids();
            let shims = self.containerd.shim_pids();
            let mounts = count_mounts_below(&self.pods) + count_mounts_below(self.containerd.dir());
            let sockets = unix_sockets_below(&self.pods);
            let pod_dirs: Vec<_> = std::fs::read_dir(self.pods.join(NAMESPACE))
                .map(|dir| dir.flatten().map(|entry| entry.path()).collect())
                .unwrap_or_default();
            if vmms.is_empty()
                && shims.is_empty()
                && mounts == 0
                && sockets.is_empty()
                && pod_dirs.is_empty()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: left behind: VMs {vmms:?}, shims {shims:?}, {mounts} mounts, \
                 sockets {sockets:?}, pod dirs {pod_dirs:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// A `vmpod-vm` that runs the real one with the built-in filters less
/// `syscall` on `thread`'s, in `work` (made); its path. Run unconfined: the
/// jail has no shell for the wrapper.
pub fn write_stopping_vmm(work: &Path, thread: &str, syscall: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let builtin = concat!(env!("CARGO_MANIFEST_DIR"), "/../vmm/seccomp/x86_64.json");
    let mut filters: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(builtin).unwrap()).unwrap();
    let rules = filters[thread]["filter"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|rule| rule["syscall"] != syscall);
    assert!(rules.len() < before, "{thread} allows no {syscall}");
    std::fs::create_dir_all(work).unwrap();
    let json = work.join("filters.json");
    std::fs::write(&json, filters.to_string()).unwrap();
    let real = vmpod_integration_tests::vmpod_vm_binary().unwrap();
    let wrapper = work.join("vmpod-vm");
    let script = format!(
        "#!/bin/sh\nexec {} --seccomp-filter {} \"$@\"\n",
        real.display(),
        json.display()
    );
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    wrapper
}
