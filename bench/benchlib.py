# SPDX-License-Identifier: Apache-2.0
"""What the Python benchmarks share: the repository's root, progress lines,
the guest artifacts from scripts/setup.sh and a release vmpod-vm."""

import os
import re
import shlex
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    """A progress line on stderr, named by the running script."""
    print(f"{os.path.basename(sys.argv[0])}: {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"error: {msg}")
    sys.exit(1)


def run_setup():
    """Runs scripts/setup.sh and returns its KEY=VALUE lines as a dict."""
    log("running scripts/setup.sh (guest kernel and initrds)")
    out = subprocess.run(
        [os.path.join(REPO, "scripts", "setup.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    values = {}
    for line in out.splitlines():
        m = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            # Same as the shell's eval of the line (values may be quoted).
            words = shlex.split(m.group(2)) or [""]
            values[m.group(1)] = words[0]
    return values


def build_vmm():
    log("building vmpod-vm (cargo build --release -p vmm)")
    subprocess.run(["cargo", "build", "--release", "-p", "vmm"], check=True, cwd=REPO, stdout=sys.stderr)
    return os.path.join(REPO, "target", "x86_64-unknown-linux-gnu", "release", "vmpod-vm")


def median(xs):
    """The median of the values that are not None; None without any."""
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
