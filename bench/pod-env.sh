# SPDX-License-Identifier: Apache-2.0
# Sourced by the benchmarks that run pods: from the repository's root, builds
# the guest artifacts (scripts/setup.sh), exports where they are, and builds
# the release shim, vmpod-vm and vmpod-jailer the benchmarks run.
setup=$(scripts/setup.sh)
eval "$setup"
export VMPOD_KERNEL_DIR VMPOD_TEST_INITRD VMPOD_TEST_INIT VMPOD_AGENT_INITRD
cargo build --release -p containerd-shim-vmpod-v2 -p vmm -p vmpod-jailer
