#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# All of vmpod's checks: formatting, lints, unit tests, real-KVM tests and
# the Linux boot tests. Installs and builds what they need first.
set -euo pipefail
cd "$(dirname "$0")"

# An assignment, not `eval "$(...)"`, so that a failing setup stops here.
setup=$(scripts/setup.sh)
eval "$setup"
export VMPOD_KERNEL_DIR VMPOD_TEST_INITRD VMPOD_TEST_INIT VMPOD_AGENT_INITRD
# Built and installed here, a missing guest artifact or agent prerequisite
# is a failure, not a skip.
export VMPOD_REQUIRE_GUEST=1 VMPOD_REQUIRE_AGENT=1

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --all-targets
# The fuzz targets (run with cargo fuzz on nightly) must keep building.
cargo check --manifest-path fuzz/Cargo.toml --bins
cargo test --workspace -- --nocapture 2>&1 | tee target/test.log
