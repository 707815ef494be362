"""vmi-linux from Python and Volatility 3 on the live Linux guest.

Ground truth comes from the Rust harness: the guest's own ``/proc`` (``ps``) and
``/proc/modules``, read on its serial console, and the Rust API's process list. Those
were taken at other moments than this run's, so the comparisons with them use the
tasks alive at every moment (the guest's init starts a short-lived ``sleep`` every
second); within one pause the comparisons are exact."""

import contextlib
import io
import json
import os
import subprocess
import sys
import time

import pytest

import vmi
import vmi.volatility


def h(x):
    return int(x, 16) if isinstance(x, str) else x


def leaders(processes):
    return {p.pid: (p.ppid, p.comm) for p in processes}


@pytest.fixture
def vm(linuxguest):
    # QEMU serves one QMP client at a time: a session per test, closed after it.
    with vmi.open_qemu(linuxguest["qmp"]) as vm:
        yield vm


@pytest.fixture(scope="module")
def symbol_dir(linuxguest, tmp_path_factory):
    d = tmp_path_factory.mktemp("symbols")
    with vmi.open_qemu(linuxguest["qmp"]) as vm, vm.pause():
        vmi.volatility.write_isf(vm.linux(), str(d))
    return str(d)


def test_linux_awareness_matches_the_guest(vm, linuxguest):
    ps = {t["pid"]: t for t in linuxguest["ps"] if t["pid"] == t["tgid"]}
    rust = {p["pid"]: p for p in linuxguest["rust_processes"]}
    with vm.pause():
        linux = vm.linux()
        assert linux.banner == linuxguest["banner"]
        assert linux.symbol("linux_banner") == h(linuxguest["linux_banner"])
        assert linux.symbol_at(linux.symbol("linux_banner") + 3) == ("linux_banner", 3)
        with pytest.raises(vmi.LinuxError):
            linux.symbol("no_such_symbol_anywhere")
        banner = vm.read_va(linux.symbol("linux_banner"), 13, cr3=linux.kernel_cr3)
        assert banner == b"Linux version"
        procs = linux.processes()
        init = linux.object("task_struct", linux.symbol("init_task"))
        assert init.read_uint("pid") == 0 and init["pid"] == 0
        assert init.read_cstr("comm").startswith("swapper")
        modules = linux.modules()
        dmesg = linux.dmesg()
        cmdline1 = linux.cmdline(1)
        p1 = linux.process(1)
        if p1.pgd is not None and not p1.kernel_thread:
            # User memory by pid: the start of the argument string of pid 1.
            arg_start = linux.object("task_struct", p1.task).deref("mm", "mm_struct").read_uint("arg_start")
            assert linux.read_cstr(1, arg_start).decode() == cmdline1[0]
            assert linux.read(1, arg_start, len(cmdline1[0])) == cmdline1[0].encode()
    ours = leaders(procs)
    assert all(p.pid == p.tgid for p in procs)
    # Alive at all three moments: equal in every field compared.
    stable = set(ours) & set(ps) & set(rust)
    assert len(stable) > 20, sorted(stable)
    names = {p.pid: p.name for p in procs}
    for pid in stable:
        assert ours[pid] == (rust[pid]["ppid"], rust[pid]["comm"]), pid
        assert ours[pid][0] == ps[pid]["ppid"], pid
        # A kworker's name carries the workqueue it runs now, which changes.
        if not names[pid].startswith("kworker/"):
            assert names[pid] == ps[pid]["comm"], pid
    assert ps[1]["cmdline"] == cmdline1
    assert sorted(m.name for m in modules) == sorted(linuxguest["modules"])
    assert any(r.text.startswith("Linux version") for r in dmesg)
    assert linux.symbols()["linux_banner"] == linux.symbol("linux_banner")


def run_vol_in_process(url, symbol_dir, cache, plugin, *extra):
    """Volatility's own command line, run in this process (so it reads the session this
    process holds, paused); returns the JSON rows, flattened."""
    from volatility3.cli import CommandLine

    argv = ["vol", "--offline", "--quiet", "-r", "json", "--cache-path", cache,
            "-p", vmi.volatility.plugin_dir(), "-s", symbol_dir, "-f", url, plugin, *extra]
    out = io.StringIO()
    old = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out):
            try:
                CommandLine().run()
            except SystemExit as e:
                assert not e.code, f"vol {plugin} exited {e.code}"
    finally:
        sys.argv = old
    return flatten(json.loads(out.getvalue()))


def flatten(rows):
    out = []
    for r in rows:
        children = r.pop("__children", [])
        out.append(r)
        out.extend(flatten(children))
    return out


