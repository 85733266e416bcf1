"""Frozen ImageNet backbones (InceptionV3, VGG16) as feature extractors: global-average-pooled embeddings.

A registry (:data:`BACKBONES`) maps a name to everything that defines a backbone's output: the Keras
constructor, the module whose ``preprocess_input`` matches its training, its default input size, its
embedding width and the weight files it accepts. Callers ask for ``"inception_v3"``, never for a
preprocessing function, so a backbone cannot run with the wrong input scaling. Adding ResNet50 is one
:func:`register_backbone` call.

Weights are resolved when an extractor is built (no TensorFlow needed), in this order:

1. ``weights_dir`` (``--weights-dir``; ``$BLASTSCAN_WEIGHTS_DIR`` when not given). A folder is searched
   for ``<backbone>_imagenet_notop.weights.h5``, then Keras' own file name (e.g.
   ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``). A file is used as is, unless its name is
   another backbone's. When ``weights_dir`` is given, only it is searched: what you point at is what runs.
2. Otherwise the Keras cache (``$KERAS_HOME/models``, else ``~/.keras/models``), for the same names.

Nothing found is a :class:`~blastscan.errors.BlastscanError` that says what was looked for, where, and
how to provide it; there is never a silent fallback to random weights (``random_weights=True`` asks for
them explicitly, seeded, and says so in the identity). Nothing is downloaded implicitly: offline, Keras'
download fails only after a delay with a bare ``Exception("URL fetch failure")``. :func:`download_weights`
(``blastscan weights --download``) fetches Keras' files on purpose and turns that failure into a clear error.

The weight file's sha256 (cached by path, size, mtime, inode and ctime) is part of the extractor's config, with the
backbone, input size, resize method and pooling, so embeddings from other weights or sizes never mix
in the feature store. The batch size is not: it does not change the output.

TensorFlow/Keras are imported on the first computation only; importing this module and building
extractors stays fast (the CLI's ``--help`` never pays for TensorFlow).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from blastscan.errors import BlastscanError
from blastscan.features.base import BatchExtractor, BatchResult, register_extractor
from blastscan.features.precision import BF16_EMULATED_ENV, PRECISIONS, bf16_support, check_precision

__all__ = [
    "Backbone",
    "BACKBONES",
    "DeepExtractor",
    "WeightsLookup",
    "register_backbone",
    "find_weights",
    "download_weights",
    "file_sha256",
    "keras_cache_dir",
    "PRECISIONS",
    "bf16_support",
]

WEIGHTS_ENV = "BLASTSCAN_WEIGHTS_DIR"
DEFAULT_BATCH_SIZE = 32
RANDOM_SEED = 0
# Threads that read, decode and resize the next batches while the current one runs: a cell
# takes a few ms to prepare against ~60 ms of forward pass, so two threads and two batches ahead suffice.
PREP_THREADS = 2
PREFETCH_BATCHES = 2
RESIZE = "bilinear"  # PIL's antialiased bilinear; part of the config because it changes the output
_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class Backbone:
    """Everything that defines one backbone's embedding.

    Attributes
    ----------
    name : str
        Registry name, also the feature-set name (``"inception_v3"``).
    constructor : str
        Attribute of ``keras.applications`` that builds the network (``"InceptionV3"``).
    preprocess_module : str
        Submodule of ``keras.applications`` whose ``preprocess_input`` matches the weights.
    input_size : int
        Default square input size in pixels.
    dim : int
        Embedding width (channels of the last convolutional block, after global average pooling).
    min_size : int
        Smallest input the architecture accepts.
    keras_file : str
        Keras' own file name for the no-top ImageNet weights (also accepted locally).
    keras_subdir : str
        Folder of ``keras_file`` under Keras' download URL.
    keras_md5 : str
        The md5 Keras checks after downloading ``keras_file``.
    """

    name: str
    constructor: str
    preprocess_module: str
    input_size: int
    dim: int
    min_size: int
    keras_file: str
    keras_subdir: str
    keras_md5: str

    @property
    def weight_files(self) -> tuple[str, ...]:
        """Local file names accepted for this backbone, in order of preference."""
        return (f"{self.name}_imagenet_notop.weights.h5", self.keras_file)

    @property
    def keras_url(self) -> str:
        return f"{_KERAS_URL}{self.keras_subdir}/{self.keras_file}"


BACKBONES: dict[str, Backbone] = {}


def register_backbone(spec: Backbone) -> Backbone:
    """Add ``spec`` to :data:`BACKBONES` and register its extractor under ``spec.name``."""
    BACKBONES[spec.name] = spec
    register_extractor(spec.name)(functools.partial(DeepExtractor, spec))
    return spec


# -- weights -----------------------------------------------------------------------------------------
def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


@dataclass
class WeightsLookup:
    """Where the weights of ``backbone`` were looked for and, if found, the file (``path``)."""

    backbone: Backbone
    path: Path | None
    searched: list[str]

    def missing_error(self) -> BlastscanError:
        """The error for weights that were not found: what, where, and how to provide them."""
        b = self.backbone
        return BlastscanError(
            f"{b.name} weights",
            f"not found: looked for {' or '.join(b.weight_files)} in {'; '.join(self.searched)}. "
            f"Point --weights-dir (or ${WEIGHTS_ENV}) at a folder holding one of them, or run "
            f"`blastscan weights --download` on a machine with internet (it saves {b.keras_file} to "
            f"{keras_cache_dir()})",
        )


def find_weights(backbone: str | Backbone, weights_dir: str | os.PathLike | None = None) -> WeightsLookup:
    """Find the weight file of ``backbone`` (see the module docstring for the order); never raises."""
    b = BACKBONES[backbone] if isinstance(backbone, str) else backbone
    if not weights_dir:  # None or "" (an empty environment variable)
        weights_dir = os.environ.get(WEIGHTS_ENV) or None
    if weights_dir is not None:
        where = Path(weights_dir).expanduser()
        if where.is_file():
            others = {f for o in BACKBONES.values() if o.name != b.name for f in o.weight_files}
            if where.name in others:
                return WeightsLookup(b, None, [f"{where} (a weight file of another backbone)"])
            return WeightsLookup(b, where, [str(where)])
        folders = [where]
    else:
        folders = [keras_cache_dir()]
    searched = []
    for folder in folders:
        for name in b.weight_files:
            if (folder / name).is_file():
                return WeightsLookup(b, folder / name, searched + [str(folder)])
        searched.append(str(folder) + ("" if folder.is_dir() else " (no such folder)"))
    return WeightsLookup(b, None, searched)


def _sha_cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "blastscan" / "weights-sha256.json"


_SHA_MEMO: dict[tuple, str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, cached by (real path, size, mtime, inode, ctime) in memory and in the user cache folder.

    A weight file is ~100 MB; hashing it on every run would cost ~0.3 s per backbone. A changed file
    (other size, mtime, inode or ctime) is hashed again: a replaced file has a new inode, and a rewrite
    whose mtime was restored (``touch -d``, ``cp -p``) still changes the ctime, which no user can set. The on-disk cache is best effort: unwritable means no cache.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "ctime_ns": st.st_ctime_ns}
    key = (real, *stamp.values())
    with _SHA_LOCK:
        if key in _SHA_MEMO:
            return _SHA_MEMO[key]
        cache_file = _sha_cache_file()
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        entry = cache.get(real) if isinstance(cache, dict) else None
        if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()):
            digest = str(entry["sha256"])
        else:
            h = hashlib.sha256()
            with open(real, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            digest = h.hexdigest()
            cache = cache if isinstance(cache, dict) else {}
            cache[real] = {**stamp, "sha256": digest}
            try:
                from blastscan._io import atomic_write_bytes

                cache_file.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(cache_file, json.dumps(cache, indent=1, sort_keys=True).encode())
            except OSError:
                pass
        _SHA_MEMO[key] = digest
        return digest


def download_weights(backbone: str | Backbone, dest: str | os.PathLike | None = None) -> Path:
    """Download Keras' ImageNet no-top weights of ``backbone`` (md5-checked) and return the file.

    Parameters
    ----------
    backbone : str or Backbone
    dest : path, optional
        Folder to save into (default: the Keras cache, where extractors look when no ``weights_dir``
        is given).

    Raises
    ------
    BlastscanError
        When the download fails (e.g. no internet: Keras raises a bare ``Exception``).
    """
    b = BACKBONES[backbone] if isinstance(backbone, str) else backbone
    folder = Path(dest).expanduser() if dest else keras_cache_dir()
    from blastscan._tf import import_keras

    keras = import_keras()

    try:
        folder.mkdir(parents=True, exist_ok=True)
        got = keras.utils.get_file(b.keras_file, b.keras_url, file_hash=b.keras_md5,
                                   cache_dir=str(folder.parent), cache_subdir=folder.name)
    except Exception as exc:  # Keras signals every network failure with a bare Exception
        raise BlastscanError(f"{b.name} weights", f"download failed ({exc}); without internet, copy "
                                                  f"{b.keras_file} or {b.weight_files[0]} into a folder and "
                                                  f"pass it as --weights-dir") from None
    return Path(got)


# -- the extractor -------------------------------------------------------------------------------------
class DeepExtractor(BatchExtractor):
    """Global-average-pooled embedding of a frozen ImageNet backbone.

    Build it with ``get_extractor("inception_v3", ...)`` rather than directly.

    Parameters
    ----------
    backbone : Backbone
        Registry entry (bound by the registry).
    weights_dir : path, optional
        Folder holding the weight file, or the file itself (default ``$BLASTSCAN_WEIGHTS_DIR``, else
        the Keras cache).
    random_weights : bool
        Use seeded random weights instead (tests only: the embeddings are meaningless).
    input_size : int, optional
        Square input size in pixels (default: the backbone's own). Part of the identity.
    batch_size : int, optional
        Images per forward pass (default 32). Not part of the identity.
    precision : {"float32", "bf16"}, optional
        ``"bf16"`` runs the network under Keras' ``mixed_bfloat16`` policy (float32 weights, bfloat16
        arithmetic; embeddings within cosine 0.999 of float32). It changes the output, so it is part of
        the identity; float32 (the default) is not written into the config, so float32 tables keep theirs.
        Needs a CPU with bfloat16 instructions (checked when the network is built; see :func:`bf16_support`).

    Raises
    ------
    BlastscanError
        When no weight file is found, or the input size, batch size or precision is invalid.
    """

    version = "1"

    def __init__(self, backbone: Backbone, weights_dir=None, random_weights: bool = False,
                 input_size: int | None = None, batch_size: int | None = None, precision: str | None = None,
                 **_: Any):
        self.backbone = backbone
        self.precision = check_precision(precision)
        self.name = backbone.name
        self.input_size = backbone.input_size if input_size is None else int(input_size)
        self.batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
        if self.input_size < backbone.min_size:
            raise BlastscanError("--input-size", f"{self.input_size} is too small for {backbone.name} "
                                                 f"(at least {backbone.min_size})")
        if self.batch_size < 1:
            raise BlastscanError("--batch-size", f"must be at least 1, not {self.batch_size}")
        self.random_weights = bool(random_weights)
        if self.random_weights:
            self.weights_path, self.weights_sha256 = None, None
        else:
            found = find_weights(backbone, weights_dir)
            if found.path is None:
                raise found.missing_error()
            self.weights_path, self.weights_sha256 = found.path, file_sha256(found.path)
        self._model = None
        self._forward = None
        self._scale = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        # Copies and pickles carry the settings, not the built network: it is rebuilt on first use.
        return {k: v for k, v in self.__dict__.items() if k not in ("_model", "_forward", "_scale", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _model=None, _forward=None, _scale=None, _lock=threading.Lock())

    @property
    def feature_names(self) -> list[str]:
        return [f"{self.name}_avgpool_{i:04d}" for i in range(self.backbone.dim)]

    def build_options(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "random_weights": self.random_weights, "precision": self.precision}

    def config(self) -> dict[str, Any]:
        weights = f"random:seed={RANDOM_SEED}" if self.random_weights else f"sha256:{self.weights_sha256}"
        cfg = {"backbone": self.name, "input_size": self.input_size, "resize": RESIZE, "pooling": "avg",
               "weights": weights}
        if self.precision != "float32":  # float32 stays out: the tables computed before bf16 existed keep their identity
            cfg["precision"] = self.precision
        return cfg

    def check_runtime(self) -> None:
        """Raise :class:`BlastscanError` now if this extractor cannot run here (bf16 on a CPU without it)."""
        if self.precision == "bf16" and os.environ.get(BF16_EMULATED_ENV) != "1":
            ok, why = bf16_support()
            if not ok:
                raise BlastscanError("--precision bf16", f"{why}; use --precision float32 (the default)")

    # -- model ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        """Import Keras, build the network once per instance, load its weights, compile the forward."""
        with self._lock:
            if self._forward is not None:
                return
            import importlib

            from blastscan._tf import import_keras

            keras = import_keras()
            import tensorflow as tf

            self.check_runtime()
            b, s = self.backbone, self.input_size
            preprocess_input = importlib.import_module(f"keras.applications.{b.preprocess_module}").preprocess_input
            previous = keras.config.dtype_policy()
            if self.precision == "bf16":
                # float32 variables (the weight file loads as is), bfloat16 compute; layers built now keep it
                keras.config.set_dtype_policy("mixed_bfloat16")
            try:
                model = getattr(keras.applications, b.constructor)(weights=None, include_top=False, pooling="avg",
                                                                   input_shape=(s, s, 3))
            finally:
                keras.config.set_dtype_policy(previous)
            if self.random_weights:
                _randomise(model, RANDOM_SEED)
            else:
                try:
                    model.load_weights(str(self.weights_path))
                except Exception as exc:  # h5py/Keras raise many types for a wrong or damaged file
                    raise BlastscanError(str(self.weights_path), f"cannot load as {b.name} weights "
                                                                 f"({type(exc).__name__}: {exc})") from None
            model.trainable = False
            spec = [tf.TensorSpec([None, s, s, 3], tf.uint8)]  # open batch size: the last batch does not retrace

            def scale(x):
                return preprocess_input(tf.cast(x, tf.float32))

            # Scaling runs inside the compiled graph: batches travel as uint8 (4x less memory than float32)
            # and the worker threads only decode and resize. A compiled graph is also faster than eager
            # model(x) on CPU and peaks at a fraction of its memory.
            self._scale = tf.function(scale, input_signature=spec)
            def forward(x):
                return tf.cast(model(scale(x), training=False), tf.float32)  # bf16 out under bf16

            self._forward = tf.function(forward, input_signature=spec)
            self._model = model

    def forward(self, batch: np.ndarray) -> np.ndarray:
        """Embeddings (float32, ``(n, dim)``) of a batch of resized RGB uint8 images ``(n, size, size, 3)``.

        The backbone's ``preprocess_input`` is applied inside this compiled function.
        """
        self._build()
        return self._forward(_uint8_batch(batch)).numpy().astype(np.float32, copy=False)

    # -- preprocessing -------------------------------------------------------------------------------
    def resize(self, image: np.ndarray) -> np.ndarray:
        """An RGB uint8 image resized to ``(size, size, 3)`` (antialiased bilinear; the aspect is not kept)."""
        from PIL import Image

        s = self.input_size
        if image.shape[:2] == (s, s):
            return image
        return np.asarray(Image.fromarray(image).resize((s, s), Image.Resampling.BILINEAR))

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The float32 network input for RGB uint8 images: resized, then the backbone's ``preprocess_input``
        (the same compiled step :meth:`forward` runs; for inspection and tests)."""
        self._build()
        return self._scale(np.stack([self.resize(im) for im in images])).numpy()

    def _prepare(self, paths: Sequence[str], lo: int, hi: int):
        """Load and resize ``paths[lo:hi]`` into one uint8 batch (runs in a worker thread)."""
        from blastscan.dataset import load_image

        indices, images, failures = [], [], {}
        for i in range(lo, hi):
            try:
                images.append(self.resize(load_image(paths[i])))
            except BlastscanError as exc:
                failures[i] = exc.why or str(exc)
                continue
            except Exception as exc:  # one odd file must not end a long run; the reason names it
                failures[i] = f"unexpected error ({type(exc).__name__}: {exc}); please report it"
                continue
            indices.append(i)
        return indices, (np.stack(images) if images else None), failures

    def compute_paths(self, paths: Sequence[str]) -> Iterator[BatchResult]:
        """Yield one :class:`BatchResult` per batch of ``paths``, in order, covering every position.

        Worker threads read, decode and resize the next batches while the current one runs through
        the network. An image that cannot be read becomes a failure with its reason.
        """
        self._build()
        paths = [str(p) for p in paths]
        starts = iter(range(0, len(paths), self.batch_size))
        pending: deque = deque()
        with ThreadPoolExecutor(max_workers=PREP_THREADS, thread_name_prefix="blastscan-prep") as pool:

            def submit_next() -> None:
                lo = next(starts, None)
                if lo is not None:
                    pending.append(pool.submit(self._prepare, paths, lo, min(lo + self.batch_size, len(paths))))

            try:
                for _ in range(PREFETCH_BATCHES):
                    submit_next()
                while pending:
                    indices, batch, failures = pending.popleft().result()
                    submit_next()
                    feats = self.forward(batch) if indices else np.zeros((0, self.backbone.dim), np.float32)
                    yield BatchResult(indices, feats, failures)
            finally:
                for fut in pending:  # stopped early (Ctrl-C, error): do not prepare batches nobody reads
                    fut.cancel()


