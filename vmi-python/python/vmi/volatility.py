"""Volatility 3 on a live guest: the ``vmi://`` location.

Volatility 3 opens the memory it analyses through URL handlers; this module adds one
for ``vmi://`` URLs, serving the guest's physical memory through the bindings (mapped
shared RAM where QEMU offers it), with the guest paused from the first read until the
``vol`` process ends::

    vol -p "$(python -m vmi.volatility --plugin-dir)" -s SYMBOLS \\
        -f 'vmi://qemu?qmp=/tmp/qmp.sock' linux.pslist

Locations:

``vmi://qemu?qmp=PATH[&gdb=PATH]``
    an unpatched QEMU through its QMP socket (and optionally its GDB stub);
``vmi://kvmi?socket=PATH[&secret=S][&timeout=SECONDS]``
    a KVM-VMI host connecting to the listener socket PATH.

Add ``&pause=0`` to leave the guest running (the view is then inconsistent).

For Linux guests, ``Linux.isf()`` writes the ISF Volatility needs (put it in
``SYMBOLS/linux/``); see :func:`write_isf`.
"""

import atexit
import os
import threading
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlparse
from urllib.request import BaseHandler, Request

import vmi

SCHEME = "vmi"

try:  # Inside Volatility: a VolatilityHandler is found by Volatility and never cached.
    from volatility3.framework.layers.resources import VolatilityHandler as _Base
except ImportError:  # Outside it, a plain urllib handler.
    _Base = BaseHandler  # type: ignore[misc,assignment]


class LocationError(ValueError):
    """A ``vmi://`` URL Volatility was given does not name a guest."""


_sessions: Dict[str, Tuple["vmi.Vm", Optional["vmi.Pause"]]] = {}
_attached: Dict[str, "vmi.Vm"] = {}
_lock = threading.Lock()


def parse_location(url: str) -> Tuple[str, Dict[str, str]]:
    """The backend (``qemu`` or ``kvmi``) and the parameters of a ``vmi://`` URL."""
    parsed = urlparse(url)
    if parsed.scheme != SCHEME:
        raise LocationError(f"{url!r} is not a {SCHEME}:// URL")
    params = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
    backend = parsed.netloc or params.pop("backend", "")
    if backend not in ("qemu", "kvmi"):
        raise LocationError(
            f"{url!r}: the host part names the backend, vmi://qemu?qmp=PATH or "
            "vmi://kvmi?socket=PATH"
        )
    needed = "qmp" if backend == "qemu" else "socket"
    if needed not in params:
        raise LocationError(f"{url!r}: {backend} needs ?{needed}=PATH")
    return backend, params


def open_location(url: str) -> "vmi.Vm":
    """The session a ``vmi://`` URL names, opened (and paused) once per process."""
    with _lock:
        if url in _attached:
            return _attached[url]
        if url in _sessions:
            return _sessions[url][0]
        backend, params = parse_location(url)
        if backend == "qemu":
            vm = vmi.open_qemu(params["qmp"], gdb=params.get("gdb"))
        else:
            secret = params.get("secret")
            vm = vmi.open_kvmi(
                params["socket"],
                secret=secret.encode() if secret is not None else None,
                timeout=float(params.get("timeout", "60")),
            )
        pause = vm.pause() if params.get("pause", "1") not in ("0", "no", "false") else None
        _sessions[url] = (vm, pause)
        return vm


def attach(vm: "vmi.Vm", name: str = "session") -> str:
    """Serves an already open session as ``vmi://session/NAME`` to Volatility running in
    this process (the caller pauses and resumes; the session is not closed at exit)."""
    url = f"{SCHEME}://session/{name}"
    with _lock:
        _attached[url] = vm
    return url


def close_all() -> None:
    """Resumes every guest this process paused and ends the sessions (run at exit)."""
    with _lock:
        sessions = list(_sessions.values())
        _sessions.clear()
    for vm, pause in sessions:
        try:
            if pause is not None:
                pause.resume()
        finally:
            vm.close()


atexit.register(close_all)


class VmiHandler(_Base):
    """urllib handler for ``vmi://``: opens the guest's physical memory as a file."""

    handler_order = 400

    @classmethod
    def non_cached_schemes(cls) -> List[str]:
        """Volatility must read a live guest, never a cached copy of it."""
        return [SCHEME]

    @staticmethod
    def vmi_open(req: Request) -> Any:
        """A new file over the guest's physical memory (Volatility opens it twice)."""
        return open_location(req.full_url).physical_file()


def plugin_dir() -> str:
    """The directory to give Volatility with ``-p``: it registers ``vmi://``."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "volatility_plugins")


def write_isf(linux: "vmi.Linux", symbol_dir: str) -> str:
    """Writes the kernel's ISF into ``symbol_dir/linux/`` (for ``vol -s symbol_dir``)
    and returns its path."""
    target = os.path.join(symbol_dir, "linux")
    os.makedirs(target, exist_ok=True)
    path = os.path.join(target, f"vmi-{linux.release}.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(linux.isf())
    return path


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--plugin-dir"]:
        print(plugin_dir())
    else:
        print("usage: python -m vmi.volatility --plugin-dir", file=sys.stderr)
        sys.exit(2)
