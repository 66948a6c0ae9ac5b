#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the vmpod DaemonSet's image (deploy/daemonset.yaml) from the built
# artifacts as an OCI image archive — an OCI image layout (oci-layout,
# index.json, blobs/sha256/) in a tar — without docker or a registry:
#
#   deploy/build-image.sh [OUTPUT.tar]   # default target/vmpod-deploy-image.tar
#
# Import it on a node with `ctr -n k8s.io images import OUTPUT.tar`, or push
# it to a registry with skopeo (`oci-archive:OUTPUT.tar`). One layer:
#   /opt/vmpod/bin/   vmpod, vmpod-vm, vmpod-jailer, containerd-shim-vmpod-v2
#   /opt/vmpod/share/ vmlinux, vmpod-agent-initrd.cpio
#   /opt/vmpod/entrypoint.sh, /bin/busybox (sh, sleep), /host (the mount point)
# Every executable must be static: the image has no libc. The archive is
# reproducible (sorted, owner 0, mtime 0, gzip without a name or time).
#
# Where the artifacts come from (environment):
#   VMPOD_BIN_DIR       the binaries (target/x86_64-unknown-linux-gnu/release)
#   VMPOD_KERNEL_DIR    vmlinux's directory (${VMPOD_CACHE:-/var/cache/vmpod}/guest-kernel/current)
#   VMPOD_AGENT_INITRD  the agent initrd (target/vmpod-agent-initrd.cpio)
#   VMPOD_BUSYBOX       a static busybox (/bin/busybox, Debian's busybox-static)
#   VMPOD_IMAGE_NAME    the image's name (localhost/vmpod-deploy:latest)
# Prints the archive's path as the last line on stdout.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/target/vmpod-deploy-image.tar}
bin_dir=${VMPOD_BIN_DIR:-$repo/target/x86_64-unknown-linux-gnu/release}
kernel=${VMPOD_KERNEL_DIR:-${VMPOD_CACHE:-/var/cache/vmpod}/guest-kernel/current}/vmlinux
initrd=${VMPOD_AGENT_INITRD:-$repo/target/vmpod-agent-initrd.cpio}
busybox=${VMPOD_BUSYBOX:-/bin/busybox}
name=${VMPOD_IMAGE_NAME:-localhost/vmpod-deploy:latest}
binaries=(vmpod vmpod-vm vmpod-jailer containerd-shim-vmpod-v2)

fail() {
    echo "build-image: $*" >&2
    exit 1
}
# An executable without a program interpreter is static.
static() {
    local headers
    headers=$(LC_ALL=C readelf -lW "$1" 2>/dev/null) || return 1
    [[ $headers != *INTERP* ]]
}

[[ $name =~ ^[a-z0-9][a-z0-9._/-]*(:[A-Za-z0-9_.-]+)?$ ]] || fail "VMPOD_IMAGE_NAME $name is not an image name"
[[ $name == *:* ]] || name=$name:latest
for binary in "${binaries[@]}"; do
    [[ -f $bin_dir/$binary ]] || fail "$bin_dir/$binary is missing (cargo build --release)"
    static "$bin_dir/$binary" || fail "$bin_dir/$binary is not static"
done
[[ -f $kernel ]] || fail "$kernel is missing (scripts/setup.sh builds the guest kernel)"
[[ -f $initrd ]] || fail "$initrd is missing (scripts/setup.sh builds the agent initrd)"
[[ -f $busybox ]] || fail "$busybox is missing (apt-get install busybox-static)"
static "$busybox" || fail "$busybox is not static"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,host,opt/vmpod/bin,opt/vmpod/share} "$work/oci/blobs/sha256"
for binary in "${binaries[@]}"; do
    install -m 0755 "$bin_dir/$binary" "$rootfs/opt/vmpod/bin/"
done
install -m 0644 "$kernel" "$initrd" "$rootfs/opt/vmpod/share/"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
ln -s busybox "$rootfs/bin/sh"
ln -s busybox "$rootfs/bin/sleep"
install -m 0755 "$repo/deploy/entrypoint.sh" "$rootfs/opt/vmpod/entrypoint.sh"

# A reproducible tar of DIR's ENTRIES into OUT.
reproducible_tar() {
    local dir=$1 out=$2
    shift 2
    tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
        --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
        -C "$dir" -cf "$out" "$@"
}
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
# Moves FILE into the blobs under its digest; prints the digest.
add_blob() {
    local digest
    digest=$(sha "$1")
    mv "$1" "$work/oci/blobs/sha256/$digest"
    echo "$digest"
}

reproducible_tar "$rootfs" "$work/layer.tar" bin host opt
diff_id=$(sha "$work/layer.tar")
gzip -n -6 "$work/layer.tar"
layer_size=$(size "$work/layer.tar.gz")
layer=$(add_blob "$work/layer.tar.gz")

printf '%s' '{"created":"1970-01-01T00:00:00Z","architecture":"amd64","os":"linux",'\
'"config":{"Env":["PATH=/opt/vmpod/bin:/bin","VMPOD_HOST_ROOT=/host","VMPOD_RESTART_CONTAINERD=true"],'\
'"Entrypoint":["/opt/vmpod/entrypoint.sh"],"WorkingDir":"/"},'\
'"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]},'\
'"history":[{"created":"1970-01-01T00:00:00Z","created_by":"deploy/build-image.sh"}]}' >"$work/config.json"
config_size=$(size "$work/config.json")
config=$(add_blob "$work/config.json")

printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'\
'"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'"$config"'","size":'"$config_size"'},'\
'"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:'"$layer"'","size":'"$layer_size"'}]}' >"$work/manifest.json"
manifest_size=$(size "$work/manifest.json")
manifest=$(add_blob "$work/manifest.json")

printf '%s' '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'\
'"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:'"$manifest"'","size":'"$manifest_size"','\
'"platform":{"architecture":"amd64","os":"linux"},'\
'"annotations":{"io.containerd.image.name":"'"$name"'","org.opencontainers.image.ref.name":"'"${name##*:}"'"}}]}' >"$work/oci/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"

mkdir -p "$(dirname "$out")"
reproducible_tar "$work/oci" "$out.tmp" oci-layout index.json blobs
mv "$out.tmp" "$out"
echo "build-image: $name, manifest sha256:$manifest" >&2
echo "$out"
