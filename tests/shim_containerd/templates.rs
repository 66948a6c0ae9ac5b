// SPDX-License-Identifier: Apache-2.0
//! Pod VM templates through containerd: the first pod of a shape boots cold
//! and leaves its template; the next pods of that shape restore it and are
//! each their own (random bytes, hostname, address, MAC, files); a changed
//! initrd makes another template; templates off boot cold and make none;
//! a damaged template is refused, removed, and the pod boots cold with one
//! warning. Cold boots cost a minute or more here, so the last three pods
//! boot side by side, and are only seen running (every guest process costs
//! seconds here, and an idle guest half a host CPU). A template prepared
//! ahead (`vmpod prepare-template`) leaves nothing of its VM, and the first
//! pod restores it. A snapshot that ends the VM boots the pod cold again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vmpod_integration_tests::containerd::{BUSYBOX, NAMESPACE, RUNTIME};
use vmpod_integration_tests::netns::Netns;
use vmpod_integration_tests::{run_with_timeout, vmpod_vm_binary};

use crate::fixture::{fixture, text, write_stopping_vmm, Fixture, GUEST_DEADLINE};

/// What each pod's container prints of its VM, in three processes (each
/// costs seconds in an emulated guest): 32 random bytes, its hostname and
/// MAC, its interface's IPv4 address, and the files another pod may have
/// written (the glob itself when there are none).
const SHOW_VM: &str = "od -An -N32 -tx1 /dev/urandom; echo @; \
     cat /proc/sys/kernel/hostname /sys/class/net/eth0/address; echo @; \
     ip -o -4 addr show eth0; echo @; echo /etc/written-by-*";

/// One pod of the test: its network namespace (one veth, its own address)
/// and its root file system.
struct TestPod {
    id: String,
    netns: Netns,
    /// The veth's other end (kept for its lifetime).
    _peer: Netns,
    address: String,
}

impl TestPod {
    /// Pod `n`: `10.77.n.2/24` on `eth0`, its peer `10.77.n.1`.
    fn new(f: &Fixture, name: &str, n: u8) -> TestPod {
        let tag = format!("t{}{name}", std::process::id());
        let netns = Netns::create(&format!("vmpod-{tag}"));
        let peer = Netns::create(&format!("vmpod-{tag}-p"));
        netns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "peer0", "netns", &peer.name,
        ]);
        let address = format!("10.77.{n}.2");
        netns.ip(&["addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        peer.ip(&["addr", "add", &format!("10.77.{n}.1/24"), "dev", "peer0"]);
        netns.ip(&["link", "set", "eth0", "up"]);
        peer.ip(&["link", "set", "peer0", "up"]);
        let pod = TestPod {
            id: format!("tmpl-{name}"),
            netns,
            _peer: peer,
            address,
        };
        pod.write_spec(f);
        pod
    }

    fn root(&self, f: &Fixture) -> PathBuf {
        f.work.join(&self.id).join("root")
    }

    fn spec_file(&self, f: &Fixture) -> PathBuf {
        f.work.join(&self.id).join("spec.json")
    }

    /// ctr's default spec with the pod's root (busybox), hostname (its id)
    /// and network namespace, running `sleep`.
    fn write_spec(&self, f: &Fixture) {
        let bin = self.root(f).join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(self.root(f).join("etc")).unwrap();
        std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
        for applet in ["sh", "sleep", "cat", "od", "ip", "ping"] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        let out = f.ctr(&["oci", "spec"]);
        f.ok("ctr oci spec", &out);
        let mut spec: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        spec["root"] = serde_json::json!({"path": self.root(f), "readonly": false});
        spec["hostname"] = self.id.clone().into();
        spec["process"]["args"] = serde_json::json!(["sleep", "3600"]);
        spec["process"]["env"] = serde_json::json!(["PATH=/bin"]);
        if let Some(linux) = spec["linux"].as_object_mut() {
            linux.remove("cgroupsPath");
        }
        let netns = self.netns.path().display().to_string();
        for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
            if ns["type"] == "network" {
                ns["path"] = netns.clone().into();
            }
        }
        std::fs::write(self.spec_file(f), serde_json::to_vec(&spec).unwrap()).unwrap();
    }

    /// Starts the pod (`ctr run -d`) and waits until it runs; returns how
    /// long that took.
    fn start(&self, f: &Fixture) -> Duration {
        let started = Instant::now();
        let spec = self.spec_file(f).display().to_string();
        let out = f.ctr(&[
            "run",
            "--runtime",
            RUNTIME,
            "--config",
            &spec,
            "-d",
            &self.id,
        ]);
        f.ok(&format!("ctr run {}", self.id), &out);
        f.wait_status(&self.id, Some("RUNNING"));
        started.elapsed()
    }

    /// Runs `script` in the pod (tried again after the host fault).
    fn exec(&self, f: &Fixture, what: &str, script: &str) -> String {
        let out = f.retry_host_fault(
            &self.id,
            what,
            |attempt| {
                let exec_id = format!("{what}-{attempt}");
                f.ctr(&[
                    "task",
                    "exec",
                    "--exec-id",
                    &exec_id,
                    &self.id,
                    "sh",
                    "-c",
                    script,
                ])
            },
            |out| out.status.code(),
        );
        f.ok(&format!("{what} in {}", self.id), &out);
        text(&out.stdout)
    }

    /// The pod's VM as [`SHOW_VM`] prints it, checked to be its own: its
    /// hostname, address and MAC; returns its random bytes and the files.
    fn show(&self, f: &Fixture) -> (String, String) {
        let out = self.exec(f, "show", SHOW_VM);
        let parts: Vec<&str> = out.split("@\n").collect();
        assert_eq!(parts.len(), 4, "{out}");
        let random: String = parts[0].split_whitespace().collect();
        assert_eq!(random.len(), 64, "32 random bytes: {out}");
        let names: Vec<&str> = parts[1].lines().collect();
        assert_eq!(names.first(), Some(&self.id.as_str()), "hostname: {out}");
        let link = self.netns.ip(&["-o", "link", "show", "eth0"]);
        let mac = names.get(1).unwrap_or(&"none");
        assert!(
            link.contains(&format!("link/ether {mac}")),
            "MAC {out} vs {link}"
        );
        let address = format!("inet {}/24", self.address);
        assert!(parts[2].contains(&address), "address: {out}");
        (random, parts[3].trim().to_owned())
    }

    /// The pod reaches its peer over its restored or booted interface.
    fn ping_peer(&self, f: &Fixture) {
        let peer = format!("{}.1", self.address.strip_suffix(".2").unwrap_or_default());
        let out = self.exec(
            f,
            "ping",
            &format!("ping -c 2 -W 10 {peer} && echo reached"),
        );
        assert!(out.contains("reached"), "{out}");
    }

    fn remove(&self, f: &Fixture) {
        let _ = f.ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
        f.wait_status(&self.id, Some("STOPPED"));
        f.ok("ctr task rm", &f.ctr(&["task", "rm", &self.id]));
        f.ok("ctr container rm", &f.ctr(&["container", "rm", &self.id]));
    }
}