def _uint8_batch(batch: np.ndarray) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.dtype != np.uint8 or batch.ndim != 4:
        raise TypeError(f"expected a uint8 batch (n, size, size, 3) of resized images, got {batch.dtype} {batch.shape}")
    return np.ascontiguousarray(batch)


def _randomise(model, seed: int) -> None:
    """Seeded Glorot-uniform kernels (other variables keep their constant initial values)."""
    rng = np.random.default_rng(seed)
    for var in model.weights:
        shape = tuple(var.shape)
        if len(shape) >= 2:
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            limit = np.sqrt(6.0 / (receptive * (shape[-2] + shape[-1])))
            var.assign(rng.uniform(-limit, limit, size=shape).astype(np.float32))


register_backbone(Backbone(
    name="inception_v3", constructor="InceptionV3", preprocess_module="inception_v3", input_size=299,
    dim=2048, min_size=75, keras_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    keras_subdir="inception_v3", keras_md5="bcbd6486424b2319ff4ef7d526e38f63",
))
register_backbone(Backbone(
    name="vgg16", constructor="VGG16", preprocess_module="vgg16", input_size=224, dim=512, min_size=32,
    keras_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", keras_subdir="vgg16",
    keras_md5="6d6bbae143d832006294945121d1f1fc",
))
