"""blastscan: handcrafted and frozen-CNN features to tell ALL blasts from normal cells (C-NMC 2019)."""

from __future__ import annotations

__version__ = "0.1.0"

from blastscan.errors import BlastscanError

__all__ = ["BlastscanError", "__version__", "load_bundle"]


def load_bundle(path, trust: bool = False):
    """Load a scoring bundle written by ``blastscan train/export`` (see :mod:`blastscan.bundle`)."""
    from blastscan.bundle import load_bundle as _load

    return _load(path, trust=trust)
