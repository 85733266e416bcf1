"""What a frozen ImageNet backbone is, and where its weights are.

:class:`Backbone` holds everything that defines a backbone's output (the Keras constructor, the module
whose ``preprocess_input`` matches its training, its default input size, its embedding width, the weight
files it accepts); :data:`BACKBONES` is the registry that ``blastscan.features.deep`` fills.

Weights are resolved when an extractor is built (no TensorFlow needed), in this order:

1. ``weights_dir`` (``--weights-dir``; ``$BLASTSCAN_WEIGHTS_DIR`` when not given). A folder is searched
   for ``<backbone>_imagenet_notop.weights.h5``, then Keras' own file name (e.g.
   ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``). A file is used as is, unless its name is
   another backbone's. When ``weights_dir`` is given, only it is searched: what you point at is what runs.
2. Otherwise the Keras cache (``$KERAS_HOME/models``, else ``~/.keras/models``), for the same names.

Nothing found is a :class:`~blastscan.errors.BlastscanError` that says what was looked for, where, and
how to provide it; there is never a silent fallback to random weights. Nothing is downloaded
implicitly: offline, Keras' download fails only after a delay with a bare ``Exception("URL fetch
failure")``. :func:`download_weights` (``blastscan weights --download``) fetches Keras' files on purpose
and turns that failure into a clear error. The weight file's sha256 is cached by path, size, mtime, inode
and ctime (:func:`file_sha256`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from blastscan._io import atomic_write_bytes
from blastscan.errors import BlastscanError

__all__ = ["Backbone", "BACKBONES", "PREPROCESS_MODES", "Preprocessing", "WEIGHTS_ENV", "WeightsLookup",
           "download_weights", "file_sha256", "find_weights", "keras_cache_dir", "user_cache_dir"]

WEIGHTS_ENV = "BLASTSCAN_WEIGHTS_DIR"
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
    preprocess_mode : str, optional
        The ``keras.applications`` preprocessing mode of ``preprocess_module`` (a key of
        :data:`PREPROCESS_MODES`: ``"tf"``, ``"caffe"``), for the graph engines, which write it into their
        graph; None: that backbone runs on TensorFlow.
    taps : tuple of (str, int)
        Intermediate layers whose global-average-pooled output a variant may take instead of the last
        block's (``inception_v3_mixed7``), with their channel counts.
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
    preprocess_mode: str | None = None
    taps: tuple[tuple[str, int], ...] = ()

    @property
    def weight_files(self) -> tuple[str, ...]:
        """Local file names accepted for this backbone, in order of preference."""
        return (f"{self.name}_imagenet_notop.weights.h5", self.keras_file)

    @property
    def keras_url(self) -> str:
        return f"{_KERAS_URL}{self.keras_subdir}/{self.keras_file}"


BACKBONES: dict[str, Backbone] = {}


@dataclass(frozen=True)
class Preprocessing:
    """A ``keras.applications`` ``preprocess_input`` mode on RGB input, as the graph engines write it:
    ``x * scale + offset`` per RGB channel, then the channels reversed to BGR where ``bgr``."""

    scale: tuple[float, float, float]
    offset: tuple[float, float, float]
    bgr: bool


#: The preprocessing modes a :class:`Backbone`'s ``preprocess_mode`` may name.
PREPROCESS_MODES: dict[str, Preprocessing] = {
    "tf": Preprocessing(scale=(1 / 127.5,) * 3, offset=(-1.0,) * 3, bgr=False),  # [0, 255] -> [-1, 1]
    "caffe": Preprocessing(scale=(1.0,) * 3, offset=(-123.68, -116.779, -103.939), bgr=True),  # minus ImageNet mean
}


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


def user_cache_dir() -> Path:
    """blastscan's folder in the user cache: ``$XDG_CACHE_HOME/blastscan``, else ``~/.cache/blastscan``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "blastscan"


def _sha_cache_file() -> Path:
    return user_cache_dir() / "weights-sha256.json"


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
