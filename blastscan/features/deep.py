"""Frozen ImageNet backbones (InceptionV3, VGG16) as feature extractors: global-average-pooled embeddings.

A registry (:data:`BACKBONES`) maps a name to everything that defines a backbone's output: the Keras
constructor, the module whose ``preprocess_input`` matches its training, its default input size, its
embedding width and the weight files it accepts. Callers ask for ``"inception_v3"``, never for a
preprocessing function, so a backbone cannot run with the wrong input scaling. Adding ResNet50 is one
:func:`register_backbone` call.

Weights are found as :mod:`blastscan.features.backbones` says; the weight file's sha256 is part of the
extractor's config, with the backbone, input size, resize method and pooling, so embeddings from other
weights or sizes never mix in the feature store. The batch size and the float32 engine are not: they do not
change the output (beyond float32 rounding, see :mod:`blastscan.features.engines.onnxruntime`). bf16 does, and
where its rounding happens depends on the engine, so a bf16 table records both (``precision: bf16`` and,
on OpenVINO, ``engine: openvino``; TensorFlow's bf16 tables keep the identity they had before OpenVINO).

TensorFlow/Keras, ONNX Runtime and OpenVINO (expensive, and optional) are imported on the first
computation only, in the methods that build the forward pass; importing this module and building
extractors stays fast.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from blastscan.dataset.images import load_pil_image
from blastscan.errors import BlastscanError
from blastscan.features.backbones import (BACKBONES, WEIGHTS_ENV, Backbone, WeightsLookup, download_weights,
                                          file_sha256, find_weights, keras_cache_dir)
from blastscan.features.base import BatchExtractor, BatchResult, register_extractor, register_variants
from blastscan.features.deep_input import (OD_MAX, OPTIONS_HELP, check_input, check_tta, dihedral, parse_variant,
                                           to_input, variant_name)
from blastscan.features.engines import REGISTRY as ENGINE_REGISTRY
from blastscan.features.engines.graph_cache import cache_path, graph_bytes, load_or_export
from blastscan.features.engines.onnx_export import UnsupportedLayer
from blastscan.features.engines.tensorflow import build_keras, scale_fn
from blastscan.features.precision import (BF16_EMULATED_ENV, ENGINES, PRECISIONS, bf16_support, check_engine,
                                          check_precision, choose_engine, engine_installed, resolve_precision)
from blastscan.features.prefetch import Prefetcher
from blastscan.options import DeepOptions

__all__ = [
    "Backbone",
    "BACKBONES",
    "DeepExtractor",
    "ENGINES",
    "WEIGHTS_ENV",
    "WeightsLookup",
    "register_backbone",
    "find_weights",
    "download_weights",
    "file_sha256",
    "keras_cache_dir",
    "PRECISIONS",
    "bf16_support",
]

DEFAULT_BATCH_SIZE = 32
RANDOM_SEED = 0
# Batches a low-priority thread prepares ahead (read, decode, resize) while the current one runs: a cell
# takes a few ms to prepare against 60-250 core-ms of forward pass.
PREFETCH_BATCHES = 2
RESIZE = "bilinear"  # PIL's antialiased bilinear; part of the config because it changes the output


def register_backbone(spec: Backbone) -> Backbone:
    """Add ``spec`` to :data:`BACKBONES` and register its extractor under ``spec.name``."""
    BACKBONES[spec.name] = spec
    register_extractor(spec.name)(functools.partial(DeepExtractor, spec))
    return spec


def _parse_variant(name: str):
    """``inception_v3_grey_tta8`` -> its canonical name, backbone and options (:mod:`.deep_input`)."""
    return parse_variant(name, BACKBONES)


register_variants(_parse_variant, OPTIONS_HELP)


# -- the extractor -------------------------------------------------------------------------------------
class DeepExtractor(BatchExtractor):
    """Global-average-pooled embedding of a frozen ImageNet backbone.

    Build it with ``get_extractor("inception_v3", ...)`` rather than directly; a variant name such as
    ``"inception_v3_grey_mixed7_tta8"`` sets ``input_mode``, ``layer`` and ``tta``
    (:mod:`blastscan.features.deep_input`).

    Parameters
    ----------
    backbone : Backbone
        Registry entry (bound by the registry).
    options : DeepOptions, optional
        How it is built and run (:class:`~blastscan.options.DeepOptions`: weights, input size, precision,
        engine, batch size, and the variant name's input mode, views and layer). ``precision`` bf16 changes
        the output, so it is part of the identity; float32 (the default here) is not written into the
        config, so float32 tables keep theirs; ``auto`` is resolved here (:attr:`precision` holds the
        result, :attr:`precision_asked` what was asked; see :mod:`blastscan.features.precision`). In float32
        the engine is not part of the identity (:attr:`engine_choice` holds the one chosen). A data-only
        bundle's own graph of this backbone (``embedded_backbones``; float32, or bf16 on OpenVINO, which
        compiles the same float32 graph in bfloat16) runs on that engine and no weight file is looked up;
        its weights' sha256 comes from the graph's record. Input mode ``rgb``, ``tta`` 1 and the last
        block leave the identity and the name as they were before those options existed.

    Raises
    ------
    BlastscanError
        When no weight file is found, or the input size, batch size, precision or engine is invalid.
    """

    version = "1"

    def __init__(self, backbone: Backbone, options: DeepOptions | None = None):
        options = options or DeepOptions()
        # a bundle's graphs of other backbones need not travel with each pickled copy: its own is self.embedded
        self.options = options.replace(embedded_backbones=None)
        self.backbone = backbone
        self.cpu = cpu = options.cpu  # None: this machine's, read when needed
        self.precision_asked = check_precision(options.precision)
        self.precision = resolve_precision(self.precision_asked, options.engine, cpu)
        self.engine = check_engine(options.engine, self.precision)
        # a backbone without a graph preprocessing mode is not exported: TensorFlow runs it
        self.engine_choice = (choose_engine(options.engine, self.precision, cpu) if backbone.preprocess_mode
                              else "tensorflow")
        self.input_mode, self.tta = check_input(options.input_mode), check_tta(options.tta)
        layer = options.layer
        taps = dict(backbone.taps)
        if layer is not None and layer not in taps:
            raise BlastscanError("layer", f"{backbone.name} has no layer '{layer}' to pool; choose from: "
                                          f"{', '.join(taps) or 'none'}")
        self.layer = layer
        self._dim = taps[layer] if layer else backbone.dim
        self.name = variant_name(backbone.name, self.input_mode, self.tta, self.layer)
        self.input_size = backbone.input_size if options.input_size is None else int(options.input_size)
        self.batch_size = DEFAULT_BATCH_SIZE if options.batch_size is None else int(options.batch_size)
        if self.input_size < backbone.min_size:
            raise BlastscanError("--input-size", f"{self.input_size} is too small for {backbone.name} "
                                                 f"(at least {backbone.min_size})")
        if self.batch_size < 1:
            raise BlastscanError("--batch-size", f"must be at least 1, not {self.batch_size}")
        self.random_weights = bool(options.random_weights)
        # threads of the network's forward (None: every core this process may use); not part of the identity.
        # A Dask worker sets it to its own thread count (compute._worker_extractor).
        self.threads: int | None = None
        # a data-only bundle's own graph of this backbone: no weight file, no TensorFlow (the graph is float32;
        # OpenVINO runs it in bf16 too)
        self.embedded = ((options.embedded_backbones or {}).get(self.name)
                         if self.precision == "float32" or self.engine_choice == "openvino" else None)
        if self.embedded is not None and not self.random_weights:
            if not str(self.embedded.weights).startswith("sha256:"):
                raise BlastscanError(repr(self.embedded), f"records weights {self.embedded.weights!r}, not a sha256")
            self.weights_path, self.weights_sha256 = None, str(self.embedded.weights)[len("sha256:"):]
        elif self.random_weights:
            self.weights_path, self.weights_sha256 = None, None
        else:
            found = find_weights(backbone, options.weights_dir)
            if found.path is None:
                raise found.missing_error()
            self.weights_path, self.weights_sha256 = found.path, file_sha256(found.path)
        self.__setstate__({})
        if self.embedded is not None and self.embedded.weights != self.config()["weights"]:
            raise BlastscanError(repr(self.embedded), f"written from weights {self.embedded.weights}, not "
                                                      f"{self.config()['weights']}")

    _BUILT = ("_model", "_run", "_scale", "_lock", "engine_used")

    def __getstate__(self) -> dict:
        # Copies and pickles carry the settings, not the built network: it is rebuilt on first use.
        return {k: v for k, v in self.__dict__.items() if k not in self._BUILT}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _model=None, _run=None, _scale=None, _lock=threading.Lock(), engine_used=None)

    @property
    def feature_names(self) -> list[str]:
        return [f"{self.name}_avgpool_{i:04d}" for i in range(self.dim)]

    @property
    def dim(self) -> int:
        """Width of one embedding: the pooled channels of the last block, or of ``layer``."""
        return self._dim

    def build_options(self) -> dict[str, Any]:
        opts = {"input_size": self.input_size, "random_weights": self.random_weights, "precision": self.precision}
        if self.precision != "float32":  # bf16's output depends on its engine: rebuild it on the same one
            opts["engine"] = self.engine_choice
        opts.update(self._view_options())
        return opts

    def _view_options(self) -> dict[str, Any]:
        """``input_mode``, ``tta`` and ``layer`` where not the defaults (rgb, 1, the last block), which stay out
        of configs and records."""
        opts: dict[str, Any] = {}
        if self.input_mode != "rgb":
            opts["input_mode"] = self.input_mode
        if self.tta != 1:
            opts["tta"] = self.tta
        if self.layer:
            opts["layer"] = self.layer
        return opts

    def config(self) -> dict[str, Any]:
        weights = f"random:seed={RANDOM_SEED}" if self.random_weights else f"sha256:{self.weights_sha256}"
        cfg = {"backbone": self.backbone.name, "input_size": self.input_size, "resize": RESIZE, "pooling": "avg",
               "weights": weights}
        if self.precision != "float32":  # float32 stays out: the tables computed before bf16 existed keep their identity
            cfg["precision"] = self.precision
            if self.engine_choice != "tensorflow":  # TensorFlow's bf16 tables keep the identity they had
                cfg["engine"] = self.engine_choice
        if self.input_mode == "od":
            cfg["input"] = f"od:h/{OD_MAX}"  # the scale is part of what the network sees
        elif self.input_mode != "rgb":  # rgb and tta 1 stay out, like float32: older tables keep their identity
            cfg["input"] = self.input_mode
        if self.tta != 1:
            cfg["tta"] = self.tta
        if self.layer:
            cfg["layer"] = self.layer
        return cfg

    def run_key(self) -> tuple:
        return (self.batch_size, self.engine, self.precision_asked, self.cpu)

    def check_runtime(self) -> None:
        """Raise :class:`BlastscanError` now if this extractor cannot run here (bf16 on a CPU without it,
        an engine that is not installed)."""
        if self.precision == "bf16":
            ok, why = bf16_support(cpu=self.cpu)
            emulated = os.environ.get(BF16_EMULATED_ENV) == "1" and self.engine_choice == "tensorflow"
            if not ok and not emulated:  # OpenVINO does not emulate bfloat16: it would compute float32
                raise BlastscanError("--precision bf16", f"{why}; use --precision float32")
        if self.engine_choice != "tensorflow":
            ok, why = engine_installed(self.engine_choice)
            if not ok:
                raise BlastscanError(f"--engine {self.engine_choice}", f"{why}; or use --engine tensorflow")

    # -- model ---------------------------------------------------------------------------------------
    def _keras_model(self):
        """The Keras network as this extractor runs it (weights, precision, ``layer``); imports TensorFlow
        (:func:`blastscan.features.engines.tensorflow.build_keras`)."""
        return build_keras(self.backbone, self.input_size, precision=self.precision, weights_path=self.weights_path,
                           random_seed=RANDOM_SEED if self.random_weights else None, layer=self.layer)

    def _build(self) -> None:
        """Build the forward once per instance: the cached ONNX graph on a graph engine (ONNX Runtime,
        OpenVINO), or the Keras network on TensorFlow (:mod:`blastscan.features.engines`)."""
        with self._lock:
            if self._run is not None:
                return
            precision_note = f" ({self.precision})" if self.precision != "float32" else ""
            if self.embedded is not None:
                self._run = self._runner_factory()(self.embedded.data, self.threads)
                self.engine_used = f"{self.engine_choice} {self._run.version} (the bundle's graph)" + precision_note
                return
            self.check_runtime()
            if ENGINE_REGISTRY.get(self.engine_choice).runs_graph:
                path = None if self.random_weights else cache_path(self._graph_name(), self.input_size,
                                                                   self.weights_sha256)
                try:
                    self._run = load_or_export(path, self._keras_model, self.input_size,
                                               self.backbone.preprocess_mode, threads=self.threads,
                                               dim=self.dim, runner=self._runner_factory())
                    self.engine_used = f"{self.engine_choice} {self._run.version}" + precision_note
                    return
                except UnsupportedLayer as exc:
                    # explicit engine, or bf16 (whose identity names the engine): say so; auto float32 falls back
                    if self.engine != "auto" or self.precision != "float32":
                        raise BlastscanError(f"--engine {self.engine_choice}", f"{self.name} cannot be written as "
                                             f"an ONNX graph ({exc}); use --engine tensorflow") from None
            self._build_tensorflow()

    def _runner_factory(self):
        """``make(graph, threads)``: a runner of an ONNX graph on this extractor's engine and precision (ONNX
        Runtime's where the engine runs the Keras network: a data-only bundle's graph needs no TensorFlow)."""
        engine = ENGINE_REGISTRY.get(self.engine_choice)
        if not engine.runs_graph:
            engine = ENGINE_REGISTRY.get("onnxruntime")
        return lambda graph, threads: engine.make(graph, self.precision, threads)

    def onnx_graph(self) -> bytes:
        """The float32 network as the ONNX graph the engines run (cached, else exported: that needs
        TensorFlow and the weights once). For data-only bundles, which carry it."""
        if self.embedded is not None:
            return self.embedded.data
        if not ENGINE_REGISTRY.get(self.engine_choice).runs_graph or not self.backbone.preprocess_mode:
            raise UnsupportedLayer(f"{self.name} in {self.precision} on TensorFlow" if self.backbone.preprocess_mode
                                   else f"{self.name} has no ONNX preprocessing mode")
        path = None if self.random_weights else cache_path(self._graph_name(), self.input_size, self.weights_sha256)
        return graph_bytes(path, self._keras_model, self.input_size, self.backbone.preprocess_mode, dim=self.dim)

    def _graph_name(self) -> str:
        """The cached graph's name: the backbone and the layer it is cut at, not the input mode or the views
        (those are applied outside the graph, so variants share one graph)."""
        return self.backbone.name + (f"-{self.layer}" if self.layer else "")

    def _build_tensorflow(self) -> None:
        model = self._keras_model()  # imports TensorFlow with its start-up chatter silenced
        self._run = ENGINE_REGISTRY.get("tensorflow").make(model, self.backbone, self.input_size)
        self._model = model
        self.engine_used = f"tensorflow {self._run.version}"

    def _scale_fn(self):
        """The backbone's ``preprocess_input`` on uint8 input, as a compiled TensorFlow function."""
        if self._scale is None:
            self._scale = scale_fn(self.backbone.preprocess_module, self.input_size)
        return self._scale

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings (float32, ``(n, dim)``) of a batch of resized RGB uint8 images ``(n, size, size, 3)``:
        one pass of the network as it is, whatever ``input_mode`` and ``tta`` (see :meth:`embed`).

        The backbone's ``preprocess_input`` is applied inside the engine's graph.
        """
        self._build()
        return np.asarray(self._run(_uint8_batch(batch)), dtype=np.float32)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """This extractor's embeddings of a batch of network inputs (:meth:`network_input` images): the mean
        of the pooled embeddings of its ``tta`` symmetries (one :meth:`forward` each, so the batch size and
        the memory per pass stay those of ``tta=1``), summed in float64."""
        if self.tta == 1:
            return self.forward(batch)
        batch = _uint8_batch(batch)
        total = None
        for k in range(self.tta):
            out = self.forward(dihedral(batch, k)).astype(np.float64)
            total = out if total is None else total + out
        return (total / self.tta).astype(np.float32)

    # -- preprocessing -------------------------------------------------------------------------------
    def resize(self, image) -> np.ndarray:
        """An RGB image (uint8 array or PIL image) resized to ``(size, size, 3)`` uint8 (antialiased
        bilinear; the aspect is not kept)."""
        s = self.input_size
        if isinstance(image, np.ndarray):
            if image.shape[:2] == (s, s):
                return image
            image = Image.fromarray(image)
        if image.size != (s, s):
            image = image.resize((s, s), Image.Resampling.BILINEAR)
        return np.asarray(image)

    def network_input(self, image) -> np.ndarray:
        """The uint8 image ``(size, size, 3)`` the network is given for an RGB image: resized, then turned
        into the ``input_mode`` (greyscale, haematoxylin density; rgb as is)."""
        return to_input(self.resize(image), self.input_mode)

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The float32 network input for RGB uint8 images: :meth:`network_input`, then the backbone's
        ``preprocess_input`` (the step both engines run inside their graph; computed with TensorFlow, for
        inspection and tests)."""
        return self._scale_fn()(np.stack([self.network_input(im) for im in images])).numpy()

    def _prepare_one(self, path: str):
        """One network input (resized uint8 image in the input mode), or the reason it cannot be read (a str)."""
        try:
            return self.network_input(load_pil_image(path))  # no full-size array copy
        except BlastscanError as exc:
            return exc.why or str(exc)
        except Exception as exc:  # one odd file must not end a long run; the reason names it
            return f"unexpected error ({type(exc).__name__}: {exc}); please report it"

    def compute_paths(self, paths: Sequence[str]) -> Iterator[BatchResult]:
        """Yield one :class:`BatchResult` per batch of ``paths``, in order, covering every position.

        A low-priority thread reads, decodes and resizes the next batches while the current one runs
        through the network (:mod:`blastscan.features.prefetch`); with ``tta`` > 1 each batch goes through
        it once per symmetry (:meth:`embed`). An image that cannot be read becomes a failure with its reason.
        """
        self._build()
        paths = [str(p) for p in paths]
        batches = [range(lo, min(lo + self.batch_size, len(paths))) for lo in range(0, len(paths), self.batch_size)]
        with Prefetcher(lambda i: self._prepare_one(paths[i]), batches, ahead=PREFETCH_BATCHES) as pf:
            for b, items in enumerate(batches):
                prepared = pf.take(b)
                indices = [i for i, x in zip(items, prepared) if not isinstance(x, str)]
                failures = {i: x for i, x in zip(items, prepared) if isinstance(x, str)}
                feats = (self.embed(np.stack([x for x in prepared if not isinstance(x, str)])) if indices
                         else np.zeros((0, self.dim), np.float32))
                yield BatchResult(indices, feats, failures)


def _uint8_batch(batch: np.ndarray) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.dtype != np.uint8 or batch.ndim != 4:
        raise TypeError(f"expected a uint8 batch (n, size, size, 3) of resized images, got {batch.dtype} {batch.shape}")
    return np.ascontiguousarray(batch)


register_backbone(Backbone(
    name="inception_v3", constructor="InceptionV3", preprocess_module="inception_v3", input_size=299,
    dim=2048, min_size=75, keras_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    keras_subdir="inception_v3", keras_md5="bcbd6486424b2319ff4ef7d526e38f63", preprocess_mode="tf",
    taps=(("mixed0", 256), ("mixed1", 288), ("mixed2", 288), ("mixed3", 768), ("mixed4", 768), ("mixed5", 768),
          ("mixed6", 768), ("mixed7", 768), ("mixed8", 1280), ("mixed9", 2048)),
))
register_backbone(Backbone(
    name="vgg16", constructor="VGG16", preprocess_module="vgg16", input_size=224, dim=512, min_size=32,
    keras_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", keras_subdir="vgg16",
    keras_md5="6d6bbae143d832006294945121d1f1fc", preprocess_mode="caffe",
))
