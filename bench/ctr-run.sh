#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# `ctr run --rm` of /bin/true under the real containerd: vmpod's shim (a pod
# VM per run; cold boots, then restores of a pod-VM template) against
# containerd's runc shim in the same run, plus the shim's and vmpod-vm's
# resident memory for one pod. Run as root.
# VMPOD_BENCH_VMPOD_RUNS (default 3: cold, and restored) and
# VMPOD_BENCH_RUNC_RUNS (10) set the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pod-env.sh
exec cargo bench -p vmpod-integration-tests --bench ctr_run
