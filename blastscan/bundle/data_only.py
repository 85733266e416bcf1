"""The data-only bundle (``.bsb``): one zip of JSON and ONNX that scores without pickle, TensorFlow or weights.

Loading one parses JSON and ONNX and nothing else: no pickle, no code from the file, so a file crafted to
run code when loaded cannot be made (what ONNX Runtime and the zip and JSON parsers do with hostile bytes
is their own attack surface, as for any data file). Entries, all with fixed names:

``manifest.json``
    ``{"format", "format_version", "entries": {name: {"sha256", "bytes"}}}``: every other entry, its size
    and sha256. The zip's comment holds the sha256 of ``manifest.json`` itself.
``metadata.json``
    The bundle's metadata exactly as the joblib bundle and its sidecar hold it (feature set, extractor
    specs, threshold rule and value, training metrics and split, data hash, versions, and whatever else a
    later blastscan records there), carried over whole.
``model.json``
    How the model is stored: the graph's entry, input width, the classifier, the ONNX Runtime and opset it
    was written for, the members of a vote, and the embedded backbones (entry, graph sha256, weights).
``model.onnx``
    The classifier as one graph: float64 features ``X`` in, ``p_all`` out (:mod:`blastscan.bundle.onnx_model`).
``backbones/<name>.onnx``
    A deep feature set's backbone: the same graph the ONNX Runtime engine caches (``preprocess_input``
    inside, uint8 images in), written from the weights whose sha256 the extractor's identity records.
    Left out with ``embed=False`` (``--no-embed``): then the weight files are looked up and hashed as for
    a joblib bundle.
``extras.json``
    The view's reference (percentiles, importances, reference vectors, JPEG thumbnails), as JSON with
    arrays as ``{"__array__": {"dtype", "shape", "base64"}}`` (little-endian, numeric dtypes only) and
    bytes as ``{"__bytes__": base64}``.

This module sits beside ``bundle.py`` (the joblib format and the Bundle type) rather than in a ``bundle/``
package: moving ``bundle.py`` now would collide with the other changes made to it at the same time; the
planned restructuring moves both formats into ``blastscan/bundle/``.

What the hashes protect against: accidental damage and edits of an entry without its manifest, or of the
manifest without the zip comment. They are not a signature: whoever can write the file can write matching
hashes, so they say nothing about who made it. What a hostile sender can do is limited by the format, not
by the hashes: a data-only bundle can give wrong predictions, not run code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from blastscan import provenance as prov
from blastscan._io import atomic_path
from blastscan.bundle.onnx_model import OPSET, NotWritable, OnnxModel, to_onnx
from blastscan.errors import BlastscanError
from blastscan.features.engines.graph_cache import EmbeddedGraph
from blastscan.features.engines.onnx_export import UnsupportedLayer

__all__ = ["SUFFIX", "DATA_FORMAT", "DATA_FORMAT_VERSION", "is_data_only", "save_data_only", "load_data_only"]

SUFFIX = ".bsb"
DATA_FORMAT = "blastscan-bundle-data"
DATA_FORMAT_VERSION = 1
_COMMENT = b"blastscan-bsb manifest-sha256="
_FIXED = ("manifest.json", "metadata.json", "model.json", "model.onnx", "extras.json")
_BACKBONE = re.compile(r"^backbones/([a-z0-9_]{1,64})\.onnx$")
_MAX_JSON = 256 << 20
_MAX_ONNX = 1 << 30
_MAX_TOTAL = 3 << 30
_MAX_ENTRIES = 64
_DTYPES = {"float64", "float32", "int64", "int32", "uint8", "bool"}


def is_data_only(path: str | os.PathLike) -> bool:
    """Whether ``path`` is to be read as a data-only bundle: its suffix is ``.bsb``, or it is a zip."""
    path = Path(path)
    if path.suffix.lower() == SUFFIX:
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PK\x03\x04"
    except OSError:
        return False


# -- JSON with arrays and bytes ------------------------------------------------------------------------
def _encode(obj: Any, where: str) -> Any:
    if isinstance(obj, dict):
        return {str(k): _encode(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in _DTYPES:
            raise TypeError(f"{where}: arrays of {obj.dtype} are not written")
        data = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<"))
        return {"__array__": {"dtype": obj.dtype.name, "shape": list(obj.shape),
                              "base64": base64.b64encode(data.tobytes()).decode("ascii")}}
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(obj)).decode("ascii")}
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{where}: a {type(obj).__name__} is not data a bundle can hold")


def _decode(obj: Any, where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj or "__bytes__" in obj:
        if len(obj) != 1:
            raise ValueError(f"{where}: a tagged value with other keys")
        if "__bytes__" in obj:
            return base64.b64decode(_str(obj["__bytes__"], where), validate=True)
        spec = obj["__array__"]
        if not isinstance(spec, dict) or set(spec) != {"dtype", "shape", "base64"}:
            raise ValueError(f"{where}: an array needs exactly dtype, shape and base64")
        dtype = spec["dtype"]
        shape = spec["shape"]
        if dtype not in _DTYPES:
            raise ValueError(f"{where}: array dtype {dtype!r} is not one of {sorted(_DTYPES)}")
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                  for n in shape):
            raise ValueError(f"{where}: array shape {shape!r} is not a list of sizes")
        raw = base64.b64decode(_str(spec["base64"], where), validate=True)
        dt = np.dtype(dtype).newbyteorder("<")
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * dt.itemsize:
            raise ValueError(f"{where}: array data does not fit its shape {shape}")
        return np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype)).reshape(shape)
    return {k: _decode(v, f"{where}.{k}") for k, v in obj.items()}


def _str(value, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string")
    return value


def _strict_object(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} twice")
        out[k] = v
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def _json_loads(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), object_pairs_hook=_strict_object, parse_constant=_reject_constant)


def _json_bytes(obj) -> bytes:
    return json.dumps(obj, indent=1, allow_nan=False, sort_keys=False).encode("utf-8")


# -- writing ---------------------------------------------------------------------------------------------
def _backbone_graphs(bundle, extractor_options) -> dict[str, tuple[bytes, str]]:
    """name -> (graph bytes, weights identity) for every deep extractor of the bundle's feature set."""
    records = [r for r in bundle.metadata.get("extractors", []) if r.get("kind") == "batch"]
    if not records:
        return {}
    fs = bundle.features(extractor_options)
    out = {}
    for rec, ext in zip(bundle.metadata["extractors"], fs.extractors):
        if rec.get("kind") != "batch":
            continue
        graph = getattr(ext, "onnx_graph", None)
        try:
            if graph is None:
                raise UnsupportedLayer(f"{rec['name']} has no ONNX graph")
            out[rec["name"]] = (graph(), str(ext.config().get("weights")))
        except UnsupportedLayer as exc:
            raise BlastscanError(rec["name"], f"its network cannot go into a data-only bundle ({exc}); "
                                              "pass --no-embed (scoring then needs the weight files)") from None
    return out


