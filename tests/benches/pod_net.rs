// SPDX-License-Identifier: Apache-2.0
//! TCP throughput and round-trip time between a container and a peer
//! network namespace, through the real containerd: a vmpod pod (its
//! namespace's veth carried into the VM by tap + tc redirect) side by side
//! with a runc container in the same kind of namespace, in the same run.
//! Prints MiB/s both ways, ICMP round trips, the ratios, and vmpod-vm's CPU
//! per MiB moved (its device thread, and the whole process with the guest's
//! vCPU). Figures, not a test: run it through `bench/pod-net.sh`. A step
//! whose guest process died of the host fault some KVM hosts show (status
//! 139 and a fault line on the pod's console) is done again, said and
//! summed up at the end.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmpod_integration_tests::containerd::{processes_named, Containerd, RUNTIME};
use vmpod_integration_tests::events::Events;
use vmpod_integration_tests::host_faults::{pod_console, ConsoleWatch, Retries, RETRIES};
use vmpod_integration_tests::netns::{PodNetns, PEER_IPV4, POD_IPV4};

const TO_PEER_PORT: u16 = 7001;
const FROM_PEER_PORT: u16 = 7002;
/// How long one transfer may take at most.
const DEADLINE: Duration = Duration::from_secs(900);
/// How long a server in the container gets to listen.
const LISTEN_WAIT: Duration = Duration::from_secs(60);
/// How long the exit event of a process seen ended may lag behind.
const EXIT_EVENT_LAG: Duration = Duration::from_secs(10);

