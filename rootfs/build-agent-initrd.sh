#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds vmpod-agent as a static binary and packs it as /init into the pod
# VM's uncompressed cpio initrd:
#     rootfs/build-agent-initrd.sh [output.cpio]   (default target/vmpod-agent-initrd.cpio)
# Prints the initrd's path as the last line on stdout; cargo's output goes
# to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:-$repo/target/vmpod-agent-initrd.cpio}
target=x86_64-unknown-linux-gnu

cd "$repo"
# Static (.cargo/config.toml) and stripped (the release profile): the guest
# has no libc, and a smaller initrd unpacks faster.
cargo build --release -p vmpod-agent --target "$target" >&2
bin=$repo/target/$target/release/vmpod-agent
if readelf -lW "$bin" | grep -q 'INTERP'; then
    echo "build-agent-initrd: $bin is not static (has a PT_INTERP)" >&2
    exit 1
fi
"$here/build-initrd.sh" "$bin" "$out" >/dev/null
echo "$out"
