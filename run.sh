#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# vmpod's main job: a command in a container in its own pod VM, run by the
# real containerd with the vmpod runtime (a private containerd the run starts
# and stops). Builds and installs what it needs first. The arguments are the
# command: `./run.sh` gives an interactive shell on a terminal (`uname -a`
# otherwise), `./run.sh sh -c 'ip addr; cat /proc/1/status'` runs that.
set -euo pipefail
cd "$(dirname "$0")"

setup=$(scripts/setup.sh)
eval "$setup"
export VMPOD_KERNEL_DIR VMPOD_TEST_INITRD VMPOD_TEST_INIT VMPOD_AGENT_INITRD
cargo build --release -p vmm -p containerd-shim-vmpod-v2 >&2
cargo build --release -p vmpod-integration-tests --example pod_run >&2
exec target/x86_64-unknown-linux-gnu/release/examples/pod_run "$@"
