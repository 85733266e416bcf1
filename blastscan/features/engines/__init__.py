"""What runs a backbone's network: one module per engine, each registering an :class:`Engine` in
:data:`REGISTRY` (:mod:`.onnxruntime`, :mod:`.openvino`, :mod:`.tensorflow`), so adding an engine is one new
module. The engines that run the ONNX graph share its writer (:mod:`.onnx_export`) and its cache
(:mod:`.graph_cache`). Which engine runs is decided in :mod:`blastscan.features.precision`.

Importing an engine's module imports no engine: each imports its library when it makes a runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from blastscan.registry import Registry

__all__ = ["Engine", "REGISTRY", "Runner"]

#: What an engine makes: a callable from a uint8 batch ``(n, size, size, 3)`` to float32 embeddings ``(n, dim)``,
#: with a ``version`` attribute (the library's, for run records).
Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Engine:
    """One engine of the deep backbones.

    Attributes
    ----------
    name : str
        What ``--engine`` calls it.
    requires : tuple of str
        The Python modules it needs (looked up, not imported: importing them costs seconds).
    precisions : tuple of str
        The arithmetic it runs (``"float32"``, ``"bf16"``).
    make : callable
        Makes a :data:`Runner`. An engine that runs the ONNX graph (``runs_graph``) is called as
        ``make(graph, precision, threads)`` (``graph``: the serialised graph or its file); one that runs the
        Keras network as ``make(model, backbone, input_size)``.
    runs_graph : bool
        Whether it runs the ONNX graph of :mod:`.onnx_export` (else the Keras network itself).
    """

    name: str
    requires: tuple[str, ...]
    precisions: tuple[str, ...]
    make: Callable[..., Runner]
    runs_graph: bool = True


#: The engines by name, found by importing this folder's modules.
REGISTRY: Registry[Engine] = Registry("engine", __name__)
