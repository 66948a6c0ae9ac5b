// SPDX-License-Identifier: Apache-2.0
//! What the seccomp filters cost vmpod-vm at start: compiling the built-in
//! JSON into the three BPF programs (it happens once per launch, before the
//! VM is built).
#![allow(clippy::tests_outside_test_module)]

use criterion::{criterion_group, criterion_main, Criterion};
use vmm::seccomp::SeccompFilters;

fn bench_compile(c: &mut Criterion) {
    c.bench_function("seccomp/compile_builtin", |b| {
        b.iter(|| SeccompFilters::builtin().expect("built-in filters compile"));
    });
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
