#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# vmpod's main job, for now: build everything and boot the guest kernel in
# vmpod-vm with the console on this terminal. Extra arguments go to
# vmpod-vm (e.g. --vcpus 2, --memory 512, --cmdline "...").
set -euo pipefail
cd "$(dirname "$0")"

setup=$(scripts/setup.sh)
eval "$setup"
cargo build --release -p vmm >&2
exec target/x86_64-unknown-linux-gnu/release/vmpod-vm \
    --kernel "$VMPOD_KERNEL_DIR/vmlinux" \
    --initrd "$VMPOD_TEST_INITRD" \
    "$@"
