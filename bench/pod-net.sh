#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# TCP throughput and ICMP round trips between a container and a peer network
# namespace: a vmpod pod (veth carried into the VM by tap + tc redirect)
# against a runc container in the same kind of namespace, same containerd,
# same run; and vmpod-vm's CPU per MiB moved. Run as root.
# VMPOD_BENCH_NET_VMPOD_MIB (default 2) and VMPOD_BENCH_NET_RUNC_MIB (256)
# set the MiB sent each way.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pod-env.sh
exec cargo bench -p vmpod-integration-tests --bench pod_net
