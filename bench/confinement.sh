#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# What the jail costs, confined (vmpod-jailer) against unconfined, in the
# same run. Run as root on a host with /dev/kvm, from anywhere:
#
#   bench/confinement.sh [tiny|ctr]   (both without an argument)
#
# 1. launch -> first guest instruction: bench/boot.py's tiny PVH guest
#    (its first instruction writes '!' to COM1, then it resets), ms from just
#    before the spawn to the '!' on the console, vmpod-vm alone against
#    vmpod-vm under vmpod-jailer (a fresh jail root, id lease, cgroup and
#    namespaces each run), interleaved, medians of VMPOD_BENCH_TINY_RUNS
#    (default 20) after a warm-up each.
# 2. a pod's `ctr run --rm true` under the real containerd
#    (tests/benches/ctr_run.rs, as bench/ctr-run.sh runs it), once with the
#    shim's default (jailed) and once with `unconfined = true`;
#    VMPOD_BENCH_VMPOD_RUNS (default 1) pods each, VMPOD_BENCH_RUNC_RUNS
#    (default 3) runc runs each for scale.
# Figures, not a test: exit status 0 once every measurement was taken.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pod-env.sh
bin=target/x86_64-unknown-linux-gnu/release
part=${1:-all}

if [ "$part" != ctr ]; then
echo "== 1. launch -> first guest instruction (ms), unconfined vs jailed"
python3 - "$bin" "${VMPOD_BENCH_TINY_RUNS:-20}" <<'PY'
import os, shutil, statistics, subprocess, sys, tempfile
sys.path.insert(0, "bench")
import boot  # the tiny guest and the timed run of bench/boot.py

bin_dir, runs = sys.argv[1], int(sys.argv[2])
vmm = os.path.abspath(os.path.join(bin_dir, "vmpod-vm"))
jailer = os.path.abspath(os.path.join(bin_dir, "vmpod-jailer"))
work = tempfile.mkdtemp(prefix="vmpod-bench-jail-")
elf = os.path.join(work, "tiny.elf")
with open(elf, "wb") as f:
    f.write(boot.tiny_elf(boot.tiny_code(0)))
cgroup = f"/vmpod-bench-{os.getpid()}/tiny"

def unconfined():
    return boot.vmpod_tiny_cmd(vmm, elf, "host")

def jailed():
    return [jailer, "--exec-file", vmm, "--root", os.path.join(work, "root"),
            "--ids", "2000000000-2000000009", "--lock-dir", os.path.join(work, "ids"),
            "--cgroup", cgroup, "--address-space", str(boot.MEMORY_MIB + 584),
            "--ro-bind", f"{elf}:/kernel", "--"] + boot.vmpod_tiny_cmd("x", "/kernel", "host")[1:]

res = {"unconfined": [], "jailed": []}
for kind, cmd in (("unconfined", unconfined), ("jailed", jailed)):
    boot.check_vmpod_tiny(boot.timed_run(cmd()))  # warm-up
for _ in range(runs):
    for kind, cmd in (("unconfined", unconfined), ("jailed", jailed)):
        run = boot.timed_run(cmd())
        boot.check_vmpod_tiny(run)
        res[kind].append(run["first"])
u, j = statistics.median(res["unconfined"]), statistics.median(res["jailed"])
print(f"unconfined  median {u:7.2f} ms  (min {min(res['unconfined']):.2f})")
print(f"jailed      median {j:7.2f} ms  (min {min(res['jailed']):.2f})")
print(f"the jail adds {j - u:.2f} ms ({j / u:.2f}x), {runs} runs each")
for hierarchy in subprocess.run(["sh", "-c", "grep -E ' - cgroup2? ' /proc/self/mountinfo | cut -d' ' -f5"],
                                capture_output=True, text=True).stdout.split():
    for d in (os.path.join(hierarchy, cgroup.lstrip("/")), os.path.join(hierarchy, os.path.dirname(cgroup).lstrip("/"))):
        try:
            os.rmdir(d)
        except OSError:
            pass
shutil.rmtree(work)
PY
fi
[ "$part" = tiny ] && exit 0

echo "== 2. ctr run --rm true, jailed (the default) then unconfined"
export VMPOD_BENCH_VMPOD_RUNS="${VMPOD_BENCH_VMPOD_RUNS:-1}" VMPOD_BENCH_RUNC_RUNS="${VMPOD_BENCH_RUNC_RUNS:-3}"
echo "-- jailed"
VMPOD_BENCH_CONFIG="" cargo bench -p vmpod-integration-tests --bench ctr_run
echo "-- unconfined"
VMPOD_BENCH_CONFIG="unconfined = true" cargo bench -p vmpod-integration-tests --bench ctr_run
