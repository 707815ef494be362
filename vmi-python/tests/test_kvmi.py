"""The KVMi backend from Python, against kvmi-sim (our byte-compatible KVM-VMI host
simulator, a second process): CR3-write events, an event dropped unanswered is answered
by default (the simulated vCPU waits for each reply, so with one vCPU a second event
proves the first was answered), and pause + registers."""

import gc
import os
import subprocess

import pytest

import vmi


@pytest.fixture
def kvmi_vm(testguest, tmp_path):
    sim = testguest["kvmi_sim"]
    sock = tmp_path / "kvmi.sock"
    listener = vmi.KvmiListener(str(sock))
    proc = subprocess.Popen(
        [sim, "--socket", str(sock), "--vcpus", "1", "--duration", "30", "--rate", "unlimited"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        vm = listener.accept(30)
        yield vm
        vm.close()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, f"kvmi-sim failed: {out!r} {err!r}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cr3_events_and_a_dropped_event(kvmi_vm):
    vm = kvmi_vm
    assert vm.backend == "kvmi"
    caps = vm.capabilities()
    assert any(s == "yes" for s, _ in caps.values())
    with vm.monitor("cr3") as mon:
        ev = vm.wait_event(10)
        assert ev is not None and ev.kind == "register access"
        assert ev.details["register"] == "cr3"
        assert isinstance(ev.details["value"], int)
        del ev
        gc.collect()
        seen = 0
        for ev in vm.events(timeout=10, count=5):
            assert ev.details["register"] == "cr3"
            ev.reply()
            seen += 1
        assert seen == 5, "the vCPU stopped after the dropped event"
    assert not mon.active


def test_pause_and_registers(kvmi_vm):
    vm = kvmi_vm
    with vm.pause():
        regs = vm.registers(0)
        assert regs["rip"] == vm.register("rip")
        assert regs["cr3"] == vm.register("cr3")
        page = vm.read(vm.translate(regs["rip"]) & ~0xFFF, 4096)
        assert len(page) == 4096
        assert vm.read_va(regs["rip"] & ~0xFFF, 4096) == page


def test_memory_and_registers_over_kvmi_equal_the_rust_api(testguest, tmp_path):
    """kvmi-sim serving a dump of the test guest: what the Python KVMi session reads
    equals what the Rust API (vmi-dump) read from the same dump."""
    dump = testguest["dump"]
    sock = tmp_path / "kvmi-dump.sock"
    listener = vmi.KvmiListener(str(sock))
    proc = subprocess.Popen(
        [testguest["kvmi_sim"], "--socket", str(sock), "--from-dump", dump["path"], "--duration", "60"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        with listener.accept(30) as vm:
            gpa = int(testguest["pattern_phys"], 16)
            assert vm.read(gpa, 4096) == bytes.fromhex(dump["pattern_page"])
            with vm.pause():
                regs = vm.registers(0)
                for name, value in dump["registers"].items():
                    assert regs[name] == int(value, 16), name
                    assert vm.register(name) == int(value, 16), name
                site = int(testguest["site_1"], 16)
                assert vm.read_va(site, 64) == bytes.fromhex(testguest["site_1_code"])
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