def save_data_only(bundle, path: str | os.PathLike, *, embed: bool = True, extractor_options=None) -> Path:
    """Write ``bundle`` as a data-only bundle at ``path`` (atomically).

    ``embed`` puts the backbones' ONNX graphs in (found in the engine's cache, else exported once from
    the weights, which needs TensorFlow); ``extractor_options`` say where the weights are now.

    Raises
    ------
    BlastscanError
        When the model (or a backbone) has no ONNX writer: one line naming it; a joblib bundle still works.
    """
    path = Path(path)
    metadata = prov.to_jsonable(bundle.metadata)
    clf = metadata.get("classifier", "?")
    try:
        graph = to_onnx(bundle.model, int(metadata["n_features"])).SerializeToString()
    except NotWritable as exc:
        raise BlastscanError(str(path), f"classifier '{clf}' cannot be written as a data-only bundle yet (no ONNX "
                                        f"writer for {exc}); write a joblib bundle instead (--out model.joblib)") from None
    embedded = dict(bundle.extras.get("embedded_backbones") or {})
    backbones = {}
    if embed:
        graphs = ({n: (g.data, g.weights) for n, g in embedded.items()} if embedded
                  else _backbone_graphs(bundle, extractor_options))
        backbones = {n: {"entry": f"backbones/{n}.onnx", "sha256": hashlib.sha256(b).hexdigest(), "weights": w,
                         "bytes": len(b)} for n, (b, w) in graphs.items()}
    members = [{k: m.get(k) for k in ("classifier", "columns")}
               for m in (metadata.get("params") or {}).get("members") or []] if clf == "vote" else []
    versions = prov.library_versions(("onnxruntime", "onnx"))
    model = {"graph": "model.onnx", "input": "X", "output": "p_all", "n_features": int(metadata["n_features"]),
             "classifier": clf, "members": members, "opset": OPSET, "onnxruntime": versions.get("onnxruntime"),
             "onnx": versions.get("onnx"), "backbones": backbones}
    extras = {k: v for k, v in bundle.extras.items() if k != "embedded_backbones"}
    try:
        files = {"metadata.json": _json_bytes(metadata), "model.json": _json_bytes(model), "model.onnx": graph,
                 "extras.json": _json_bytes(_encode(extras, "extras"))}
    except TypeError as exc:
        raise BlastscanError(str(path), f"cannot write as data ({exc})") from None
    for name, info in backbones.items():
        files[info["entry"]] = graphs[name][0]
    manifest = {"format": DATA_FORMAT, "format_version": DATA_FORMAT_VERSION,
                "entries": {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in files.items()}}
    manifest_bytes = _json_bytes(manifest)
    try:
        with atomic_path(path) as tmp:
            with zipfile.ZipFile(tmp, "w") as zf:
                zf.writestr("manifest.json", manifest_bytes, compress_type=zipfile.ZIP_DEFLATED)
                for name, data in files.items():
                    # float weights barely compress: the graphs are stored, the JSON deflated
                    kind = zipfile.ZIP_STORED if name.endswith(".onnx") else zipfile.ZIP_DEFLATED
                    zf.writestr(name, data, compress_type=kind)
                zf.comment = _COMMENT + hashlib.sha256(manifest_bytes).hexdigest().encode()
    except OSError as exc:
        raise BlastscanError(str(path), f"cannot write ({exc.strerror or exc})") from None
    bundle.path = path
    return path


