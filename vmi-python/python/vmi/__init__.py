"""Virtual machine introspection of live QEMU/KVM guests.

Open a guest with :func:`open_qemu` (an unpatched QEMU: its QMP socket, optionally its
GDB stub) or :func:`open_kvmi` (a KVM-VMI host), then read and write its memory and
registers, pause it, trap events, and understand a Linux guest with :meth:`Vm.linux`::

    import vmi
    with vmi.open_qemu("/tmp/qmp.sock") as vm, vm.pause():
        linux = vm.linux()
        for p in linux.processes():
            print(p.pid, p.comm)

Every guard is a context manager and is also undone when its object is collected: a
pause resumes, a breakpoint or monitor is removed, an unanswered event gets the
default answer (continue).

Volatility 3 runs on a live guest through ``vmi://`` locations; see
:mod:`vmi.volatility`.
"""

from ._vmi import (
    Disconnected,
    Event,
    Events,
    KvmiListener,
    Linux,
    LinuxError,
    LogRecord,
    Module,
    Object,
    PageFault,
    Pause,
    PhysicalFile,
    Process,
    Registers,
    Timeout,
    Trap,
    UnmappedPhysical,
    Unsupported,
    Vm,
    VmiError,
    __version__,
    open_kvmi,
    open_qemu,
)

__all__ = [
    "Disconnected",
    "Event",
    "Events",
    "KvmiListener",
    "Linux",
    "LinuxError",
    "LogRecord",
    "Module",
    "Object",
    "PageFault",
    "Pause",
    "PhysicalFile",
    "Process",
    "Registers",
    "Timeout",
    "Trap",
    "UnmappedPhysical",
    "Unsupported",
    "Vm",
    "VmiError",
    "__version__",
    "open_kvmi",
    "open_qemu",
]