fn mib(variable: &str, default: u64) -> u64 {
    std::env::var(variable)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Clock ticks of CPU (user + system) of `pid`'s threads, all of them or
/// those named `only`.
fn cpu_ticks(pid: u32, only: Option<&str>) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("stat")).ok())
        .filter_map(|stat| {
            let (name, rest) = stat.split_once(" (")?.1.rsplit_once(") ")?;
            if only.is_some_and(|only| only != name) {
                return None;
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// `value` with three significant digits (the figures span six orders of
/// magnitude here).
fn significant(value: f64) -> String {
    format!("{value:.3e}")
        .parse::<f64>()
        .map_or_else(|_| value.to_string(), |rounded| rounded.to_string())
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// One runtime's container in its own pod namespace.
struct Subject<'a> {
    containerd: &'a Containerd,
    runtime: &'a str,
    id: String,
    net: PodNetns,
    /// The guest console of its pod (none for runc).
    console: PathBuf,
    /// The steps done again after the host fault.
    faults: &'a Retries,
}

/// What was measured for one runtime.
struct Figures {
    to_peer_mib_s: f64,
    from_peer_mib_s: f64,
    rtt_ms: f64,
    /// vmpod-vm's CPU seconds per MiB moved: device thread, whole process.
    vmm_cpu_per_mib: Option<(f64, f64)>,
}

impl Subject<'_> {
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        self.containerd.ctr(args)
    }

    /// `ctr run -d` of a long sleep in the pod namespace, until its
    /// process survives its first seconds (where the host's GP fault
    /// strikes).
    fn start(&self, image: &str, with_ns: &str) {
        for attempt in 0..=RETRIES {
            let events = Events::watch(self.containerd, DEADLINE);
            let console = ConsoleWatch::start(&self.console);
            let out = self.ctr(&[
                "run",
                "-d",
                "--runtime",
                self.runtime,
                "--with-ns",
                with_ns,
                image,
                &self.id,
                "sleep",
                "3600",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_secs(10));
            let tasks = String::from_utf8_lossy(&self.ctr(&["task", "ls"]).stdout).into_owned();
            if tasks
                .lines()
                .any(|line| line.starts_with(&self.id) && line.ends_with("RUNNING"))
            {
                return;
            }
            let status = events.exit_status(&self.id, EXIT_EVENT_LAG);
            self.host_fault("starting the container", attempt, &console, status);
            let _ = self.ctr(&["task", "rm", "-f", &self.id]);
            let _ = self.ctr(&["container", "rm", &self.id]);
        }
    }

    /// Runs `script` in the container; its exit status.
    fn exec(&self, name: &str, detach: bool, script: &str) -> Option<i32> {
        let mut args = vec!["task", "exec"];
        if detach {
            args.push("--detach");
        }
        args.extend(["--exec-id", name, &self.id, "sh", "-c", script]);
        let out = self.ctr(&args);
        let status = out.status.code();
        assert!(
            out.status.success() || status == Some(139),
            "{} exec {name}: {:?} {}",
            self.runtime,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        status
    }

    /// Attempt `attempt` of `what` failed, its guest process having ended
    /// with `status`: says and counts that it is done again when that
    /// process died of the host fault (on `console`), and panics otherwise
    /// or past the last attempt.
    fn host_fault(&self, what: &str, attempt: usize, console: &ConsoleWatch, status: Option<i32>) {
        let fault = console.fault(status);
        match fault {
            Some(fault) if attempt < RETRIES => {
                self.faults
                    .again(&format!("{}: {what}", self.runtime), &fault);
            }
            _ => panic!(
                "{}: {what} failed (exit status {status:?}, host fault {fault:?})",
                self.runtime
            ),
        }
    }

    /// The container sends `mib` MiB to a server in the peer namespace;
    /// MiB/s from the first byte to the last.
    fn send_to_peer(&self, mib: u64) -> f64 {
        let listener = self
            .net
            .peer
            .run(|| TcpListener::bind((PEER_IPV4, TO_PEER_PORT)).unwrap());
        let expected = mib << 20;
        let (done, finished) = std::sync::mpsc::channel();
        // Connections that bring less (the sender died on its way in) do
        // not count; the first whole one does.
        std::thread::spawn(move || {
            while let Ok((mut stream, _)) = listener.accept() {
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                let mut got = 0u64;
                let mut first = None;
                while got < expected {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            first.get_or_insert_with(Instant::now);
                            got += n as u64;
                        }
                    }
                }
                if got == expected {
                    let _ = done.send(first.map_or(0.0, |first| first.elapsed().as_secs_f64()));
                    return;
                }
            }
        });
        for attempt in 0..=RETRIES {
            let console = ConsoleWatch::start(&self.console);
            let status = self.exec(
                &format!("send-{mib}-{attempt}"),
                false,
                &format!(
                    "dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {PEER_IPV4} {TO_PEER_PORT}",
                    mib * 16
                ),
            );
            if let Ok(seconds) = finished.recv_timeout(Duration::from_secs(5)) {
                return mib as f64 / seconds;
            }
            self.host_fault("sending to the peer", attempt, &console, status);
        }
        unreachable!("host_fault panics after the last attempt")
    }

    /// A server in the container receives `mib` MiB from the peer
    /// namespace; MiB/s from the first write until it closed.
    fn receive_from_peer(&self, mib: u64) -> f64 {
        for attempt in 0..=RETRIES {
            let events = Events::watch(self.containerd, DEADLINE);
            let console = ConsoleWatch::start(&self.console);
            let receiver = format!("receive-{mib}-{attempt}");
            self.exec(
                &receiver,
                true,
                &format!("nc -l -p {FROM_PEER_PORT} > /dev/null"),
            );
            let rate = self.net.peer.run(|| {
                let deadline = Instant::now() + LISTEN_WAIT;
                let mut stream = loop {
                    match TcpStream::connect((POD_IPV4, FROM_PEER_PORT)) {
                        Ok(stream) => break stream,
                        // A server that ended will not answer.
                        Err(_)
                            if Instant::now() < deadline
                                && events.exit_status(&receiver, Duration::ZERO).is_none() =>
                        {
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        Err(_) => return None,
                    }
                };
                stream.set_read_timeout(Some(DEADLINE)).unwrap();
                let block = vec![0u8; 1 << 16];
                let started = Instant::now();
                for _ in 0..mib * 16 {
                    stream.write_all(&block).ok()?;
                }
                stream.shutdown(std::net::Shutdown::Write).ok()?;
                // The server's end closes once it has read everything.
                let mut rest = [0u8; 16];
                let _ = stream.read(&mut rest);
                Some(mib as f64 / started.elapsed().as_secs_f64())
            });
            if let Some(rate) = rate {
                return rate;
            }
            let status = events.exit_status(&receiver, EXIT_EVENT_LAG);
            self.host_fault("receiving from the peer", attempt, &console, status);
        }
        unreachable!("host_fault panics after the last attempt")
    }

    /// Median ICMP round trip from the peer namespace to the container's
    /// address, ms (busybox ping's average of `count`).
    fn rtt_ms(&self, count: u32) -> f64 {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.net.peer.name,
                "busybox",
                "ping",
                "-q",
                "-c",
            ])
            .arg(count.to_string())
            .arg(POD_IPV4)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // "round-trip min/avg/max = 0.050/0.071/0.120 ms"
        text.lines()
            .find_map(|line| line.split(" = ").nth(1))
            .and_then(|values| values.split('/').nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("ping: {text}"))
    }

    fn measure(&self, mib: u64, vmm: Option<u32>) -> Figures {
        let before = vmm.map(|pid| (cpu_ticks(pid, Some("vmpod-devices")), cpu_ticks(pid, None)));
        let to_peer_mib_s = self.send_to_peer(mib);
        let from_peer_mib_s = self.receive_from_peer(mib);
        let vmm_cpu_per_mib = vmm.zip(before).map(|(pid, (devices, all))| {
            let moved = (2 * mib) as f64;
            (
                (cpu_ticks(pid, Some("vmpod-devices")) - devices) as f64
                    / ticks_per_second()
                    / moved,
                (cpu_ticks(pid, None) - all) as f64 / ticks_per_second() / moved,
            )
        });
        Figures {
            to_peer_mib_s,
            from_peer_mib_s,
            rtt_ms: self.rtt_ms(20),
            vmm_cpu_per_mib,
        }
    }
}

