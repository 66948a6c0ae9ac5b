#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds vmpod-test-init as a static binary and packs it as /init into an
# uncompressed cpio initrd for the VMM's guest boot tests:
#     rootfs/build-test-initrd.sh [output.cpio]   (default target/vmpod-test-initrd.cpio)
# Prints the initrd's path as the last line on stdout; cargo's output goes
# to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:-$repo/target/vmpod-test-initrd.cpio}
target=x86_64-unknown-linux-gnu

cd "$repo"
# Static (.cargo/config.toml) and stripped (the release profile in
# Cargo.toml): a smaller initrd is faster to unpack in the guest.
cargo build --release -p vmpod-test-init --target "$target" >&2
bin=$repo/target/$target/release/vmpod-test-init

# A dynamic binary would find no loader in the initrd.
if readelf -lW "$bin" | grep -q 'INTERP'; then
    echo "build-test-initrd: $bin is not static (has a PT_INTERP)" >&2
    exit 1
fi

"$here/build-initrd.sh" "$bin" "$out" >/dev/null
echo "$out"
