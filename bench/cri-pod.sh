#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A pod through containerd 1.6's CRI plugin (RunPodSandbox, CreateContainer
# and StartContainer of `true`, until it exited): handler vmpod against
# runc in the same run, plus the host memory of one running vmpod pod.
# Run as root. VMPOD_BENCH_VMPOD_RUNS (default 3) and VMPOD_BENCH_RUNC_RUNS
# (5) set the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pod-env.sh
exec cargo bench -p vmpod-integration-tests --bench cri_pod
