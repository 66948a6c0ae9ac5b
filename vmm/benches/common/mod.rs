// SPDX-License-Identifier: Apache-2.0
//! Runs a device benchmark twice, as the device thread runs it: on a thread
//! without a seccomp filter, and on a thread under the built-in `devices`
//! filter (the same BPF the kernel evaluates on every system call of
//! vmpod-vm's device thread). The thread owns the device and times a batch
//! of requests itself (`iter_custom`), so criterion's own I/O stays on the
//! unfiltered main thread.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::BenchmarkGroup;
use seccompiler::BpfProgram;
use vmm::seccomp::{
    install_filter, install_sigsys_handler, SeccompFilters, ThreadKind, ThreadLabel,
};

/// A thread that owns `state` and runs `step` on it in timed batches.
struct Worker<S> {
    batches: mpsc::Sender<u64>,
    times: mpsc::Receiver<Duration>,
    thread: std::thread::JoinHandle<S>,
}

impl<S: Send + 'static> Worker<S> {
    fn start(filter: Option<BpfProgram>, mut state: S, step: fn(&mut S)) -> Self {
        let (batches, batch_rx) = mpsc::channel::<u64>();
        let (time_tx, times) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            if let Some(filter) = filter {
                install_filter(&filter, ThreadLabel::DEVICES).expect("install the filter");
            }
            while let Ok(iterations) = batch_rx.recv() {
                let started = Instant::now();
                for _ in 0..iterations {
                    step(&mut state);
                }
                if time_tx.send(started.elapsed()).is_err() {
                    break;
                }
            }
            state
        });
        Worker {
            batches,
            times,
            thread,
        }
    }

    fn run(&self, iterations: u64) -> Duration {
        self.batches.send(iterations).expect("worker alive");
        self.times.recv().expect("worker alive")
    }

    fn finish(self) -> S {
        drop(self.batches);
        self.thread.join().expect("worker panicked")
    }
}

/// Benchmarks `step` as `name` without a filter and as `name/seccomp`
/// under the `devices` filter; returns the state for checks afterwards.
pub fn with_and_without_filter<S: Send + 'static>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    state: S,
    step: fn(&mut S),
) -> S {
    install_sigsys_handler().expect("SIGSYS handler");
    let filter = SeccompFilters::builtin()
        .expect("built-in filters")
        .of(ThreadKind::Devices)
        .clone();
    let mut state = state;
    for (label, filter) in [
        (name.to_string(), None),
        (format!("{name}/seccomp"), Some(filter)),
    ] {
        let worker = Worker::start(filter, state, step);
        group.bench_function(label, |b| {
            b.iter_custom(|iterations| worker.run(iterations))
        });
        state = worker.finish();
    }
    state
}
