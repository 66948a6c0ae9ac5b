#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Everything both top-level commands need on a fresh Debian bookworm host:
# packages, the guest kernel (cached), the test initrd. Prints `KEY=VALUE`
# lines for the built artifacts on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for pkg in build-essential flex bison bc libelf-dev libssl-dev cpio \
           linux-source-6.1 file util-linux e2fsprogs iproute2 busybox-static \
           containerd bsdutils python3-yaml containernetworking-plugins \
           protobuf-compiler; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "setup: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${need[@]}" >&2
fi

echo "setup: guest kernel (cached after the first build)" >&2
kernel_dir=$(guest-kernel/build.sh | tail -n 1)
echo "setup: test initrd" >&2
initrd=$(rootfs/build-test-initrd.sh "$PWD/target/vmpod-test-initrd.cpio" | tail -n 1)
echo "setup: agent initrd" >&2
agent_initrd=$(rootfs/build-agent-initrd.sh "$PWD/target/vmpod-agent-initrd.cpio" | tail -n 1)

echo "VMPOD_KERNEL_DIR=$kernel_dir"
echo "VMPOD_TEST_INITRD=$initrd"
echo "VMPOD_TEST_INIT=$PWD/target/x86_64-unknown-linux-gnu/release/vmpod-test-init"
echo "VMPOD_AGENT_INITRD=$agent_initrd"
