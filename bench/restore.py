#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Restore benchmark: pod VMs restored from one snapshot against cold boots, in the same run.

Run from the repository root, as root on a host with /dev/kvm:

    bench/restore.py [--restores N] [--cold N] [--vmm PATH] [--timeout S]

It runs `scripts/setup.sh` (guest kernel, agent initrd) and builds
`vmpod-vm` (`cargo build --release -p vmm`) unless --vmm names a binary.
Every VM is a pod VM as the shim launches it, unjailed: the agent initrd,
256 MiB, one vCPU, the shim's kernel command line, vsock, a virtio-fs share
and virtio-rng.

What it measures:

1. Cold boot, launch -> the agent accepting on its vsock port (1024): the
   `CONNECT 1024` of vmpod's hybrid vsock answered `OK`, which the VMM
   sends only once the guest accepted. This is the template VM's boot.
2. Snapshot: the template is paused and snapshotted through `--api` (wall
   time of the PUT), the memory file's size on disk.
3. Restore, --restores VMs launched one after the other from that snapshot,
   each with its own socket, share and console, all kept running:
   launch -> the API answers `Running` (the restored vCPU runs), and
   launch -> the agent accepting. Medians.
4. Memory: the summed PSS (/proc/PID/smaps_rollup) of the --restores
   restored VMs, idle, against that of --cold VMs booted cold at the same
   time (in parallel, once the restored VMs are stopped) and idle. PSS
   divides a shared page among its users, so the sum is the host memory
   the set costs.

