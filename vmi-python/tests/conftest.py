"""Fixtures of the Python tests: the guests are launched by the Rust harness
(``tests/tests/python_bindings.rs``), which reads ground truth with the Rust API and from
inside the guest and hands it here in a JSON file named by ``VMI_PY_TRUTH``.

Run alone (``pytest vmi-python/tests``) without that file, the guest tests skip; with
``VMI_REQUIRE_GUEST=1`` (set by the harness) a missing file fails them instead."""

import json
import os
import tempfile

import pytest


def _truth(kind):
    path = os.environ.get("VMI_PY_TRUTH")
    if not path:
        if os.environ.get("VMI_REQUIRE_GUEST") == "1":
            pytest.fail("VMI_PY_TRUTH is not set (run through cargo xtask test)")
        pytest.skip("no guest: run through `cargo xtask test` (tests/tests/python_bindings.rs)")
    with open(path, encoding="utf-8") as f:
        truth = json.load(f)
    if truth.get("guest") != kind:
        pytest.skip(f"this run's guest is {truth.get('guest')}, not {kind}")
    return truth


@pytest.fixture(scope="module")
def testguest():
    """Truth about the purpose-built test guest (sockets, symbols, Rust API reads)."""
    return _truth("testguest")


@pytest.fixture(scope="module")
def linuxguest():
    """Truth about the Linux guest (sockets, the guest's own ps, the Rust API's list)."""
    return _truth("linux")


@pytest.fixture(scope="session")
def vol_cache():
    """One Volatility cache directory for the session (ISF validation is cached there)."""
    with tempfile.TemporaryDirectory(prefix="vmi-vol-cache-") as d:
        yield d
