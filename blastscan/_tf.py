"""Importing Keras/TensorFlow quietly, in the few places that need it.

TensorFlow's C++ runtime writes start-up lines (oneDNN, CPU features, absl) straight to the process'
stderr before its log level applies; on a command line they look like errors. They are silenced while
TensorFlow is imported; Python exceptions raised by the import are kept intact. TensorFlow and Keras are
imported inside :func:`import_keras` only (seconds, and an optional dependency).
"""

from __future__ import annotations

import contextlib
import os
import sys

from blastscan.errors import BlastscanError

__all__ = ["import_keras", "quiet_stderr"]


@contextlib.contextmanager
def quiet_stderr():
    """Point file descriptor 2 at /dev/null for the block (C++ writes bypass ``sys.stderr``)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def import_keras():
    """Return the ``keras`` module, importing TensorFlow with its start-up chatter silenced."""
    if "keras" in sys.modules and "tensorflow" in sys.modules:
        return sys.modules["keras"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with quiet_stderr():
            import tensorflow  # noqa: F401
            import keras
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ("tensorflow", "keras"):
            raise
        raise BlastscanError("tensorflow", "not installed; deep features (once per backbone, to write its ONNX "
                                           "graph), --engine tensorflow, bf16 and the FCN classifiers need it: "
                                           "pip install 'blastscan[tensorflow]' (scoring a data-only .bsb bundle "
                                           "does not)") from None
    return keras