/// The templates in `dir`: their keys (the hash cache `.sha256` aside).
fn templates(dir: &Path) -> Vec<String> {
    let mut keys: Vec<String> = std::fs::read_dir(dir)
        .map(|dir| {
            dir.flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| !name.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

/// containerd's log lines (the shims' included) naming pod `id` and
/// holding `words`.
fn log_lines(f: &Fixture, id: &str, words: &str) -> Vec<String> {
    let log = std::fs::read(f.containerd.log_path()).unwrap_or_default();
    text(&log)
        .lines()
        .filter(|line| line.contains(&format!("pod=\"{id}\"")) && line.contains(words))
        .map(str::to_owned)
        .collect()
}

/// Rewrites the shim's configuration with `extra` below the fixture's.
fn configure(f: &Fixture, base: &str, extra: &str) {
    std::fs::write(f.work.join("config.toml"), format!("{base}{extra}")).unwrap();
}

/// Starts `pod` on a thread and returns once its shim has read the
/// configuration (its pod's directory exists), so that the next pod may be
/// configured otherwise.
fn start_in_background<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    f: &'s Fixture,
    pod: &'s TestPod,
) -> std::thread::ScopedJoinHandle<'s, Duration> {
    let handle = scope.spawn(move || pod.start(f));
    let dir = f.pods.join(NAMESPACE).join(&pod.id);
    let deadline = Instant::now() + GUEST_DEADLINE;
    while !dir.exists() && !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "{} never got its directory",
            pod.id
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    handle
}

#[test]
fn test_pods_restored_from_a_template_are_their_own_and_a_bad_template_falls_back() {
    let test = "templates";
    let Some(f) = fixture(test, "") else {
        return;
    };
    let base = std::fs::read_to_string(f.work.join("config.toml")).unwrap();
    let template_dir = f.pods.join(".templates");

    // The first pod boots cold and leaves the template of its shape.
    let first = TestPod::new(&f, "first", 1);
    let cold = first.start(&f);
    let keys = templates(&template_dir);
    assert_eq!(keys.len(), 1, "{keys:?}\n{}", f.containerd.log_tail(40));
    let template = template_dir.join(&keys[0]);
    assert!(template.join("vmstate").is_file() && template.join("memory").is_file());
    assert_eq!(log_lines(&f, &first.id, "template made").len(), 1);
    // The template was prepared (its device program, its cgroups) for the
    // restores.
    let loaded = log_lines(&f, &first.id, "template prepared");
    assert_eq!(loaded.len(), 1, "{}", f.containerd.log_tail(40));
    // Its idle VM costs half a host CPU here: the restores need it not.
    first.remove(&f);

    // Two more restore it, and each is its own VM.
    let restored: Vec<TestPod> = [("second", 2), ("third", 3)]
        .iter()
        .map(|(name, n)| TestPod::new(&f, name, *n))
        .collect();
    let mut restore_times = Vec::new();
    for pod in &restored {
        restore_times.push(pod.start(&f));
        let lines = log_lines(&f, &pod.id, "restored from its template");
        assert_eq!(lines.len(), 1, "{}", f.containerd.log_tail(40));
        assert!(lines[0].contains(&keys[0]), "{lines:?}");
    }
    eprintln!("time to a running pod: cold {cold:?}, restored {restore_times:?}");
    restored[0].exec(&f, "write", "echo second > /etc/written-by-second");
    let (second_bytes, second_files) = restored[0].show(&f);
    let (third_bytes, third_files) = restored[1].show(&f);
    assert_eq!(second_files, "/etc/written-by-second");
    assert_eq!(
        third_files, "/etc/written-by-*",
        "the third pod sees none of the second's files"
    );
    assert_ne!(
        second_bytes, third_bytes,
        "restored pods share random output"
    );
    restored[0].ping_peer(&f);
    // The agent's log stream, reset by the restore, is connected again.
    for pod in &restored {
        let exits = log_lines(&f, &pod.id, "agent: ");
        assert!(
            exits.iter().any(|line| line.contains("exited with")),
            "{} logged no process exit to the shim: {exits:?}",
            pod.id
        );
    }
    assert_eq!(
        templates(&template_dir),
        keys,
        "no new template for the same shape"
    );
    for pod in &restored {
        pod.remove(&f);
    }

    // Three pods boot side by side: one of the first shape whose template
    // is damaged, one with a changed initrd, one with templates off.
    let vmstate = template.join("vmstate");
    let whole = std::fs::metadata(&vmstate).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&vmstate)
        .and_then(|file| file.set_len(whole / 2))
        .unwrap();
    let initrd = std::env::var("VMPOD_AGENT_INITRD").unwrap();
    let changed = f.work.join("initrd-changed");
    let mut bytes = std::fs::read(&initrd).unwrap();
    bytes.extend_from_slice(&[0; 512]);
    std::fs::write(&changed, bytes).unwrap();
    let changed_initrd = base.replace(
        &format!("{initrd:?}"),
        &format!("{:?}", changed.display().to_string()),
    );
    assert_ne!(changed_initrd, base);
    let (damaged, new_initrd, off) = (
        TestPod::new(&f, "damaged", 4),
        TestPod::new(&f, "initrd", 5),
        TestPod::new(&f, "off", 6),
    );
    let times = std::thread::scope(|scope| {
        let handles = [
            start_in_background(scope, &f, &damaged),
            {
                configure(&f, &changed_initrd, "");
                start_in_background(scope, &f, &new_initrd)
            },
            {
                configure(&f, &base, "templates = false\n");
                start_in_background(scope, &f, &off)
            },
        ];
        handles.map(|handle| handle.join().unwrap())
    });
    eprintln!("cold boots side by side: {times:?}");

    // The damaged template was refused, removed, and made anew.
    let warnings = log_lines(&f, &damaged.id, "booting it cold");
    assert_eq!(warnings.len(), 1, "{}", f.containerd.log_tail(60));
    assert!(warnings[0].contains("WARN"), "{warnings:?}");
    assert!(warnings[0].contains("vmpod-vm refused it"), "{warnings:?}");
    assert!(
        warnings[0].contains("the template is removed"),
        "{warnings:?}"
    );
    assert!(std::fs::metadata(&vmstate).unwrap().len() > whole / 2);
    // The changed initrd made a template of its own; templates off made
    // none and restored none.
    let now = templates(&template_dir);
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.contains(&keys[0]));
    assert_eq!(log_lines(&f, &new_initrd.id, "template made").len(), 1);
    assert!(log_lines(&f, &off.id, "template").is_empty());
    for pod in [&damaged, &new_initrd, &off] {
        pod.remove(&f);
    }
    f.assert_nothing_left("after the template pods");
}

