#!/usr/bin/env python3
"""Speed of the Python bindings beside their floors, measured in the same run.

    bench.py --qmp QMP_SOCKET [--rounds N] [--vol VOL]

1. A 4 KiB guest-physical read from Python (``vm.read``, shared RAM) beside the floor of
   returning 4 KiB to Python: a Python-level copy of a 4 KiB ``bytes`` (the faster of
   ``bytes(memoryview(b))`` and ``bytearray(b)``). Bar: at most 3x.
2. Volatility 3's ``linux.pslist`` on the live guest (``-f vmi://qemu?qmp=…``) beside the
   same plugin on a raw dump of that guest read from a file. Bar: at most 1.5x. Rounds
   alternate live and dump runs (one warm-up each, same symbol cache) so that load
   drifting on the machine hits both alike; medians are compared.

Run by ``cargo xtask bench -p vmi-tests --bench python`` (which boots the guest), or by
hand against any guest whose QEMU has a shared memory backend.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit

import vmi
import vmi.volatility


def per_call(stmt, number, repeat=7, **env):
    """Best time per call of `stmt` (seconds)."""
    return min(timeit.repeat(stmt, globals=env, number=number, repeat=repeat)) / number


def bench_read(vm):
    start, end = vm.memory_ranges()[0]
    gpa = start + min(0x100000, (end - start) // 2)
    b = vm.read(gpa, 4096)
    mv = memoryview(b)
    n = 200_000
    read = per_call("read(gpa, 4096)", n, read=vm.read, gpa=gpa)
    floor = min(
        per_call("bytes(mv)", n, mv=mv),
        per_call("bytearray(b)", n, b=b),
    )
    f = vm.physical_file()
    seek_read = per_call("seek(gpa); rd(4096)", n, seek=f.seek, rd=f.read, gpa=gpa)
    big = per_call("read(gpa, 1 << 20)", 500, read=vm.read, gpa=start)
    big_floor = per_call("bytes(mv)", 500, mv=memoryview(vm.read(start, 1 << 20)))
    small = per_call("read(gpa, 8)", n, read=vm.read, gpa=gpa)
    print(f"RAM access: {vm.ram_access}")
    print(f"8 B vm.read (per-call cost)   {small * 1e9:8.0f} ns")
    print(f"4 KiB vm.read                 {read * 1e9:8.0f} ns")
    print(f"4 KiB Python copy (floor)     {floor * 1e9:8.0f} ns")
    print(f"  ratio                       {read / floor:8.2f}x   (bar <= 3x)")
    print(f"4 KiB PhysicalFile seek+read  {seek_read * 1e9:8.0f} ns  (what Volatility calls)")
    print(f"1 MiB vm.read (GIL released)  {big * 1e6:8.1f} us  ({(1 << 20) / big / 1e9:.2f} GB/s)")
    print(f"1 MiB Python copy (floor)     {big_floor * 1e6:8.1f} us  ratio {big / big_floor:.2f}x")
    return read / floor


def vol_run(vol, location, symbols, cache, plugin="linux.pslist.PsList"):
    cmd = [vol, "--offline", "--quiet", "-r", "json", "--cache-path", cache,
           "-p", vmi.volatility.plugin_dir(), "-s", symbols, "-f", location, plugin]
    t = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    took = time.monotonic() - t
    if out.returncode != 0:
        sys.exit(f"vol {plugin} on {location} failed:\n{out.stderr[-3000:]}")
    return took, sorted((r["PID"], r["COMM"]) for r in json.loads(out.stdout))


def bench_volatility(qmp, vol, rounds, scratch):
    symbols = os.path.join(scratch, "symbols")
    cache = os.path.join(scratch, "cache")
    dump = os.path.join(scratch, "guest.raw")
    os.makedirs(cache)
    with vmi.open_qemu(qmp) as vm, vm.pause():
        vmi.volatility.write_isf(vm.linux(), symbols)
        ranges = vm.memory_ranges()
        with open(dump, "wb") as out:
            for s, e in ranges:
                out.seek(s)
                for at in range(s, e, 16 << 20):
                    out.write(vm.read(at, min(16 << 20, e - at)))
            out.truncate(max(e for _, e in ranges))
    live_url = f"vmi://qemu?qmp={qmp}"
    # Warm-up: schema validation cached, files in the page cache.
    vol_run(vol, dump, symbols, cache)
    vol_run(vol, live_url, symbols, cache)
    live, dumped = [], []
    for _ in range(rounds):
        t, live_tasks = vol_run(vol, live_url, symbols, cache)
        live.append(t)
        t, dump_tasks = vol_run(vol, dump, symbols, cache)
        dumped.append(t)
    lm, dm = statistics.median(live), statistics.median(dumped)
    print(f"vol linux.pslist, live guest  {lm:8.2f} s  (median of {rounds}; {min(live):.2f}-{max(live):.2f})")
    print(f"vol linux.pslist, raw dump    {dm:8.2f} s  (median of {rounds}; {min(dumped):.2f}-{max(dumped):.2f})")
    print(f"  ratio                       {lm / dm:8.2f}x   (bar <= 1.5x); {len(live_tasks)} tasks live, {len(dump_tasks)} in the dump")
    return lm / dm


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qmp", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--vol", default=os.path.join(os.path.dirname(sys.executable), "vol"))
    p.add_argument("--no-volatility", action="store_true")
    args = p.parse_args()
    with vmi.open_qemu(args.qmp) as vm:
        bench_read(vm)
    if not args.no_volatility:
        with tempfile.TemporaryDirectory(prefix="vmi-bench-") as scratch:
            bench_volatility(args.qmp, args.vol, args.rounds, scratch)


if __name__ == "__main__":
    main()
