"""ONNX Runtime as the engine of the frozen backbones in float32: it runs the ONNX graph of
:mod:`.onnx_export` (cached by :mod:`.graph_cache`).

Why: on a 2-core AVX2 machine, onnxruntime ran InceptionV3 about 1.5x faster than TensorFlow's compiled
forward on the same batches (embeddings' cosine to Keras 0.9999999), and once the graph is cached a run
imports neither TensorFlow nor Keras (about 3.6 s saved) and traces nothing (benchmarks/bench_deep.py).

TensorFlow and ONNX Runtime give the same function up to float32 rounding (the two engines order their
sums differently, as TensorFlow itself does across CPUs); the engine is therefore not part of the
feature identity, like the batch size. ``tests/test_onnx_engine.py`` checks that bound on real cells.

onnxruntime is imported when a runner is made, not with this module.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from blastscan.features.engines import REGISTRY, Engine

__all__ = ["OnnxRunner", "available"]

REQUIRES = ("onnxruntime", "onnx")


def available() -> tuple[bool, str]:
    """``(True, "")`` when onnxruntime and onnx are installed, else ``(False, why)`` (nothing is imported:
    a run over a cached graph never imports onnx)."""
    missing = [m for m in REQUIRES if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed; pip install onnxruntime onnx"
    return True, ""


class OnnxRunner:
    """An onnxruntime session over a graph from :func:`~.onnx_export.export_keras`; call it with a uint8 batch.

    ``threads`` is the intra-op thread count (default: every core this process may use); operators run
    one after another (Inception's branches gain nothing from running side by side on a few cores).
    """

    def __init__(self, model: bytes | str | os.PathLike, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.intra_op_num_threads = int(threads or len(os.sched_getaffinity(0)))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # errors only
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        self.version = ort.__version__

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(["embedding"], {"x": batch})[0]


REGISTRY.register("onnxruntime", Engine("onnxruntime", REQUIRES, ("float32",),
                                        lambda graph, precision, threads: OnnxRunner(graph, threads)))