/// `vmpod prepare-template` with the fixture's config, bounded by a cold
/// boot's time; returns its one line of output.
fn prepare_template(f: &Fixture, vmpod: &Path) -> String {
    let config = f.work.join("config.toml");
    let out = run_with_timeout(
        Command::new(vmpod)
            .arg("prepare-template")
            .arg("--config")
            .arg(&config)
            .args(["--interfaces", "1"]),
        Duration::from_secs(900),
    );
    assert_eq!(out.status, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    out.stdout.trim_end().to_owned()
}

#[test]
fn test_a_prepared_template_leaves_nothing_and_the_first_pod_restores_it() {
    let test = "prepare";
    let Some(f) = fixture(test, "") else {
        return;
    };
    let vmpod = vmpod_vm_binary()
        .map(|vmm| vmm.with_file_name("vmpod"))
        .expect("the build's binaries");
    assert!(vmpod.is_file(), "{} is not built", vmpod.display());
    let template_dir = f.pods.join(".templates");

    // Made ahead, of a one-interface pod's shape: the VM, its pod
    // directory and its network namespaces (held by the command alone) end
    // with the command.
    let line = prepare_template(&f, &vmpod);
    let keys = templates(&template_dir);
    assert_eq!(keys.len(), 1, "{keys:?}: {line}");
    let template = template_dir.join(&keys[0]);
    let made = format!("template {}: made in {} (", keys[0], template.display());
    assert!(line.starts_with(&made), "{line}");
    assert!(template.join("vmstate").is_file() && template.join("memory").is_file());
    assert!(
        !f.pods.join(".prepare").exists(),
        "its pod directory is left"
    );
    f.assert_nothing_left("after prepare-template");
    // Made once.
    let again = prepare_template(&f, &vmpod);
    assert_eq!(
        again,
        format!("template {}: already in {}", keys[0], template.display())
    );

    // The first pod restores it.
    let pod = TestPod::new(&f, "prepared", 7);
    let took = pod.start(&f);
    eprintln!("the first pod, restored from the prepared template: {took:?}");
    let lines = log_lines(&f, &pod.id, "restored from its template");
    assert_eq!(lines.len(), 1, "{}", f.containerd.log_tail(40));
    assert!(lines[0].contains(&keys[0]), "{lines:?}");
    assert!(log_lines(&f, &pod.id, "template made").is_empty());
    pod.remove(&f);
    assert_eq!(templates(&template_dir), keys);
    f.assert_nothing_left("after the prepared template's pod");
}

#[test]
fn test_a_snapshot_that_ends_the_vm_boots_the_pod_cold_again() {
    // The VM is ended by its seccomp filter, which here lacks the API
    // thread's `ftruncate` (a snapshot's first write), through a wrapper.
    let test = "snapshot-end";
    let work = crate::fixture::work_dir(&format!("{test}-vmm"));
    let vmm = write_stopping_vmm(&work, "api", "ftruncate");
    let extra = format!("vmm = \"{}\"\nunconfined = true\n", vmm.display());
    let Some(f) = fixture(test, &extra) else {
        let _ = std::fs::remove_dir_all(&work);
        return;
    };
    let id = "vt-snapshot-end";
    f.start_detached(id, &[], id, &["sleep", "3600"]);
    let made = log_lines(&f, id, "no template made");
    assert_eq!(made.len(), 1, "{}", f.containerd.log_tail(40));
    assert!(
        made[0].contains("snapshot (PUT /snapshot/create): the VM answered nothing"),
        "{made:?}"
    );
    let ended = log_lines(&f, id, "ended while it was snapshotted");
    assert_eq!(ended.len(), 1, "{}", f.containerd.log_tail(40));
    assert!(
        ended[0].contains("(exit status: 3)")
            && ended[0].contains(
                "the api thread made system call 77 (ftruncate), which its seccomp filter \
                 does not allow"
            )
            && ended[0].contains("booting it cold again"),
        "{ended:?}"
    );
    assert!(templates(&f.pods.join(".templates")).is_empty());
    // The container runs (start_detached saw it), in the second VM.
    assert_eq!(f.vmm_pids().len(), 1);
    let _ = f.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    f.wait_status(id, Some("STOPPED"));
    f.ok("ctr task rm", &f.ctr(&["task", "rm", id]));
    f.ok("ctr container rm", &f.ctr(&["container", "rm", id]));
    f.assert_nothing_left("after the pod booted again");
    let _ = std::fs::remove_dir_all(&work);
}
