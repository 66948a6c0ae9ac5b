#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Create + start + wait of /bin/true: vmpod-agent on this host against runc
# and crun (Debian's packages) on the same bundle, in one run. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for pkg in runc crun busybox-static; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
exec cargo bench -p vmpod-agent --bench lifecycle
