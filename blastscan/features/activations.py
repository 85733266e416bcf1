"""Activations of an intermediate InceptionV3 block (``mixed8``: 8 x 8 x 1280 per cell at 299 px) as a
feature table, the cached input of the fine-tuned last blocks (:mod:`blastscan.classifiers.finetune`).

The table is computed once through the usual extraction machinery (store, resume, recorded failures) and
has its own identity: backbone, block, input size, resize, input mode, precision of the forward pass,
storage dtype and the weight file's sha256. It is stored as **float16**, each row as one fixed-size binary
cell (``FeatureStore`` layout ``"float16-array"``): 81,920 Parquet columns per table would make every
part's metadata larger than its data. Each cell costs 160 KiB on disk.

The forward pass runs on TensorFlow/Keras (a sub-model of the Keras network up to the block). A data-only
bundle carries the same sub-network as an ONNX graph (:meth:`ActivationExtractor.onnx_graph`, float32,
flattened in the same order) under the feature set's name; scoring with it runs on ONNX Runtime, without
TensorFlow or weight files.

The feature set is ``inception_v3_mixed8_act``. It is not meant for the frozen classifiers (81,920 columns);
``-c finetune`` on ``-f inception_v3`` reads it in place of the pooled embedding.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from blastscan.errors import BlastscanError
from blastscan.features.backbones import BACKBONES, Backbone
from blastscan.features.base import register_extractor
from blastscan.features.deep import RANDOM_SEED, RESIZE, DeepExtractor
from blastscan.features.engines.graph_cache import cache_path, graph_bytes
from blastscan.features.engines.onnx_export import UnsupportedLayer
from blastscan.features.store import ARRAY_LAYOUT as STORAGE  # one binary cell of float16 values per row
from blastscan.options import DeepOptions

__all__ = ["ActivationExtractor", "BLOCKS", "STORAGE", "activation_feature_set"]

#: Blocks whose activations can be cached: (backbone, block) -> (height, width, channels) at the default size.
BLOCKS: dict[tuple[str, str], tuple[int, int, int]] = {("inception_v3", "mixed8"): (8, 8, 1280)}


def activation_feature_set(backbone: str, block: str) -> str:
    """The feature-set name of a block's activations (``inception_v3_mixed8_act``)."""
    return f"{backbone}_{block}_act"  # not {backbone}_{block}: that is the pooled variant (deep_input)


class ActivationExtractor(DeepExtractor):
    """Unpooled activations of ``block`` of a frozen backbone, flattened (height, width, channels).

    Build it with ``get_extractor("inception_v3_mixed8_act", ...)``; options as for
    :class:`~blastscan.features.deep.DeepExtractor` (``engine`` is ignored: TensorFlow runs it).
    """

    version = "1"

    def __init__(self, backbone: Backbone, block: str, options: DeepOptions | None = None):
        self.block, self.shape = block, BLOCKS[(backbone.name, block)]  # config() reads them in super().__init__
        options = _own_graph((options or DeepOptions()).replace(engine="tensorflow"),
                             activation_feature_set(backbone.name, block), backbone.name)
        super().__init__(backbone, options)
        self.name = activation_feature_set(backbone.name, block)
        if self.input_size != backbone.input_size:
            raise BlastscanError("--input-size", f"{self.name} is cached at {backbone.input_size} px only "
                                                 f"(the fine-tuned blocks expect its shape), not {self.input_size}")

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    @property
    def feature_names(self) -> list[str]:
        return [f"{self.name}_{i:05d}" for i in range(self.dim)]

    def config(self) -> dict[str, Any]:
        weights = f"random:seed={RANDOM_SEED}" if self.random_weights else f"sha256:{self.weights_sha256}"
        return {"backbone": self.backbone.name, "block": self.block, "shape": list(self.shape),
                "input_size": self.input_size, "resize": RESIZE, "input": "rgb", "precision": self.precision,
                "storage": "float16", "weights": weights}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "storage": STORAGE, "shape": list(self.shape)}

    def _keras_model(self):
        """The backbone as the frozen extractor builds it (weights, precision), cut after ``block``."""
        from blastscan._tf import import_keras

        keras = import_keras()
        full = super()._keras_model()
        model = keras.Model(full.input, full.get_layer(self.block).output)
        model.trainable = False
        return model

    def _build(self) -> None:
        if self.embedded is not None:  # a data-only bundle's graph: ONNX Runtime
            super()._build()
            self.engine_used = f"onnxruntime {self._run.version} (the bundle's graph)"
            return
        with self._lock:
            if self._run is None:
                self.check_runtime()
                self._build_tensorflow()

    def onnx_graph(self) -> bytes:
        """The float32 network up to ``block``, flattened channels-last, as an ONNX graph (uint8 images in,
        ``(n, dim)`` out): what a data-only bundle embeds. Cached like the backbones' graphs; exporting it
        needs TensorFlow and the weights once."""
        if self.embedded is not None:
            return self.embedded.data
        if self.precision != "float32":
            raise UnsupportedLayer(f"{self.name} in {self.precision} on TensorFlow")

        def build():
            from blastscan._tf import import_keras

            keras = import_keras()
            cut = self._keras_model()
            return keras.Model(cut.input, keras.layers.Flatten()(cut.output))

        path = None if self.random_weights else cache_path(f"{self.backbone.name}-{self.block}-act", self.input_size,
                                                              self.weights_sha256)
        return graph_bytes(path, build, self.input_size, self.backbone.preprocess_mode, dim=self.dim)

    def forward(self, batch: np.ndarray) -> np.ndarray:
        out = super().forward(batch)
        return out.reshape(len(out), -1)

    def compute_paths(self, paths):
        dim = self.dim
        for res in super().compute_paths(paths):
            if not len(res.indices):
                res.features = np.zeros((0, dim), np.float32)
            yield res


def _own_graph(options: DeepOptions, name: str, backbone: str) -> DeepOptions:
    """Keep of a data-only bundle's graphs only the one written for ``name`` (the cut network), under the key
    the frozen extractor looks it up by (``backbone``); the full backbone's graph is not this network."""
    graph = (options.embedded_backbones or {}).get(name)
    return options.replace(embedded_backbones={backbone: graph} if graph is not None else None)


def _register(backbone: str, block: str) -> None:
    register_extractor(activation_feature_set(backbone, block))(
        functools.partial(ActivationExtractor, BACKBONES[backbone], block))


for _b, _blk in BLOCKS:
    _register(_b, _blk)
