"""OpenVINO as the engine of the frozen backbones, in float32 or bfloat16: it runs the same ONNX graph that
:func:`blastscan.features.engines.onnx_export.export_keras` writes (and :mod:`.graph_cache` caches), compiled
for this CPU.

Why: where the CPU has bfloat16 units (``avx512_bf16``, ``amx_bf16``), OpenVINO's bf16 ran InceptionV3
2.7-3x and VGG16 2.2-7x faster than ONNX Runtime in float32 (embeddings within cosine 0.9996 of float32);
its float32 ran at 1.0-1.2x ONNX Runtime on AVX-512 CPUs (``benchmarks/bench_deep.py``; README).

Compiling the graph takes 0.1-0.3 s on two cores (measured for both backbones), so compiled models are not
cached. The configuration matters: the ``LATENCY`` hint with one synchronous request uses every core
given (``INFERENCE_NUM_THREADS``); the ``THROUGHPUT`` hint with one synchronous request used half of them.
bf16 is asked for with ``INFERENCE_PRECISION_HINT`` and checked after compiling: OpenVINO falls back to
float32 silently where the CPU lacks bfloat16, and such embeddings must not be stored as bf16 ones.

OpenVINO is imported here only, when a network is built (importing it costs about a second).
"""

from __future__ import annotations

import os

import numpy as np

from blastscan.features.engines import REGISTRY, Engine

__all__ = ["OpenVinoRunner"]

_PRECISION_HINT = {"float32": "f32", "bf16": "bf16"}


class OpenVinoRunner:
    """An OpenVINO compiled model over an ONNX graph (bytes or a file); call it with a uint8 batch.

    Parameters
    ----------
    model : bytes or path
        A graph from :func:`blastscan.features.engines.onnx_export.export_keras`.
    precision : {"float32", "bf16"}
    threads : int, optional
        Inference threads (default: every core this process may use).

    Raises
    ------
    RuntimeError
        When bf16 is asked for and the compiled model would not run it (a CPU without bfloat16).
    """

    def __init__(self, model, precision: str = "float32", threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        if isinstance(model, (bytes, bytearray)):
            net = core.read_model(bytes(model), ov.Tensor(type=ov.Type.u8, shape=[0]))  # ONNX: weights inside
        else:
            net = core.read_model(str(model))
        self.threads = int(threads or len(os.sched_getaffinity(0)))
        self.compiled = core.compile_model(net, "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision]})
        got = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        if precision == "bf16" and "bf16" not in got and "bfloat16" not in got:
            raise RuntimeError(f"OpenVINO compiled the network in {got}, not bfloat16: this CPU has no bfloat16")
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.version = ov.__version__.split("-")[0]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # copy: the request reuses its output buffer for the next batch
        return np.array(self.request.infer({0: batch})[0], dtype=np.float32, copy=True)


REGISTRY.register("openvino", Engine("openvino", ("openvino", "onnx"), ("float32", "bf16"), OpenVinoRunner))
