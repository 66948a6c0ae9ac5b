#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds vmpod's guest kernel from Debian's linux-source-6.1: tinyconfig plus
# guest-kernel/vmpod.config, with the patches in guest-kernel/patches/.
#
# Output: ${VMPOD_CACHE:-/var/cache/vmpod}/guest-kernel/<key>/{vmlinux,bzImage}
# where <key> is a hash of the source package version, the config fragment and
# the patches; `.../guest-kernel/current` points at the latest one. A cached
# build is reused at once. The last line on stdout is the output directory:
#     dir=$(guest-kernel/build.sh | tail -n 1)
# Progress goes to stderr, build output to a log file in the cache.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
fragment=$here/vmpod.config
base=${VMPOD_CACHE:-/var/cache/vmpod}/guest-kernel
tarball=/usr/src/linux-source-6.1.tar.xz

log() { echo "guest-kernel: $*" >&2; }

# --- build dependencies (fast when present) --------------------------------
need=()
for pkg in linux-source-6.1 build-essential flex bison bc libelf-dev libssl-dev \
           cpio lz4 xz-utils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq "${need[@]}" >&2
fi

# --- cache key ---------------------------------------------------------------
shopt -s nullglob
patches=("$here"/patches/*.patch)
shopt -u nullglob
key=$(
    {
        printf 'linux-source-6.1 %s\n' "$(dpkg-query -W -f '${Version}' linux-source-6.1)"
        printf '== vmpod.config\n'
        cat "$fragment"
        for p in "${patches[@]}"; do
            printf '== %s\n' "$(basename "$p")"
            cat "$p"
        done
    } | sha256sum | cut -c1-16
)
out=$base/$key

finish() {
    ln -sfn "$key" "$base/current.tmp.$$"
    mv -T "$base/current.tmp.$$" "$base/current"
    echo "$out"
    exit 0
}

[[ -f $out/vmlinux && -f $out/bzImage ]] && finish

mkdir -p "$base"
# One build per cache at a time; a second caller waits and then reuses it.
exec 9>"$base/.lock"
flock 9
[[ -f $out/vmlinux && -f $out/bzImage ]] && finish

build=$base/build-$key
logfile=$base/build-$key.log
: >"$logfile"
fail() {
    log "FAILED: $*"
    log "last lines of $logfile:"
    tail -n 40 "$logfile" >&2 || true
    exit 1
}

start=$SECONDS
log "building $key (log: $logfile)"
# Source trees left behind by failed builds (~1.5 GB each); their logs stay.
find "$base" -mindepth 1 -maxdepth 1 -type d -name 'build-*' -exec rm -rf {} +
mkdir -p "$build"
tar -xf "$tarball" -C "$build" --strip-components=1 >>"$logfile" 2>&1 ||
    fail "extracting $tarball"
cd "$build"

for p in "${patches[@]}"; do
    log "applying $(basename "$p")"
    patch -p1 --forward --batch <"$p" >>"$logfile" 2>&1 || fail "patch $(basename "$p")"
done

mk=(make ARCH=x86_64 -j"$(nproc)")
{
    "${mk[@]}" tinyconfig &&
        scripts/kconfig/merge_config.sh -m .config "$fragment" &&
        "${mk[@]}" olddefconfig
} >>"$logfile" 2>&1 || fail "configuring"

# merge_config.sh only warns when a symbol's dependencies are missing: every
# symbol the fragment sets must be set exactly so, and every one it switches
# off must not be on.
missing=()
while IFS= read -r line; do
    if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
        grep -qxF -- "$line" .config || missing+=("$line (have: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" .config || echo unset))")
    elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
        if grep -qE "^${BASH_REMATCH[1]}=" .config; then
            missing+=("$line (have: $(grep -E "^${BASH_REMATCH[1]}=" .config))")
        fi
    fi
done <"$fragment"
if ((${#missing[@]})); then
    printf 'guest-kernel: not as required in .config: %s\n' "${missing[@]}" >&2
    exit 1
fi

log "compiling ($(nproc) jobs)"
"${mk[@]}" vmlinux bzImage >>"$logfile" 2>&1 || fail "make vmlinux bzImage"

tmp=$base/.out-$key.$$
rm -rf "$tmp"
mkdir -p "$tmp"
cp vmlinux "$tmp/vmlinux"
cp arch/x86/boot/bzImage "$tmp/bzImage"
cp .config "$tmp/config"
cp System.map "$tmp/System.map"
mv "$logfile" "$tmp/build.log"
rm -rf "$out"
mv -T "$tmp" "$out"
cd /
rm -rf "$build"
log "built in $((SECONDS - start)) s: $out"
finish
