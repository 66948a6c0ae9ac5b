#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Boot benchmark: vmpod-vm against QEMU's `microvm` machine, in the same run.

Run from the repository root, as root on a host with /dev/kvm:

    bench/boot.py [--kernel-dir DIR] [--initrd PATH] [--runs N] [--slow-runs K]

Without --kernel-dir/--initrd it runs `scripts/setup.sh` (packages, guest
kernel, test initrd) and takes VMPOD_KERNEL_DIR / VMPOD_TEST_INITRD from its
output. It builds `vmpod-vm` (`cargo build --release -p vmm`) unless --vmm
names a binary, and installs Debian's qemu-system-x86 with apt if
`qemu-system-x86_64` is missing.

What it measures (each for vmpod-vm and for QEMU microvm, then vmpod/QEMU):

1. launch -> first guest instruction: a tiny PVH ELF written by this script
   (one PT_LOAD at 0x100000, a Xen PVH note with entry 0x100000) whose
   32-bit code is
       mov dx, 0x3f8; mov al, '!'; out dx, al  ; first instruction: a byte on COM1
       mov al, 0;  out 0xf4, al          ; QEMU isa-debug-exit: QEMU exits, status 1
       mov byte [0xc0000000], 123        ; vmpod boot timer (logged by the VMM)
       mov al, 0xfe; out 0x64, al        ; i8042 reset: vmpod exits, status 0
       hlt; jmp $-1
   Wall ms from just before the spawn to the '!' on the VMM's stdout (the
   serial console) is launch -> first guest instruction. vmpod-vm logs its
   own process CPU time when the guest writes the boot timer, three
   instructions later: the CPU ms. The whole run to wait4 (wall, and the
   child's user+sys) is shown too. Median of --runs runs (default 20), the
   two VMMs interleaved, after one untimed warm-up run each. Both guests get
   256 MiB. QEMU is checked to really run the guest: a separate ELF writes 5
   to the debug-exit port, which must end QEMU with status (5 << 1) | 1 = 11,
   and every timed run must end with status 1, print '!' and nothing on
   stderr.
2. launch -> `vmpod-test-init: started` on the serial console, wall seconds:
   the guest kernel's vmlinux (PVH) and the test initrd, with the same
   command line for both (vmpod gets it with --cpu-template host, so it
   adds nothing). --slow-runs runs (default 1); each takes about a minute on
   hosts that emulate guest CPL0. A run that does not print the line within
   --timeout seconds (default 300) is killed and reported as a timeout.
3. VMM resident memory excluding guest RAM, MiB: /proc/PID/smaps sampled
   every 0.5 s during benchmark 2 (max over the samples taken while the
   guest RAM mapping exists), and the total RSS.

Exit status: 0 when every measurement was taken (targets met or not), 1 when
a VMM failed or timed out.
"""

import argparse
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import REPO, build_vmm, die, log, median, run_setup


MEMORY_MIB = 256
INIT_LINE = "vmpod-test-init: started"
# The same line for both VMMs; vmpod adds nothing to it with --cpu-template
# host. The switches after panic=1 keep the guest off instructions that
# emulating KVM hosts cannot run (see docs/kvm-hosts.md, "What a Linux guest needs there").
CMDLINE = "console=ttyS0 reboot=k panic=1 noxsave clearcpuid=smap,smep,pku,xsave,popcnt,cx16"

QEMU = "qemu-system-x86_64"
# -cpu host alone aborts on these hosts ("failed to set MSR 0x10a",
# IA32_ARCH_CAPABILITIES, which KVM here refuses); dropping that one feature
# is enough.
QEMU_CPU = "host,-arch-capabilities"
# microvm options for the fastest direct PVH boot. qboot (microvm's
# firmware) loads the PVH ELF from fw_cfg itself, so option ROMs are not
# needed. No ACPI tables, no PCIe, no USB, no RTC, and no virtio-mmio
# switches appended to the command line (there are no virtio devices, and
# the command line must be the one vmpod gets).
QEMU_MICROVM_COMMON = (
    "microvm,x-option-roms=off,rtc=off,acpi=off,pcie=off,usb=off,"
    "auto-kernel-cmdline=off"
)
# The tiny guest needs only the serial port its first instruction writes to.
QEMU_MICROVM_TINY = QEMU_MICROVM_COMMON + ",pit=off,pic=off"
# Linux gets the 8250 UART (console) and keeps the PIT and PIC, as in vmpod
# (vmpod-vm provides PIC, PIT, IO-APIC and LAPIC in KVM, and a 16550).
QEMU_MICROVM_LINUX = QEMU_MICROVM_COMMON

TARGET_FIRST_INSN_MS = 5.0
TARGET_RSS_MIB = 3.0


# --- set-up --------------------------------------------------------------


def ensure_qemu():
    if shutil.which(QEMU):
        return
    log(f"{QEMU} missing; installing qemu-system-x86 with apt")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=sys.stderr)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "qemu-system-x86"],
        check=True,
        env=env,
        stdout=sys.stderr,
    )
    if not shutil.which(QEMU):
        die(f"{QEMU} still missing after installing qemu-system-x86")


# --- the tiny PVH guest --------------------------------------------------

ENTRY = 0x100000


def tiny_code(exit_value):
    return bytes(
        [0x66, 0xBA, 0xF8, 0x03, 0xB0, 0x21, 0xEE]  # mov dx, 0x3f8; mov al, '!'; out dx, al
        + [0xB0, exit_value, 0xE6, 0xF4]  # mov al, exit_value; out 0xf4, al
        + [0xC6, 0x05, 0x00, 0x00, 0x00, 0xC0, 123]  # mov byte [0xc0000000], 123
        + [0xB0, 0xFE, 0xE6, 0x64]  # mov al, 0xfe; out 0x64, al
        + [0xF4, 0xEB, 0xFD]  # hlt; jmp $-1 (back to the hlt)
    )


def tiny_elf(code):
    """A 64-bit ELF executable with a PVH entry: PT_LOAD + PT_NOTE."""
    ehsize, phentsize, phnum = 64, 56, 2
    phoff = ehsize
    # Xen PVH note: namesz 4, descsz 4, type 18 (XEN_ELFNOTE_PHYS32_ENTRY),
    # name "Xen\0", desc = the 32-bit entry point.
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", ENTRY)
    note_off = phoff + phentsize * phnum
    code_off = 0x1000
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELFCLASS64, LSB, v1
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        0x3E,  # EM_X86_64
        1,
        ENTRY,
        phoff,
        0,  # no section headers
        0,
        ehsize,
        phentsize,
        phnum,
        0,
        0,
        0,
    )
    load = struct.pack("<IIQQQQQQ", 1, 5, code_off, ENTRY, ENTRY, len(code), len(code), 0x1000)  # R+X
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    data = ehdr + load + pnote + note
    return data + bytes(code_off - len(data)) + code


# --- benchmark 1 ---------------------------------------------------------


def qemu_tiny_cmd(elf):
    return [
        QEMU, "-M", QEMU_MICROVM_TINY, "-enable-kvm", "-cpu", QEMU_CPU,
        "-m", str(MEMORY_MIB), "-nodefaults", "-no-user-config", "-nographic",
        "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-kernel", elf,
    ]  # fmt: skip


def vmpod_tiny_cmd(vmm, elf, template):
    return [vmm, "--kernel", elf, "--memory", str(MEMORY_MIB), "--serial", "stdout", "--cpu-template", template]


def timed_run(cmd):
    """Runs cmd to completion: {"first", "wall", "cpu", "rc", "out", "err"}.

    first: ms from just before the spawn to the first byte on its stdout
    (the tiny guest's first instruction writes it to the serial port), or
    None; wall: ms to wait4; cpu: the child's user+sys ms.
    """
    with tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        head = os.read(p.stdout.fileno(), 1)
        first = (time.monotonic() - t0) * 1000 if head else None
        out = head + p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        wall = (time.monotonic() - t0) * 1000
        p.returncode = os.waitstatus_to_exitcode(status)  # reaped already
        p.stdout.close()
        err.seek(0)
        return {
            "first": first,
            "wall": wall,
            "cpu": (ru.ru_utime + ru.ru_stime) * 1000,
            "rc": p.returncode,
            "out": out.decode(errors="replace"),
            "err": err.read().decode(errors="replace"),
        }


BOOT_TIMER_RE = re.compile(r"guest boot completed ([\d.]+) ms after launch, ([\d.]+) CPU ms")


def check_vmpod_tiny(run):
    m = BOOT_TIMER_RE.search(run["err"])
    if run["rc"] != 0 or not m or run["out"] != "!":
        die(
            f"vmpod-vm tiny guest: exit status {run['rc']}, console {run['out']!r}, "
            f"boot timer line {'found' if m else 'missing'}:\n{run['err']}"
        )
    return float(m.group(1)), float(m.group(2))


def check_qemu_tiny(run, want):
    if run["rc"] != want or run["err"].strip() or run["out"] != "!":
        die(
            f"QEMU tiny guest: exit status {run['rc']} (want {want} from isa-debug-exit), "
            f"console {run['out']!r}, stderr:\n{run['err']}"
        )


def bench_first_insn(vmm, workdir, runs, template):
    tiny = os.path.join(workdir, "tiny.elf")
    verify = os.path.join(workdir, "tiny-exit5.elf")
    with open(tiny, "wb") as f:
        f.write(tiny_elf(tiny_code(0)))
    with open(verify, "wb") as f:
        f.write(tiny_elf(tiny_code(5)))

    # QEMU exits with status 1 for many failures too: prove once that the
    # guest's own write ends it, with a status only the guest can cause.
    check_qemu_tiny(timed_run(qemu_tiny_cmd(verify)), (5 << 1) | 1)
    log("QEMU microvm runs the tiny PVH guest (isa-debug-exit value 5 -> status 11)")

    # Warm-up (page cache, dynamic loader), not counted.
    check_vmpod_tiny(timed_run(vmpod_tiny_cmd(vmm, tiny, template)))
    check_qemu_tiny(timed_run(qemu_tiny_cmd(tiny)), 1)

    res = {k: {"first": [], "wall": [], "cpu": [], "timer": [], "timer_cpu": []} for k in ("vmpod", "qemu")}
    for i in range(runs):
        for kind, cmd in (("vmpod", vmpod_tiny_cmd(vmm, tiny, template)), ("qemu", qemu_tiny_cmd(tiny))):
            run = timed_run(cmd)
            if kind == "vmpod":
                timer, timer_cpu = check_vmpod_tiny(run)
                res[kind]["timer"].append(timer)
                res[kind]["timer_cpu"].append(timer_cpu)
            else:
                check_qemu_tiny(run, 1)
            for key in ("first", "wall", "cpu"):
                res[kind][key].append(run[key])
    log(f"benchmark 1: {runs} runs each done")
    return res


# --- memory sampling -----------------------------------------------------

MAP_HDR_RE = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) (\S+) (\S+) (\d+)\s*(.*)$")


def read_smaps(pid):
    """[(size KiB, rss KiB, anonymous?, header)] for every mapping of pid."""
    maps = []
    with open(f"/proc/{pid}/smaps") as f:
        cur = None
        for line in f:
            m = MAP_HDR_RE.match(line)
            if m:
                path = m.group(7).strip()
                # Anonymous: no backing file (inode 0) and no pseudo-name
                # such as [heap], [stack], [vdso].
                cur = {"size": 0, "rss": 0, "anon": m.group(6) == "0" and path == "", "hdr": line.strip()}
                maps.append(cur)
            elif cur is not None and line.startswith("Size:"):
                cur["size"] = int(line.split()[1])
            elif cur is not None and line.startswith("Rss:"):
                cur["rss"] = int(line.split()[1])
    return maps


def guest_ram_mappings(maps, kind):
    """The mappings that back guest RAM, identified by shape.

    vmpod-vm (vm-memory) mmaps each guest memory region as one anonymous
    private mapping of exactly the region's size; a 256 MiB guest lies
    below the 3 GiB MMIO gap, so it is one region: one anonymous mapping of
    exactly 256 MiB. QEMU allocates its RAM block ("microvm.ram") with
    qemu_ram_mmap(), also one anonymous mapping: the size of the RAM, or a
    little more when it keeps an alignment remainder or a guard page, hence
    "at least 256 MiB". Nothing else in either process comes near that size
    anonymously: glibc's per-thread malloc arenas reserve at most 64 MiB
    (and show up as an rw part plus a PROT_NONE part), thread stacks are
    8 MiB, and the binaries and libraries are file-backed. QEMU's small ROM
    blocks (qboot, 128 KiB) are guest-visible memory too but are counted as
    VMM overhead here.
    """
    want = MEMORY_MIB * 1024
    if kind == "vmpod":
        return [m for m in maps if m["anon"] and m["size"] == want]
    return [m for m in maps if m["anon"] and m["size"] >= want]


class MemSampler(threading.Thread):
    """Samples /proc/PID/smaps every 0.5 s until stopped."""

    def __init__(self, pid, kind):
        super().__init__(daemon=True)
        self.pid, self.kind = pid, kind
        self.stop = threading.Event()
        self.samples = []  # (t, rss excl. guest KiB, total rss KiB, guest mappings)

    def run(self):
        while not self.stop.is_set():
            try:
                maps = read_smaps(self.pid)
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                maps = None
            if maps:
                guest = guest_ram_mappings(maps, self.kind)
                total = sum(m["rss"] for m in maps)
                if len(guest) == 1:  # the VM exists (and is not torn down)
                    excl = total - guest[0]["rss"]
                    self.samples.append((time.monotonic(), excl, total, guest[0]["hdr"]))
                elif len(guest) > 1:
                    log(f"{self.kind}: {len(guest)} mappings look like guest RAM; sample skipped")
            self.stop.wait(0.5)


# --- benchmark 2 and 3 ---------------------------------------------------


def vmpod_linux_cmd(vmm, kernel, initrd):
    return [
        vmm, "--kernel", kernel, "--initrd", initrd, "--cmdline", CMDLINE,
        "--cpu-template", "host", "--memory", str(MEMORY_MIB), "--vcpus", "1",
        "--serial", "stdout",
    ]  # fmt: skip


def qemu_linux_cmd(kernel, initrd):
    return [
        QEMU, "-M", QEMU_MICROVM_LINUX, "-enable-kvm", "-cpu", QEMU_CPU,
        "-m", str(MEMORY_MIB), "-smp", "1", "-nodefaults", "-no-user-config",
        "-nographic", "-serial", "stdio", "-no-reboot",
        # microvm has no keyboard controller: without one the guest's
        # reboot=k reset never reaches QEMU, and the fallback (triple fault
        # through int3) stops in an emulation failure on emulating hosts,
        # which leaves QEMU paused instead of exiting.
        "-device", "i8042",
        "-kernel", kernel, "-initrd", initrd, "-append", CMDLINE,
    ]  # fmt: skip


def linux_run(cmd, kind, timeout, console_log):
    """One Linux boot: {"init_s", "rc", "mem", "timer_ms", "error"}."""
    res = {"init_s": None, "rc": None, "mem": [], "timer_ms": None, "error": None}
    with tempfile.TemporaryFile() as err, open(console_log, "wb") as clog:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        sampler = MemSampler(p.pid, kind)
        sampler.start()
        timed_out = threading.Event()

        def kill():
            timed_out.set()
            p.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            for raw in p.stdout:
                now = time.monotonic() - t0
                clog.write(b"[%9.3f] " % now + raw)
                clog.flush()
                if res["init_s"] is None and INIT_LINE in raw.decode(errors="replace"):
                    res["init_s"] = now
                    log(f"{kind}: '{INIT_LINE}' after {now:.2f} s")
            p.wait()
        finally:
            timer.cancel()
            sampler.stop.set()
            sampler.join()
        res["rc"] = p.returncode
        res["mem"] = sampler.samples
        err.seek(0)
        errtext = err.read().decode(errors="replace")
        m = BOOT_TIMER_RE.search(errtext)
        if m:
            res["timer_ms"] = float(m.group(1))
        if res["init_s"] is None:
            res["error"] = "timeout" if timed_out.is_set() else f"exited with status {p.returncode} before the init line"
            log(f"{kind}: {res['error']}; console log: {console_log}; stderr tail:\n{errtext[-2000:]}")
        elif kind == "vmpod" and p.returncode != 0 and not timed_out.is_set():
            log(f"{kind}: note: exit status {p.returncode} after the init line; stderr tail:\n{errtext[-2000:]}")
    return res


def bench_linux(vmm, kernel, initrd, runs, timeout, workdir):
    res = {"vmpod": [], "qemu": []}
    for i in range(runs):
        for kind, cmd in (("vmpod", vmpod_linux_cmd(vmm, kernel, initrd)), ("qemu", qemu_linux_cmd(kernel, initrd))):
            clog = os.path.join(workdir, f"console-{kind}-{i}.log")
            log(f"benchmark 2: {kind} Linux boot {i + 1}/{runs} (about a minute on emulating hosts)")
            res[kind].append(linux_run(cmd, kind, timeout, clog))
    return res


# --- report --------------------------------------------------------------


def fmt(v, digits):
    return "n/a" if v is None else f"{v:.{digits}f}"


def ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel-dir", help="guest kernel directory holding vmlinux (default: from scripts/setup.sh)")
    ap.add_argument("--initrd", help="test initrd (default: from scripts/setup.sh)")
    ap.add_argument("--runs", type=int, default=20, help="runs of benchmark 1 per VMM (default 20)")
    ap.add_argument("--slow-runs", type=int, default=1, help="Linux boots per VMM (default 1; 0 skips 2 and 3)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds before a Linux boot is killed (default 300)")
    ap.add_argument("--vmm", help="use this vmpod-vm binary instead of building it")
    ap.add_argument(
        "--tiny-cpu-template",
        default="auto",
        help="vmpod CPU template for benchmark 1 (default auto, as users get it: includes the ~1 ms CPL0 probe)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work directory (console logs, tiny ELFs)")
    args = ap.parse_args()
    if args.runs < 1 or args.slow_runs < 0:
        die("--runs must be >= 1 and --slow-runs >= 0")

    os.chdir(REPO)
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        die("/dev/kvm is missing or not accessible")
    ensure_qemu()

    kernel_dir, initrd = args.kernel_dir, args.initrd
    if args.slow_runs and (kernel_dir is None or initrd is None):
        env = run_setup()
        kernel_dir = kernel_dir or env.get("VMPOD_KERNEL_DIR")
        initrd = initrd or env.get("VMPOD_TEST_INITRD")
        if not kernel_dir or not initrd:
            die("scripts/setup.sh did not print VMPOD_KERNEL_DIR and VMPOD_TEST_INITRD")
    kernel = os.path.join(kernel_dir, "vmlinux") if kernel_dir else None
    if args.slow_runs:
        for path in (kernel, initrd):
            if not os.path.isfile(path):
                die(f"{path} does not exist")

    vmm = os.path.abspath(args.vmm) if args.vmm else build_vmm()
    workdir = tempfile.mkdtemp(prefix="vmpod-bench-")

    log(f"benchmark 1: launch -> first guest instruction, {args.runs} runs each")
    first = bench_first_insn(vmm, workdir, args.runs, args.tiny_cpu_template)
    linux = bench_linux(vmm, kernel, initrd, args.slow_runs, args.timeout, workdir) if args.slow_runs else None

    # ---- table ----
    v1, q1 = first["vmpod"], first["qemu"]
    rows = []
    vf, qf = median(v1["first"]), median(q1["first"])
    vw, qw = median(v1["wall"]), median(q1["wall"])
    vc, qc = median(v1["cpu"]), median(q1["cpu"])
    vt, vtc = median(v1["timer"]), median(v1["timer_cpu"])

    def target(val, limit, unit):
        if val is None:
            return f"<= {limit:g} {unit}: n/a"
        return f"<= {limit:g} {unit}: {'met' if val <= limit else 'NOT met'}"

    rows.append(
        (
            "1. launch -> first insn (serial byte), wall ms",
            fmt(vf, 1),
            fmt(qf, 1),
            ratio(vf, qf),
            target(vf, TARGET_FIRST_INSN_MS, "ms"),
        )
    )
    rows.append(
        (
            "   vmpod boot timer: main() -> insn, wall ms",
            fmt(vt, 1),
            "-",
            "-",
            "",
        )
    )
    rows.append(
        (
            "   vmpod CPU ms at the first insn",
            fmt(vtc, 1),
            "-",
            "-",
            target(vtc, TARGET_FIRST_INSN_MS, "CPU ms"),
        )
    )
    rows.append(("   whole run incl. teardown, wall ms", fmt(vw, 1), fmt(qw, 1), ratio(vw, qw), ""))
    rows.append(("   whole run incl. teardown, CPU ms", fmt(vc, 1), fmt(qc, 1), ratio(vc, qc), ""))
    failed = False
    if linux is not None:
        vi = [r["init_s"] for r in linux["vmpod"]]
        qi = [r["init_s"] for r in linux["qemu"]]
        failed = any(r["error"] for r in linux["vmpod"] + linux["qemu"])

        def init_cell(rs):
            vals = [r["init_s"] for r in rs]
            med = median(vals)
            errs = [r["error"] for r in rs if r["error"]]
            cell = fmt(med, 2) if med is not None else "none"
            if errs:
                cell += f" ({len(errs)} failed: {errs[0]})"
            return cell

        vm, qm = median(vi), median(qi)
        if vm is None or qm is None or any(v is None for v in vi + qi):
            t2 = "< QEMU: n/a (a run failed)"
        else:
            t2 = f"< QEMU: {'met' if vm < qm else 'NOT met'}"
        rows.append(("2. launch -> init's first line, wall s", init_cell(linux["vmpod"]), init_cell(linux["qemu"]), ratio(vm, qm), t2))
        vtimer = median([r["timer_ms"] for r in linux["vmpod"]])
        rows.append(("   vmpod boot timer (init wrote it), s", fmt(vtimer / 1000 if vtimer else None, 2), "-", "-", ""))

        def mem(rs, idx):
            vals = [s[idx] for r in rs for s in r["mem"]]
            return max(vals) / 1024 if vals else None

        ve, qe = mem(linux["vmpod"], 1), mem(linux["qemu"], 1)
        vtot, qtot = mem(linux["vmpod"], 2), mem(linux["qemu"], 2)
        rows.append(("3. VMM RSS excl. guest RAM, MiB (max)", fmt(ve, 2), fmt(qe, 2), ratio(ve, qe), target(ve, TARGET_RSS_MIB, "MiB")))
        rows.append(("   total RSS incl. guest RAM, MiB (max)", fmt(vtot, 2), fmt(qtot, 2), ratio(vtot, qtot), ""))
        nsamples = {k: sum(len(r["mem"]) for r in linux[k]) for k in linux}
        gmap = {k: next((s[3] for r in linux[k] for s in r["mem"]), "none") for k in linux}

    header = ("metric", "vmpod", "QEMU microvm", "vmpod/QEMU", "target (issue)")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    line = " | ".join

    print()
    print(f"vmpod-vm vs QEMU microvm ({subprocess.run([QEMU, '--version'], stdout=subprocess.PIPE, text=True).stdout.splitlines()[0]})")
    print(f"guest: {MEMORY_MIB} MiB, 1 vCPU; benchmark 1: median of {args.runs} runs; benchmark 2: {args.slow_runs} run(s) each")
    print()
    print(line(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(str(c).ljust(w) for c, w in zip(r, widths)))
    print()
    print("Notes:")
    print("- 1: a tiny PVH guest whose first instruction writes '!' to COM1 and which then exits;")
    print("  wall from just before the spawn to that byte on the VMM's stdout, and to wait4 (whole run).")
    print("  CPU at the first instruction: vmpod's own CLOCK_PROCESS_CPUTIME_ID when the guest writes the")
    print("  boot timer (its 3rd instruction); whole-run CPU = child's user+sys from wait4.")
    print(f"  vmpod-vm --cpu-template {args.tiny_cpu_template}" + (" (includes the CPL0 probe)" if args.tiny_cpu_template == "auto" else ""))
    print(f"  QEMU: -M {QEMU_MICROVM_TINY} -cpu {QEMU_CPU}")
    print(f"  vmpod wall ms min/max: {min(v1['wall']):.1f}/{max(v1['wall']):.1f}; QEMU: {min(q1['wall']):.1f}/{max(q1['wall']):.1f}")
    if linux is not None:
        print(f"- 2: same vmlinux and initrd, command line for both: {CMDLINE}")
        print(f"  QEMU: -M {QEMU_MICROVM_LINUX} -cpu {QEMU_CPU} -no-reboot -device i8042")
        print(f"  exit status: vmpod {[r['rc'] for r in linux['vmpod']]}, QEMU {[r['rc'] for r in linux['qemu']]}")
        print(f"- 3: /proc/PID/smaps every 0.5 s during benchmark 2 ({nsamples['vmpod']} vmpod / {nsamples['qemu']} QEMU samples);")
        print("  Rss summed over all mappings except the guest RAM mapping:")
        print(f"  vmpod:  {gmap['vmpod']}")
        print(f"  QEMU:   {gmap['qemu']}")
        print("  Rss counts shared library pages too (vmpod-vm is static, QEMU dynamically linked).")
    if args.keep or failed:
        print(f"- work directory (console logs): {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