def test_volatility_in_process_equals_vmi_linux(vm, symbol_dir, vol_cache):
    url = vmi.volatility.attach(vm, "inprocess")
    with vm.pause():
        linux = vm.linux()
        procs = linux.processes()
        modules = linux.modules()
        cmdlines = {p.pid: linux.cmdline(p.pid) for p in procs if not p.kernel_thread}
        pslist = run_vol_in_process(url, symbol_dir, vol_cache, "linux.pslist.PsList")
        lsmod = run_vol_in_process(url, symbol_dir, vol_cache, "linux.lsmod.Lsmod")
        psaux = run_vol_in_process(url, symbol_dir, vol_cache, "linux.psaux.PsAux")
        # bash history from each bash's heap: the guest's shell is busybox, so the plugin
        # must run through every process and find none.
        bash = run_vol_in_process(url, symbol_dir, vol_cache, "linux.bash.Bash")
    assert bash == []
    # One pause: exactly the same tasks (Volatility starts after init_task, pid 0).
    procs = [p for p in procs if p.pid != 0]
    vol = {r["PID"]: (r["PPID"], r["COMM"]) for r in pslist}
    assert vol == leaders(procs)
    assert len(pslist) == len(procs)
    assert {r["TID"] for r in pslist} == {p.pid for p in procs}
    mask = (1 << 48) - 1
    assert {r["OFFSET (V)"] & mask for r in pslist} == {p.task & mask for p in procs}
    assert sorted(r["Module Name"] for r in lsmod) == sorted(m.name for m in modules)
    # psaux reads each process's own memory (its argument strings).
    args = {r["PID"]: r["ARGS"] for r in psaux}
    for pid, cmd in cmdlines.items():
        if cmd:
            assert args[pid] == " ".join(cmd), pid


def guest_runs(qmp):
    """Whether the guest's jiffies advance over half a second."""
    with vmi.open_qemu(qmp) as vm:
        with vm.pause():
            linux = vm.linux()
            jiffies, cr3 = linux.symbol("jiffies"), linux.kernel_cr3
            j0 = vm.read_va_u64(jiffies, cr3=cr3)
        time.sleep(0.5)
        with vm.pause():
            return vm.read_va_u64(jiffies, cr3=cr3) > j0


def test_vmi_location_pauses_the_guest_until_the_end(linuxguest):
    from urllib.request import Request

    url = f"vmi://qemu?qmp={linuxguest['qmp']}"
    f = vmi.volatility.VmiHandler.vmi_open(Request(url))
    vm = vmi.volatility.open_location(url)
    try:
        assert vm.is_paused, "Volatility would read a running guest"
        with vm.pause():
            linux = vm.linux()
            banner_gpa = vm.translate(linux.symbol("linux_banner"), cr3=linux.kernel_cr3)
        # The file reads guest-physical memory at its offsets, like a raw dump.
        f.seek(banner_gpa)
        assert f.read(13) == b"Linux version"
        assert f.seek(0, 2) == max(e for _, e in vm.memory_ranges())
    finally:
        vmi.volatility.close_all()
    assert not vm.is_open
    assert guest_runs(linuxguest["qmp"])
    for bad in ("vmi://", "vmi://qemu", "vmi://xen?qmp=/x", "file:///x"):
        with pytest.raises(vmi.volatility.LocationError):
            vmi.volatility.parse_location(bad)


def test_volatility_command_line_on_the_live_guest(vm, linuxguest, symbol_dir, vol_cache, tmp_path):
    """`vol -f vmi://qemu?qmp=…` in its own process: it pauses the guest while the plugin
    runs and resumes it when it exits."""
    with vm.pause():
        before = leaders(vm.linux().processes())
    vm_qmp = linuxguest["qmp"]
    vm.close()  # QMP serves one client at a time: let vol connect.
    vol = linuxguest["vol"]
    cmd = [vol, "--offline", "--quiet", "-r", "json", "--cache-path", vol_cache,
           "-p", vmi.volatility.plugin_dir(), "-s", symbol_dir,
           "-f", f"vmi://qemu?qmp={vm_qmp}", "linux.pslist.PsList"]
    start = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    took = time.monotonic() - start
    assert out.returncode == 0, out.stderr[-4000:]
    rows = flatten(json.loads(out.stdout))
    assert guest_runs(vm_qmp), "the guest stayed paused after vol"
    with vmi.open_qemu(vm_qmp) as vm2, vm2.pause():
        after = leaders(vm2.linux().processes())
    before.pop(0, None)
    after.pop(0, None)
    vol_tasks = {r["PID"]: (r["PPID"], r["COMM"]) for r in rows}
    # Tasks alive before and after are in Volatility's list, field for field.
    for pid in set(before) & set(after):
        if before[pid] == after[pid]:
            assert vol_tasks.get(pid) == before[pid], pid
    # Volatility lists nothing that was not there before or after, but a short-lived
    # child born and gone in between (init's `sleep 1`).
    unseen = {p: t for p, t in vol_tasks.items() if p not in before and p not in after}
    assert len(unseen) <= 2 and all(t[0] in before for t in unseen.values()), unseen
    print(f"vol linux.pslist on the live guest: {len(rows)} tasks in {took:.2f} s")


EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples")


def test_process_list_example(linuxguest):
    out = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, "process_list.py"), "--qmp", linuxguest["qmp"]],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == linuxguest["banner"]
    rows = {int(l.split()[0]): l.split() for l in lines[2:]}
    ps = {t["pid"]: t for t in linuxguest["ps"] if t["pid"] == t["tgid"]}
    # pid 1 and the kernel threads started at boot are there, with their parents.
    for pid in (1, 2):
        assert int(rows[pid][1]) == ps[pid]["ppid"], rows[pid]
    assert " ".join(ps[1]["cmdline"]) in lines[2 + list(rows).index(1)]
