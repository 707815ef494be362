"""The Python examples (vmi-python/examples) on the test guest and kvmi-sim."""

import os
import subprocess
import sys
import time

import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def h(x):
    return int(x, 16) if isinstance(x, str) else x


def example(name, *args, timeout=120):
    out = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, name), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, f"{name}: {out.stdout}\n{out.stderr}"
    return out.stdout


def test_dump_memory_writes_ram_at_its_addresses(testguest, tmp_path):
    dump = tmp_path / "dump.raw"
    out = example("dump_memory.py", testguest["qmp"], dump)
    assert "wrote" in out
    gpa = h(testguest["pattern_phys"])
    with open(dump, "rb") as f:
        f.seek(gpa)
        assert f.read(4096) == bytes.fromhex(testguest["pattern_page"])


def test_breakpoint_prints_each_hit(testguest):
    site = h(testguest["site_1"])
    out = example("breakpoint.py", testguest["qmp"], testguest["gdb"], f"{site:x}", "--hits", "3")
    hits = [l for l in out.splitlines() if l.startswith("hit ")]
    assert len(hits) == 3, out
    r12 = [int(l.split("r12 ")[1], 16) for l in hits]
    assert all(f"rip {site:#x}" in l for l in hits), out
    assert r12[1] == r12[0] + 1 and r12[2] == r12[1] + 1, out
    assert "breakpoint removed" in out


def test_cr3_event_over_kvmi(testguest, tmp_path):
    sock = tmp_path / "kvmi.sock"
    tool = subprocess.Popen(
        [sys.executable, os.path.join(EXAMPLES, "cr3_event.py"), str(sock), "--count", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )
    sim = None
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert tool.poll() is None, tool.communicate()
            assert time.monotonic() < deadline, "cr3_event.py never listened"
            time.sleep(0.05)
        sim = subprocess.Popen(
            [testguest["kvmi_sim"], "--socket", str(sock), "--vcpus", "1", "--duration", "20"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        out, err = tool.communicate(timeout=60)
        assert tool.returncode == 0, out + err
        lines = [l for l in out.splitlines() if "CR3" in l]
        assert len(lines) == 5, out
    finally:
        for p in (tool, sim):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
