"""Registers the ``vmi://`` location with Volatility 3 (this directory is given to
``vol -p``). The handler lives in :mod:`vmi.volatility`."""

from vmi.volatility import VmiHandler  # noqa: F401  (imported to register it)
