"""TensorFlow as the engine of the frozen backbones: the Keras network itself in a compiled ``tf.function``.
It is the reference the graph engines are checked against, and it runs what they cannot: a backbone without
a graph preprocessing mode, a layer the exporter does not write, the activations of a block. bf16 runs under
Keras' ``mixed_bfloat16`` policy, set when the network is built (``DeepExtractor._keras_model``).

TensorFlow is imported when a runner or a scaling function is made, not with this module (it costs seconds).
"""

from __future__ import annotations

import functools
import importlib

import numpy as np

from blastscan._tf import import_keras
from blastscan.features.backbones import Backbone
from blastscan.features.engines import REGISTRY, Engine

__all__ = ["TensorFlowRunner", "scale_fn"]


@functools.lru_cache(maxsize=None)
def scale_fn(preprocess_module: str, input_size: int):
    """The ``preprocess_input`` of ``keras.applications.<preprocess_module>`` on uint8 input
    ``(n, input_size, input_size, 3)``, as a compiled TensorFlow function (one per module and size)."""
    import_keras()  # first: TensorFlow's start-up chatter silenced
    import tensorflow as tf

    s = input_size
    preprocess_input = importlib.import_module(f"keras.applications.{preprocess_module}").preprocess_input
    return tf.function(lambda x: preprocess_input(tf.cast(x, tf.float32)),
                       input_signature=[tf.TensorSpec([None, s, s, 3], tf.uint8)])


class TensorFlowRunner:
    """A built Keras ``model`` of ``backbone`` behind its ``preprocess_input``, compiled once; call it with a
    uint8 batch ``(n, input_size, input_size, 3)``. ``model`` is kept (its layers say what it computes in)."""

    def __init__(self, model, backbone: Backbone, input_size: int):
        import_keras()
        import tensorflow as tf

        spec = [tf.TensorSpec([None, input_size, input_size, 3], tf.uint8)]  # open batch: no retrace
        scale = scale_fn(backbone.preprocess_module, input_size)

        # Scaling runs inside the compiled graph: batches travel as uint8 (4x less memory than float32)
        # and the worker thread only decodes and resizes. A compiled graph is also faster than eager
        # model(x) on CPU and peaks at a fraction of its memory.
        @tf.function(input_signature=spec)
        def forward(x):
            return tf.cast(model(scale(x), training=False), tf.float32)  # bf16 out under bf16

        self.model, self._forward = model, forward
        self.version = tf.__version__

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._forward(batch).numpy()


REGISTRY.register("tensorflow", Engine("tensorflow", ("tensorflow",), ("float32", "bf16"), TensorFlowRunner,
                                       runs_graph=False))
