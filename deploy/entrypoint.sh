#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The vmpod DaemonSet's entrypoint (deploy/daemonset.yaml), run by the
# image's busybox sh: installs vmpod beneath the host's root, reports what
# the node lacks, then waits; on SIGTERM (or SIGINT) uninstalls and exits.
#   VMPOD_HOST_ROOT           the host's root as mounted here (/host)
#   VMPOD_RESTART_CONTAINERD  "true": restart containerd after each step
set -eu
root=${VMPOD_HOST_ROOT:-/host}
vmpod=/opt/vmpod/bin/vmpod
restart=
if [ "${VMPOD_RESTART_CONTAINERD:-true}" = true ]; then
    restart=--restart-containerd
fi
sleeper=

uninstall() {
    trap - TERM INT
    if [ -n "$sleeper" ]; then
        kill "$sleeper" 2>/dev/null || true
    fi
    echo "vmpod-deploy: uninstalling"
    status=0
    "$vmpod" uninstall --root "$root" $restart || status=$?
    exit "$status"
}

trap uninstall TERM INT
"$vmpod" install --root "$root" --from /opt/vmpod/bin --from /opt/vmpod/share $restart
# What the node still lacks goes to the pod's log; it does not stop the pod.
"$vmpod" check --root "$root" || true
echo "vmpod-deploy: installed; uninstalls on SIGTERM"
# SIGTERM interrupts the wait and runs uninstall, which exits; a sleep
# that fails by itself is an error, not a reason to spin.
while :; do
    sleep 3600 &
    sleeper=$!
    if ! wait "$sleeper"; then
        echo "vmpod-deploy: sleep failed" >&2
        exit 1
    fi
done
