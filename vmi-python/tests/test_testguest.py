"""The bindings on the purpose-built test guest, against the Rust API's reads.

The guest loops at ``site_1`` with ``r12`` counting iterations; ``r13`` is never touched
by the guest: the Rust harness wrote ``rust_r13`` into it before this run, and this run
writes ``python_r13``, which the harness reads back afterwards."""

import gc
import mmap
import time

import pytest

import vmi


def h(x):
    return int(x, 16) if isinstance(x, str) else x


@pytest.fixture
def vm(testguest):
    with vmi.open_qemu(testguest["qmp"], gdb=testguest["gdb"], writable=True) as vm:
        yield vm


def ram(testguest, gpa, size):
    """Guest RAM read straight from QEMU's shared memory file (a third reader)."""
    with open(testguest["ram_path"], "rb") as f:
        with mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            return bytes(m[gpa : gpa + size])


def test_opens_with_shared_ram_and_reports_capabilities(vm):
    assert vm.backend == "legacy"
    assert vm.ram_access == "shared"
    caps = vm.capabilities()
    assert caps, "an empty capability report"
    assert all(s in ("yes", "partial", "no") for s, _ in caps.values())
    assert all(r for s, r in caps.values() if s == "no"), "an unsupported row without reason"
    assert vm.capability_report().strip()
    assert vm.vcpu_count() >= 1


def test_physical_memory_equals_the_rust_api(vm, testguest):
    gpa = h(testguest["pattern_phys"])
    want = bytes.fromhex(testguest["pattern_page"])
    assert vm.read(gpa, 4096) == want
    assert vm.read(gpa, 4096) == ram(testguest, gpa, 4096)
    assert vm.read_u64(gpa) == int.from_bytes(want[:8], "little")
    assert vm.read_u32(gpa + 4) == int.from_bytes(want[4:8], "little")
    assert vm.read_u8(gpa) == want[0]
    assert vm.read_cstr(gpa) == want.split(b"\0")[0]
    assert vm.read_cstr(gpa).startswith(b"VMI-TESTGUEST-PATTERN")
    # A large read crosses pages and releases the GIL.
    big = vm.read(gpa & ~0xFFFF, 1 << 20)
    assert big == ram(testguest, gpa & ~0xFFFF, 1 << 20)
    f = vm.physical_file()
    assert f.seek(gpa) == gpa and f.read(4096) == want and f.tell() == gpa + 4096
    assert f.seek(0, 2) == f.size > gpa


def test_virtual_memory_equals_the_rust_api(vm, testguest):
    site = h(testguest["site_1"])
    code = bytes.fromhex(testguest["site_1_code"])
    with vm.pause():
        assert vm.translate(site) == site - h(testguest["high"])
        assert vm.read_va(site, len(code)) == code
        cr3 = vm.register("cr3")
        assert vm.read_va(site, len(code), cr3=cr3) == code
        assert vm.read_va_u64(site) == int.from_bytes(code[:8], "little")


def test_registers_equal_the_rust_api_and_writes_reach_it(vm, testguest):
    with vm.pause():
        regs = vm.registers(0)
        assert regs["r13"] == h(testguest["rust_r13"])
        for name in ("cr0", "cr4", "efer", "gdtr_base", "idtr_base", "cs"):
            assert regs[name] == h(testguest["registers"][name]), name
        assert regs.cr3 in (h(testguest["pml4_a"]), h(testguest["pml4_b"]))
        assert vm.register("r13") == regs.r13
        assert vm.register("RIP") == regs["rip"]
        assert "rip" in regs and "rip" in regs.keys() and dict(regs.items())["rax"] == regs.rax
        assert regs.get("no-such-register") is None
        with pytest.raises(KeyError):
            vm.register("no-such-register")
        vm.set_register("r13", h(testguest["python_r13"]))
        assert vm.register("r13") == h(testguest["python_r13"])
        assert vm.registers(0)["r12"] == regs["r12"], "the guest ran while paused"


def test_physical_and_virtual_writes_land_in_guest_ram(vm, testguest):
    gpa = h(testguest["pattern_phys"]) + 4088
    va = gpa  # the guest identity-maps its first 8 MiB (2 MiB pages)
    orig = vm.read(gpa, 8)
    with vm.pause():
        assert vm.translate(va) == gpa
        vm.write_u64(gpa, 0x1122334455667788)
        assert ram(testguest, gpa, 8) == (0x1122334455667788).to_bytes(8, "little")
        vm.write_va(va, orig)  # restored through the page tables
        assert ram(testguest, gpa, 8) == orig
        assert vm.read_va(va, 8) == orig


def test_pause_context_manager_resumes_on_exception(vm):
    assert not vm.is_paused
    with pytest.raises(RuntimeError, match="inside"):
        with vm.pause() as p:
            assert vm.is_paused and p.active
            r12 = vm.register("r12")
            time.sleep(0.2)
            assert vm.register("r12") == r12
            raise RuntimeError("inside the pause")
    assert not p.active
    assert not vm.is_paused
    # The loop runs again: r12 counts on.
    with vm.pause():
        before = vm.register("r12")
    time.sleep(0.3)
    with vm.pause():
        assert vm.register("r12") != before
    # A pause collected without being resumed resumes too.
    p = vm.pause()
    assert vm.is_paused
    del p
    gc.collect()
    assert not vm.is_paused


def test_breakpoint_events_and_handle_removal(vm, testguest):
    site = h(testguest["site_1"])
    code = ram(testguest, site - h(testguest["high"]), 8)
    with vm.breakpoint(site) as bp:
        r12 = []
        for ev in vm.events(timeout=20, count=3):
            assert ev.kind == "breakpoint"
            assert ev.details["gla"] == site
            assert ev.registers["rip"] == site
            r12.append(ev.registers.r12)
            ev.reply()
            assert ev.answered
            with pytest.raises(vmi.VmiError):
                ev.reply()
        assert len(r12) == 3 and r12[1] == r12[0] + 1 and r12[2] == r12[1] + 1
    assert not bp.active
    assert ram(testguest, site - h(testguest["high"]), 8) == code, "a 0xCC left in RAM"


def test_an_event_dropped_unanswered_gets_the_default_answer(vm, testguest):
    site = h(testguest["site_1"])
    with vm.breakpoint(site):
        ev = vm.wait_event(20)
        assert ev is not None and not ev.answered
        first = ev.registers.r12
        del ev
        gc.collect()
        # The vCPU went on: the next hit is the next iteration.
        with vm.wait_event(20) as ev2:
            assert ev2.registers.r12 == first + 1
        assert ev2.answered
        # Still going after the with block answered it.
        ev3 = vm.wait_event(20)
        assert ev3.registers.r12 == first + 2
        ev3.reply("continue")


def test_errors_are_typed(vm, testguest):
    with pytest.raises(vmi.UnmappedPhysical) as e:
        vm.read(1 << 45, 16)
    assert e.value.address == 1 << 45 and "not backed" in str(e.value)
    with vm.pause():
        with pytest.raises(vmi.PageFault) as e:
            vm.read_va(0x7000_0000_0000, 8)
        assert e.value.address == 0x7000_0000_0000
    with pytest.raises(vmi.Unsupported) as e:
        vm.monitor("cr3")
    assert e.value.reason
    assert isinstance(e.value, vmi.VmiError)
    vm.close()
    with pytest.raises(vmi.Disconnected):
        vm.read(0, 1)