# -- reading ---------------------------------------------------------------------------------------------
def _refuse(path, why: str):
    raise BlastscanError(str(path), f"{why}; refusing this data-only bundle (make it again with `blastscan train` "
                                    "or `blastscan export`)")


def _read_entries(path: Path) -> dict[str, bytes]:
    """Every entry, checked against the manifest, which is checked against the zip comment."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        _refuse(path, f"not a readable zip ({exc})")
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(infos) > _MAX_ENTRIES or len(set(names)) != len(names):
            _refuse(path, "too many or repeated entries")
        for info in infos:
            ok = info.filename in _FIXED or _BACKBONE.match(info.filename)
            if not ok:
                _refuse(path, f"unexpected entry {info.filename!r}")
            if info.flag_bits & 0x1:
                _refuse(path, f"entry {info.filename} is encrypted")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                _refuse(path, f"entry {info.filename} uses compression method {info.compress_type}")
            limit = _MAX_ONNX if info.filename.endswith(".onnx") else _MAX_JSON
            if info.file_size > limit:
                _refuse(path, f"entry {info.filename} is {info.file_size} bytes (limit {limit})")
        if sum(i.file_size for i in infos) > _MAX_TOTAL:
            _refuse(path, "entries larger than the limit in all")
        comment = zf.comment
        if not comment.startswith(_COMMENT):
            _refuse(path, "no manifest hash in the zip comment")
        data = {}
        try:
            for info in infos:
                with zf.open(info) as fh:
                    data[info.filename] = fh.read(info.file_size + 1)
                if len(data[info.filename]) != info.file_size:
                    _refuse(path, f"entry {info.filename} is not the size its header says")
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
            _refuse(path, f"damaged ({type(exc).__name__}: {exc})")
    man = data.get("manifest.json")
    if man is None:
        _refuse(path, "no manifest.json")
    if hashlib.sha256(man).hexdigest().encode() != comment[len(_COMMENT):]:
        _refuse(path, "manifest.json does not match the hash in the zip comment: the file was edited or damaged")
    try:
        manifest = _json_loads(man)
    except (ValueError, UnicodeDecodeError) as exc:
        _refuse(path, f"manifest.json is not valid JSON ({exc})")
    if not isinstance(manifest, dict) or manifest.get("format") != DATA_FORMAT:
        _refuse(path, "not a blastscan data-only bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        _refuse(path, "manifest.json has no format_version")
    if version > DATA_FORMAT_VERSION:
        raise BlastscanError(str(path), f"data-only bundle format {version} is newer than this blastscan reads "
                                        f"({DATA_FORMAT_VERSION}); upgrade blastscan")
    entries = manifest.get("entries")
    if not isinstance(entries, dict) or set(entries) != set(data) - {"manifest.json"}:
        _refuse(path, "the zip's entries are not those its manifest lists")
    for name, info in entries.items():
        if not isinstance(info, dict) or set(info) != {"sha256", "bytes"}:
            _refuse(path, f"manifest entry {name!r} is malformed")
        if info["bytes"] != len(data[name]) or info["sha256"] != hashlib.sha256(data[name]).hexdigest():
            _refuse(path, f"entry {name} does not match its sha256 in manifest.json: the file was edited or damaged")
    for name in ("metadata.json", "model.json", "model.onnx", "extras.json"):
        if name not in data:
            _refuse(path, f"no {name}")
    return data


def _check_model_json(path, model: Any, metadata: dict) -> None:
    """Strict schema of model.json (types and cross-references)."""
    def bad(why):
        _refuse(path, f"model.json: {why}")

    want = {"graph", "input", "output", "n_features", "classifier", "members", "opset", "onnxruntime", "onnx",
            "backbones"}
    if not isinstance(model, dict) or set(model) != want:
        bad(f"needs exactly the keys {sorted(want)}")
    if model["graph"] != "model.onnx" or model["input"] != "X" or model["output"] != "p_all":
        bad("graph, input and output must be model.onnx, X and p_all")
    n = model["n_features"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n != metadata.get("n_features"):
        bad("n_features is not a positive integer equal to metadata's")
    if not isinstance(model["classifier"], str) or not isinstance(model["members"], list):
        bad("classifier must be a string and members a list")
    if not isinstance(model["opset"], int) or not all(isinstance(model[k], (str, type(None)))
                                                       for k in ("onnxruntime", "onnx")):
        bad("opset must be an integer and the versions strings")
    backbones = model["backbones"]
    if not isinstance(backbones, dict):
        bad("backbones must be an object")
    recorded = {r.get("name"): r for r in metadata.get("extractors", []) if isinstance(r, dict)}
    for name, info in backbones.items():
        if not isinstance(info, dict) or set(info) != {"entry", "sha256", "weights", "bytes"}:
            bad(f"backbone {name!r} needs exactly entry, sha256, weights and bytes")
        if info["entry"] != f"backbones/{name}.onnx" or not _BACKBONE.match(info["entry"]):
            bad(f"backbone {name!r} has entry {info['entry']!r}")
        if name not in recorded or recorded[name].get("kind") != "batch":
            bad(f"backbone {name!r} is not a deep extractor of the feature set")
        cfg = recorded[name].get("config") or {}
        if info["weights"] != cfg.get("weights"):
            bad(f"backbone {name!r} was written from weights {info['weights']!r}, the features from "
                f"{cfg.get('weights')!r}")
        if not isinstance(info["sha256"], str) or not isinstance(info["bytes"], int):
            bad(f"backbone {name!r}: sha256 must be a string and bytes an integer")


def _check_metadata(path, metadata: Any) -> None:
    def bad(why):
        _refuse(path, f"metadata.json: {why}")

    if not isinstance(metadata, dict):
        bad("not an object")
    for key, kind in (("feature_set", str), ("feature_names", list), ("n_features", int), ("extractors", list),
                      ("classifier", str), ("threshold", dict), ("training_metrics", dict), ("training_data", dict)):
        if not isinstance(metadata.get(key), kind) or isinstance(metadata.get(key), bool):
            bad(f"{key} is missing or not a {kind.__name__}")
    if len(metadata["feature_names"]) != metadata["n_features"] or not all(
            isinstance(n, str) for n in metadata["feature_names"]):
        bad("feature_names are not n_features strings")
    value = metadata["threshold"].get("value")
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        bad("threshold.value is not a number in [0, 1]")
    for rec in metadata["extractors"]:
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str) or not isinstance(rec.get("identity"), str):
            bad("an extractor record without name or identity")
        if not isinstance(rec.get("options") or {}, dict) or not isinstance(rec.get("config") or {}, dict):
            bad(f"extractor {rec.get('name')}: options and config must be objects")


def load_data_only(path: str | os.PathLike) -> tuple[Any, dict, dict]:
    """Read a data-only bundle: JSON and ONNX only, every entry checked against the manifest first.

    Returns ``(model, metadata, extras)``: an :class:`~blastscan.bundle.onnx_model.OnnxModel`, the metadata as
    written, and the extras (the view's reference; ``"embedded_backbones"``: name ->
    :class:`~blastscan.features.engines.graph_cache.EmbeddedGraph`). :func:`blastscan.bundle.load_bundle` makes the
    Bundle. Raises ``BlastscanError`` (one line) for anything edited, damaged, unexpected or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise BlastscanError(str(path), "no such bundle file")
    data = _read_entries(path)
    try:
        metadata = _json_loads(data["metadata.json"])
        model = _json_loads(data["model.json"])
        extras = _decode(_json_loads(data["extras.json"]), "extras")
    except (ValueError, UnicodeDecodeError, TypeError) as exc:
        _refuse(path, f"malformed JSON ({exc})")
    _check_metadata(path, metadata)
    _check_model_json(path, model, metadata)
    if not isinstance(extras, dict):
        _refuse(path, "extras.json is not an object")
    try:
        estimator = OnnxModel(data["model.onnx"])
    except Exception as exc:  # onnxruntime raises its own types for a graph it cannot run
        _refuse(path, f"model.onnx does not load in ONNX Runtime ({type(exc).__name__}: {str(exc)[:200]})")
    if estimator.n_features_in_ != metadata["n_features"]:
        _refuse(path, f"model.onnx reads {estimator.n_features_in_} features, the metadata names {metadata['n_features']}")
    embedded = {}
    for name, info in model["backbones"].items():
        blob = data.get(info["entry"])
        if blob is None or hashlib.sha256(blob).hexdigest() != info["sha256"]:
            _refuse(path, f"backbone {name}: its graph is missing or not the one model.json names")
        embedded[name] = EmbeddedGraph(name, blob, info["sha256"], info["weights"])
    extra_entries = {n for n in data if _BACKBONE.match(n)} - {i["entry"] for i in model["backbones"].values()}
    if extra_entries:
        _refuse(path, f"entries no part of the model uses: {sorted(extra_entries)}")
    if embedded:
        extras["embedded_backbones"] = embedded
    return estimator, metadata, extras
