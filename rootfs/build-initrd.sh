#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds an uncompressed newc cpio initrd around one static init binary:
#     rootfs/build-initrd.sh <init-binary> <output.cpio>
# Contents: /init (the binary, mode 0755), the directories /dev, /proc and
# /sys, and the device node /dev/console (char 5,1) so that the kernel can
# give init its console before devtmpfs is mounted. Uncompressed on purpose:
# decompressing in the guest kernel is slow where guest CPL0 is emulated.
# Needs root (mknod). Prints the output path as the last line on stdout.
set -euo pipefail

if (($# != 2)); then
    echo "usage: $0 <init-binary> <output.cpio>" >&2
    exit 2
fi
init=$1
out=$2
[[ -f $init ]] || { echo "build-initrd: no such file: $init" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/dev" "$root/proc" "$root/sys"
chmod 0755 "$root" "$root/dev" "$root/proc" "$root/sys"
install -m 0755 "$init" "$root/init"
mknod -m 0600 "$root/dev/console" c 5 1

mkdir -p "$(dirname "$out")"
# Reproducible: fixed order, owner root, fixed mtimes.
touch -h -d @0 "$root/init" "$root/dev/console" "$root/dev" "$root/proc" "$root/sys" "$root"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio --quiet -o -H newc -R 0:0 --reproducible) >"$work/initrd.cpio"
mv "$work/initrd.cpio" "$out"
echo "$out"