The figures are printed side by side with their ratios. Exit status 0 when
every measurement was taken, 1 when a VM failed or timed out.
"""

import argparse
import os
import socket
import subprocess
import tempfile
import time

from benchlib import REPO, build_vmm, die, log, median, run_setup

AGENT_PORT = 1024
AGENT_LOG_PORT = 1025
CMDLINE = f"console=ttyS0 reboot=k panic=1 vmpod.log_port={AGENT_LOG_PORT}"


class Vm:
    """One pod VM's files and process."""

    def __init__(self, work, name):
        self.dir = os.path.join(work, name)
        os.makedirs(os.path.join(self.dir, "share"))
        self.vsock = os.path.join(self.dir, "v.sock")
        self.api = os.path.join(self.dir, "api.sock")
        self.proc = None
        self.launched = None
        # The agent sends its logs to the host's port 1025: a listener
        # that takes and drops them, as the shim's would forward them.
        self.log_listener = socket.socket(socket.AF_UNIX)
        self.log_listener.bind(f"{self.vsock}_{AGENT_LOG_PORT}")
        self.log_listener.listen(4)
        self.log_listener.setblocking(False)

    def args(self, vmm, kernel, initrd):
        return [
            vmm, "--kernel", kernel, "--initrd", initrd, "--memory", "256", "--cmdline", CMDLINE,
            "--vsock", f"cid=3,socket={self.vsock}", "--fs", f"tag=vmpod,dir={self.dir}/share",
            "--rng", "--serial", f"file:{self.dir}/console", "--api", f"unix:{self.api}",
        ]

    def spawn(self, cmd):
        err = open(os.path.join(self.dir, "vmm.log"), "w")
        self.launched = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def fail(self, what):
        tail = open(os.path.join(self.dir, "vmm.log")).read()[-2000:]
        die(f"{self.dir}: {what}; vmm.log ends:\n{tail}")

    def api_call(self, method, path, body=""):
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(120)
        s.connect(self.api)
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        answer = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
        s.close()
        head, _, payload = answer.decode().partition("\r\n\r\n")
        return int(head.split()[1]), payload

    def wait_running(self, timeout):
        """Seconds from launch to the API answering Running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.fail("vmpod-vm ended")
            try:
                status, body = self.api_call("GET", "/vm")
                if status == 200 and "Running" in body:
                    return time.monotonic() - self.launched
            except OSError:
                pass
            time.sleep(0.001)
        self.fail("the API never answered")

    def wait_agent(self, timeout):
        """Seconds from launch to the agent accepting on its port."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                self.fail("vmpod-vm ended before the agent accepted")
            try:
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(5)
                s.connect(self.vsock)
                s.sendall(f"CONNECT {AGENT_PORT}\n".encode())
                answer = s.recv(64)
                s.close()
                if answer.startswith(b"OK "):
                    return time.monotonic() - self.launched
            except OSError:
                pass
            time.sleep(0.002 if time.monotonic() - self.launched < 1 else 0.1)
        self.fail(f"the agent did not accept within {timeout} s")

    def pss_kib(self):
        with open(f"/proc/{self.proc.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
        return 0

    def stop(self):
        if self.alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait()
        self.log_listener.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--restores", type=int, default=10, help="VMs restored from the snapshot (default 10)")
    ap.add_argument("--cold", type=int, default=10, help="VMs booted cold in parallel for the memory figure (default 10)")
    ap.add_argument("--vmm", help="use this vmpod-vm binary instead of building it")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a boot may take (default 900)")
    a = ap.parse_args()
    if os.geteuid() != 0:
        die("run as root")
    values = run_setup()
    kernel = os.path.join(values["VMPOD_KERNEL_DIR"], "vmlinux")
    initrd = values["VMPOD_AGENT_INITRD"]
    vmm = a.vmm or build_vmm()
    work = tempfile.mkdtemp(prefix="vmpod-restore-bench-")
    vms = []
    try:
        log("booting the template VM cold")
        template = Vm(work, "template")
        vms.append(template)
        template.spawn(template.args(vmm, kernel, initrd))
        cold_boot = template.wait_agent(a.timeout)
        snapshot = os.path.join(work, "snapshot")
        status, body = template.api_call("PATCH", "/vm", '{"state":"Paused"}')
        if status != 204:
            die(f"pause: {status} {body}")
        started = time.monotonic()
        status, body = template.api_call("PUT", "/snapshot/create", f'{{"snapshot_dir":"{snapshot}"}}')
        snapshot_s = time.monotonic() - started
        if status != 204:
            die(f"snapshot: {status} {body}")
        memory_mib = os.stat(os.path.join(snapshot, "memory")).st_blocks * 512 / 2**20
        template.stop()

        log(f"restoring {a.restores} VMs")
        running, serving, restored = [], [], []
        for i in range(a.restores):
            vm = Vm(work, f"restored{i}")
            restored.append(vm)
            vms.append(vm)
            vm.spawn(vm.args(vmm, kernel, initrd) + ["--restore", snapshot])
            running.append(vm.wait_running(60))
            serving.append(vm.wait_agent(60))
        time.sleep(2)
        restored_pss = sum(vm.pss_kib() for vm in restored) / 1024
        # Stopped before the cold boots, which idle VMs would slow down on
        # a small host.
        for vm in restored:
            vm.stop()

        log(f"booting {a.cold} VMs cold in parallel")
        cold = []
        for i in range(a.cold):
            vm = Vm(work, f"cold{i}")
            cold.append(vm)
            vms.append(vm)
            vm.spawn(vm.args(vmm, kernel, initrd))
        cold_serving = [vm.wait_agent(a.timeout) for vm in cold]
        time.sleep(2)
        cold_pss = sum(vm.pss_kib() for vm in cold) / 1024
    finally:
        for vm in vms:
            vm.stop()
        subprocess.run(["rm", "-rf", work])

    restore_serving = median(serving)
    print(f"{'metric':58} | {'restored':>10} | {'cold boot':>10} | ratio")
    print(f"{'-' * 58} | {'-' * 10} | {'-' * 10} | -----")
    print(f"{'launch -> vCPU running, ms (median)':58} | {median(running) * 1000:10.1f} | {'':>10} |")
    print(
        f"{'launch -> agent accepting, ms (median; cold: one boot)':58} | {restore_serving * 1000:10.1f} | "
        f"{cold_boot * 1000:10.1f} | {restore_serving / cold_boot:.4f}"
    )
    print(
        f"{f'summed PSS, MiB ({a.restores} restored, {a.cold} cold)':58} | {restored_pss:10.1f} | "
        f"{cold_pss:10.1f} | {restored_pss / cold_pss if cold_pss else float('nan'):.3f}"
    )
    print(f"{'cold boots in parallel, launch -> agent accepting, s (median)':58} | {'':>10} | {median(cold_serving):10.1f} |")
    print(f"snapshot: {snapshot_s * 1000:.0f} ms to write, memory file {memory_mib:.1f} MiB on disk")
    print("targets: restore -> agent serving within 50 ms of VMM and agent work; restored PSS at most half of cold")


if __name__ == "__main__":
    main()
