"""The graph cache of the graph engines: the ONNX graph of a backbone (:mod:`.onnx_export`) written once
and read back on later runs, checked each time; and the graph a data-only bundle carries (:class:`EmbeddedGraph`).

The graph is cached in the user cache folder (``$XDG_CACHE_HOME/blastscan/onnx``, else
``~/.cache/blastscan/onnx``), named by backbone, input size, the weight file's sha256 and
:data:`~.onnx_export.EXPORTER_VERSION`; it is written to a temporary file and renamed, with a record beside it
(``<graph>.json``: its sha256, name, input size, embedding width, preprocessing). On every load the file
must match that record and give finite embeddings of the right shape on a probe batch; otherwise (bytes
flipped, another network under the name, no record) it is rebuilt from the weights. Any
engine that runs the cached graph gets these checks through :func:`load_or_export` (``runner``).
Unwritable cache means no cache.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from blastscan._io import atomic_write_bytes, file_sha256
from blastscan.errors import BlastscanError
from blastscan.features.backbones import user_cache_dir
from blastscan.features.engines.onnx_export import EXPORTER_VERSION, export_keras
from blastscan.features.engines.onnxruntime import OnnxRunner

__all__ = ["EmbeddedGraph", "PROBE_IMAGES", "PROBE_SEED", "cache_path", "graph_bytes", "load_or_export",
           "probe_problem", "record_path"]


class EmbeddedGraph:
    """A backbone's graph carried by a data-only bundle (its bytes already checked against the bundle's
    manifest): the extractor runs it instead of looking for weight files.

    ``weights`` is the weights' identity the graph was written from, as the extractor's config records it
    (``"sha256:<hex>"`` or ``"random:seed=0"``). Its ``repr`` names the graph by hash (extractors are
    cached by the repr of their options).
    """

    def __init__(self, backbone: str, data: bytes, sha256: str, weights: str):
        self.backbone, self.data, self.sha256, self.weights = backbone, data, sha256, weights

    def __repr__(self) -> str:
        return f"EmbeddedGraph({self.backbone}, sha256={self.sha256[:16]})"


def cache_path(backbone: str, input_size: int, weights_sha256: str) -> Path:
    """Where the graph of ``backbone`` at ``input_size`` px from the weights ``weights_sha256`` is cached."""
    return user_cache_dir() / "onnx" / f"{backbone}-{input_size}px-{weights_sha256[:16]}-x{EXPORTER_VERSION}.onnx"


#: The probe batch every loaded graph must turn into finite embeddings of the recorded width.
PROBE_IMAGES, PROBE_SEED = 2, 24


def record_path(path: Path) -> Path:
    """The record written beside a cached graph (``<graph>.json``)."""
    return path.with_name(path.name + ".json")


def probe_problem(run: Callable[[np.ndarray], np.ndarray], input_size: int, dim: int | None) -> str | None:
    """Why ``run`` (a loaded graph) is not the expected network, or ``None``: it must take a uint8 batch
    ``(n, input_size, input_size, 3)`` and give finite float embeddings ``(n, dim)``."""
    batch = np.random.default_rng(PROBE_SEED).integers(0, 256, (PROBE_IMAGES, input_size, input_size, 3), np.uint8)
    try:
        out = np.asarray(run(batch))
    except Exception as exc:  # another input size or type: the runtime refuses the batch
        return f"does not take {input_size} px uint8 images ({type(exc).__name__})"
    if out.ndim != 2 or out.shape[0] != PROBE_IMAGES or (dim is not None and out.shape[1] != dim):
        return f"gives embeddings of shape {out.shape[1:]}, expected ({dim},)"
    if not np.isfinite(out).all():
        return "gives NaN or inf on a probe batch"
    return None


def _record_problem(path: Path, input_size: int, preprocess: str, dim: int | None) -> tuple[str | None, dict]:
    """Why the cached graph at ``path`` does not match its record (or has none), and the record."""
    try:
        rec = json.loads(record_path(path).read_text())
    except FileNotFoundError:
        return "has no checksum record", {}
    except (OSError, ValueError):
        return "has an unreadable checksum record", {}
    if not isinstance(rec, dict):
        return "has an unreadable checksum record", {}
    want = {"graph": path.name, "input_size": input_size, "preprocess": preprocess, "exporter_version": EXPORTER_VERSION}
    if dim is not None:
        want["dim"] = dim
    wrong = [k for k, v in want.items() if rec.get(k) != v]
    if wrong:
        return f"is recorded as another network ({wrong[0]} {rec.get(wrong[0])!r})", rec
    if rec.get("sha256") != file_sha256(path):
        return "does not match the sha256 recorded when it was written", rec
    return None, rec


def graph_bytes(path: Path | None, build_keras, input_size: int, preprocess: str, *, dim: int | None = None) -> bytes:
    """The serialised graph: the cached file at ``path`` when it passes :func:`load_or_export`'s checks, else
    exported from ``build_keras()`` (and cached with its record). What a data-only bundle embeds: the same
    graph the engine runs, checked the same way."""
    seen: dict[str, Any] = {}

    def runner(model, threads):
        seen["model"] = model
        return OnnxRunner(model, threads)

    load_or_export(path, build_keras, input_size, preprocess, 1, dim=dim, runner=runner)
    model = seen["model"]
    return model if isinstance(model, bytes) else Path(model).read_bytes()


def load_or_export(path: Path | None, build_keras, input_size: int, preprocess: str,
                   threads: int | None = None, *, dim: int | None = None,
                   runner: Callable[[Any, int | None], Callable] | None = None):
    """The runner for the cached graph at ``path``, exporting (and caching) it from ``build_keras()`` when
    it is missing, does not load, does not match its recorded sha256 and identity, or gives other than
    finite ``(n, dim)`` embeddings on a probe batch. ``path`` None: export in memory, cache nothing.

    ``runner(model, threads)`` makes the callable that runs a graph (``model``: a path or the serialised
    bytes); default :class:`~.onnxruntime.OnnxRunner`. Another engine passes its own and gets the same checks.
    """
    make = runner or OnnxRunner
    if path is not None and path.is_file():
        why, rec = _record_problem(path, input_size, preprocess, dim)
        if why is None:
            try:
                run = make(path, threads)
                why = probe_problem(run, input_size, rec.get("dim"))
            except Exception as exc:  # a damaged cache entry: written again below
                why = f"does not load ({type(exc).__name__})"
            if why is None:
                return run
        if why != "has no checksum record":  # graphs cached before graphs carried a record are rebuilt without a word
            print(f"blastscan: the cached graph {path} {why}; building it again from the weights", file=sys.stderr)
    blob = export_keras(build_keras(), input_size, preprocess)
    run = make(blob, threads)
    why = probe_problem(run, input_size, dim)
    if why is not None:
        raise BlastscanError(str(path or "the ONNX graph"), f"freshly built from the weights, it {why}; "
                                                            "check the weight file (blastscan weights)")
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, blob)
            out_dim = dim if dim is not None else int(np.asarray(run(np.zeros((1, input_size, input_size, 3),
                                                                              np.uint8))).shape[1])
            rec = {"graph": path.name, "sha256": file_sha256(path), "input_size": input_size, "dim": out_dim,
                   "preprocess": preprocess, "exporter_version": EXPORTER_VERSION}
            atomic_write_bytes(record_path(path), json.dumps(rec, indent=1).encode())
        except OSError:
            pass  # no cache, same result
    return run
