"""TensorFlow as the engine of the frozen backbones: the Keras network itself in a compiled ``tf.function``.
It is the reference the graph engines are checked against, and it runs what they cannot: a backbone without
a graph preprocessing mode, a layer the exporter does not write, the activations of a block. bf16 runs under
Keras' ``mixed_bfloat16`` policy, set when the network is built (:func:`build_keras`, which builds it for
every engine).

TensorFlow is imported when a runner or a scaling function is made, not with this module (it costs seconds).
"""

from __future__ import annotations

import functools
import importlib

import numpy as np

from blastscan._tf import import_keras
from blastscan.errors import BlastscanError
from blastscan.features.backbones import Backbone
from blastscan.features.engines import REGISTRY, Engine

__all__ = ["TensorFlowRunner", "build_keras", "scale_fn"]


def build_keras(backbone: Backbone, input_size: int, *, precision: str = "float32", weights_path=None,
                random_seed: int | None = None, layer: str | None = None):
    """The Keras network of ``backbone`` without its top, global-average-pooled and frozen: what every engine
    runs (the graph engines after :mod:`.onnx_export` writes it out).

    Parameters
    ----------
    precision : {"float32", "bf16"}
        bf16: float32 variables (the weight file loads as is), bfloat16 compute.
    weights_path : path, optional
        The weight file, loaded unless ``random_seed`` is given.
    random_seed : int, optional
        Seeded random weights instead (tests only: the embeddings are meaningless).
    layer : str, optional
        Cut after this block and average-pool its output (one output, as every engine expects).

    Raises
    ------
    BlastscanError
        When the weight file cannot be loaded as this backbone's.
    """
    keras = import_keras()
    b, s = backbone, input_size
    previous = keras.config.dtype_policy()
    if precision == "bf16":
        # float32 variables (the weight file loads as is), bfloat16 compute; layers built now keep it
        keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = getattr(keras.applications, b.constructor)(weights=None, include_top=False, pooling="avg",
                                                           input_shape=(s, s, 3))
    finally:
        keras.config.set_dtype_policy(previous)
    if random_seed is not None:
        _randomise(model, random_seed)
    else:
        try:
            model.load_weights(str(weights_path))
        except Exception as exc:  # h5py/Keras raise many types for a wrong or damaged file
            raise BlastscanError(str(weights_path), f"cannot load as {b.name} weights "
                                                    f"({type(exc).__name__}: {exc})") from None
    model.trainable = False
    if layer:  # cut after the tapped block: average-pool its output (one output, as every engine expects)
        pooled = keras.layers.GlobalAveragePooling2D(name=f"{layer}_avgpool")(model.get_layer(layer).output)
        model = keras.Model(model.input, pooled, name=f"{model.name}_{layer}")
        model.trainable = False
    return model


def _randomise(model, seed: int) -> None:
    """Seeded Glorot-uniform kernels (other variables keep their constant initial values)."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape = tuple(var.shape)
        if len(shape) >= 2:
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            limit = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
            var.assign(rng.uniform(-limit, limit, size=shape).astype(np.float32))


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