fn main() {
    let vmpod_mib = mib("VMPOD_BENCH_NET_VMPOD_MIB", 2);
    let runc_mib = mib("VMPOD_BENCH_NET_RUNC_MIB", 256);

    let work = std::env::temp_dir().join(format!("vmpod-bench-net-{}", std::process::id()));
    let mut containerd = Containerd::with_vmpod_shim(&work, "", true).expect("containerd");
    let image = containerd.import_busybox().expect("busybox image");
    let faults = Retries::new("bench pod_net");

    let mut results = Vec::new();
    for (runtime, tag, mib) in [
        ("io.containerd.runc.v2", "br", runc_mib),
        (RUNTIME, "bv", vmpod_mib),
    ] {
        let subject = Subject {
            containerd: &containerd,
            runtime,
            id: format!("bench-net-{tag}"),
            net: PodNetns::create(&format!("{tag}{}", std::process::id())),
            console: pod_console(&work.join("pods"), &format!("bench-net-{tag}")),
            faults: &faults,
        };
        let with_ns = format!("network:{}", subject.net.pod.path().display());
        subject.start(&image, &with_ns);
        let vmm_pid = (runtime == RUNTIME).then(|| {
            processes_named("vmpod-vm")
                .into_iter()
                .find(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                        String::from_utf8_lossy(&cmdline).contains(&work.display().to_string())
                    })
                })
                .expect("the pod's vmpod-vm")
        });
        let figures = subject.measure(mib, vmm_pid);
        let _ = subject.ctr(&["task", "kill", "-s", "SIGKILL", &subject.id]);
        std::thread::sleep(Duration::from_secs(3));
        let _ = subject.ctr(&["task", "rm", "-f", &subject.id]);
        let _ = subject.ctr(&["container", "rm", &subject.id]);
        results.push((runtime, mib, figures));
    }
    containerd.stop().expect("stop containerd");
    let _ = std::fs::remove_dir_all(&work);

    let runc = &results[0].2;
    println!("TCP between a busybox container and a peer namespace over a veth, same containerd 1.6, one run:");
    println!("| runtime | MiB moved each way | container -> peer MiB/s | peer -> container MiB/s | ICMP RTT ms (avg of 20) |");
    println!("| --- | --- | --- | --- | --- |");
    for (runtime, mib, figures) in &results {
        println!(
            "| {runtime} | {mib} | {} | {} | {:.3} |",
            significant(figures.to_peer_mib_s),
            significant(figures.from_peer_mib_s),
            figures.rtt_ms
        );
    }
    let vmpod = &results[1].2;
    println!(
        "vmpod / runc: throughput to the peer {}, from the peer {}; RTT {:.1}",
        significant(vmpod.to_peer_mib_s / runc.to_peer_mib_s),
        significant(vmpod.from_peer_mib_s / runc.from_peer_mib_s),
        vmpod.rtt_ms / runc.rtt_ms
    );
    if let Some((devices, all)) = vmpod.vmm_cpu_per_mib {
        println!(
            "vmpod-vm CPU per MiB moved: device thread {:.1} ms, whole process (with the guest's vCPU) {:.0} ms",
            devices * 1000.0,
            all * 1000.0
        );
    }
}
