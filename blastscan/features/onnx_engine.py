"""ONNX Runtime as the engine of the frozen backbones in float32: the Keras network written as an ONNX
graph once, then run by onnxruntime.

Why: on a 2-core AVX2 machine, onnxruntime ran InceptionV3 about 1.5x faster than TensorFlow's compiled
forward on the same batches (embeddings' cosine to Keras 0.9999999), and once the graph is cached a run
imports neither TensorFlow nor Keras (about 3.6 s saved) and traces nothing (benchmarks/bench_deep.py).

The graph is read off the built Keras model, layer by layer, so the architecture and the weights are
Keras' own: nothing is re-declared here. The layer types the registered backbones use are written
(:data:`SUPPORTED`); a network with another layer raises :class:`UnsupportedLayer` and the extractor
falls back to TensorFlow. The backbone's ``preprocess_input`` is part of the graph (uint8 NHWC in,
float32 embeddings out), as in the TensorFlow path, so batches travel as uint8.

The graph is cached in the user cache folder (``$XDG_CACHE_HOME/blastscan/onnx``, else
``~/.cache/blastscan/onnx``), named by backbone, input size, the weight file's sha256 and
:data:`EXPORTER_VERSION`; it is written to a temporary file and renamed, with a record beside it
(``<graph>.json``: its sha256, name, input size, embedding width, preprocessing). On every load the file
must match that record and give finite embeddings of the right shape on a probe batch; otherwise (bytes
flipped, another network under the name, no record) it is rebuilt from the weights. Any
engine that runs the cached graph gets these checks through :func:`load_or_export` (``runner``).
Unwritable cache means no cache.

TensorFlow and ONNX Runtime give the same function up to float32 rounding (the two engines order their
sums differently, as TensorFlow itself does across CPUs); the engine is therefore not part of the
feature identity, like the batch size. ``tests/test_onnx_engine.py`` checks that bound on real cells.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["EXPORTER_VERSION", "SUPPORTED", "UnsupportedLayer", "EmbeddedGraph", "available", "cache_path",
           "export_keras", "graph_bytes", "OnnxRunner", "load_or_export", "record_path", "probe_problem"]

EXPORTER_VERSION = 1  # bump when the written graph changes
OPSET = 17
SUPPORTED = ("InputLayer", "Conv2D", "BatchNormalization", "Activation", "ReLU", "MaxPooling2D",
             "AveragePooling2D", "Concatenate", "GlobalAveragePooling2D", "Flatten")
# preprocess_input modes of keras.applications, as (scale, offset) per RGB channel and channel order
_PREPROCESS = {
    "tf": {"scale": (1 / 127.5,) * 3, "offset": (-1.0,) * 3, "bgr": False},
    "caffe": {"scale": (1.0,) * 3, "offset": (-123.68, -116.779, -103.939), "bgr": True},
}


class UnsupportedLayer(Exception):
    """The network holds a layer (or a setting) this exporter does not write."""


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


def available() -> tuple[bool, str]:
    """``(True, "")`` when onnxruntime and onnx are installed, else ``(False, why)`` (nothing is imported:
    a run over a cached graph never imports onnx)."""
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed; pip install onnxruntime onnx"
    return True, ""


def cache_path(backbone: str, input_size: int, weights_sha256: str) -> Path:
    from blastscan.features.backbones import user_cache_dir

    return user_cache_dir() / "onnx" / f"{backbone}-{input_size}px-{weights_sha256[:16]}-x{EXPORTER_VERSION}.onnx"


# -- writing the graph ---------------------------------------------------------------------------------
def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _inputs(layer_cfg: dict) -> list[str]:
    """Names of the layers feeding ``layer_cfg`` (Keras 3 functional config: keras_history)."""
    nodes = layer_cfg.get("inbound_nodes") or []
    if len(nodes) > 1:
        raise UnsupportedLayer(f"layer {layer_cfg['name']} is called more than once")
    names: list[str] = []

    def walk(x):
        if isinstance(x, dict) and "keras_history" in x.get("config", {}):
            hist = x["config"]["keras_history"]
            if hist[1] != 0 or hist[2] != 0:
                raise UnsupportedLayer(f"layer {layer_cfg['name']} reads a second output of {hist[0]}")
            names.append(hist[0])
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)

    for node in nodes:
        walk(node.get("args", []))
    return names


def _pool_attrs(cfg: dict) -> dict[str, Any]:
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedLayer("pooling with channels_first data")
    pool = _pair(cfg["pool_size"])
    strides = _pair(cfg.get("strides") or cfg["pool_size"])
    pad = {"valid": {"pads": [0, 0, 0, 0]}, "same": {"auto_pad": "SAME_UPPER"}}[cfg["padding"]]
    return {"kernel_shape": pool, "strides": strides, **pad}


def _input_nodes(model, input_size, preprocess, node, const):
    """The graph's input ``x`` and the nodes turning it into the network's NCHW float32 input: ``(name of
    that tensor, input's ValueInfo)``."""
    from onnx import TensorProto, helper

    if preprocess is None:  # float32 activations NHWC -> NCHW
        x_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *[int(d) for d in model.input_shape[1:]]])
        return node("Transpose", ["x"], "pre/nchw", perm=[0, 3, 1, 2]), x_in
    # uint8 NHWC -> float32 -> preprocess_input (per-channel affine, RGB->BGR for caffe) -> NCHW
    pre = _PREPROCESS[preprocess]
    x = node("Cast", ["x"], "pre/cast", to=TensorProto.FLOAT)
    x = node("Mul", [x, const("pre/scale", np.asarray(pre["scale"], np.float32))], "pre/scaled")
    x = node("Add", [x, const("pre/offset", np.asarray(pre["offset"], np.float32))], "pre/shifted")
    x = node("Transpose", [x], "pre/nchw", perm=[0, 3, 1, 2])
    if pre["bgr"]:
        x = node("Gather", [x, const("pre/bgr", np.asarray([2, 1, 0], np.int64))], "pre/bgr_out", axis=1)
    return x, helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", input_size, input_size, 3])


def export_keras(model, input_size: int | None, preprocess: str | None) -> bytes:
    """The ONNX graph (serialised ``ModelProto``) of a built Keras functional ``model``.

    Input ``x``: uint8 ``(n, input_size, input_size, 3)`` RGB; output ``embedding``: float32 ``(n, dim)``.
    ``preprocess`` names the ``keras.applications`` preprocessing mode (``"tf"``, ``"caffe"``). ``preprocess``
    None: the model reads activations of an earlier block instead, and ``x`` is float32 ``(n, h, w, c)``, the
    model's own input shape (``input_size`` unused).

    Raises
    ------
    UnsupportedLayer
        When the model holds a layer or setting not written here.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if preprocess is not None and preprocess not in _PREPROCESS:
        raise UnsupportedLayer(f"preprocessing mode {preprocess!r}")
    cfg = model.get_config()
    layers = {layer.name: layer for layer in model.layers}
    nodes, inits = [], []

    def const(name: str, arr) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    x, x_in = _input_nodes(model, input_size, preprocess, node, const)
    out_of: dict[str, str] = {}

    for lc in cfg["layers"]:
        kind, name, c = lc["class_name"], lc["name"], lc["config"]
        if kind not in SUPPORTED:
            raise UnsupportedLayer(f"layer {name} ({kind})")
        ins = [out_of[n] for n in _inputs(lc)]
        layer = layers[name]
        if kind == "InputLayer":
            out_of[name] = x
            continue
        if kind == "Conv2D":
            if c.get("data_format", "channels_last") != "channels_last" or c.get("groups", 1) != 1:
                raise UnsupportedLayer(f"layer {name} (grouped or channels_first convolution)")
            if c["padding"] not in ("valid", "same"):
                raise UnsupportedLayer(f"layer {name} (padding {c['padding']})")
            kernel = np.asarray(layer.kernel.numpy(), np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW
            args = [ins[0], const(f"{name}/W", kernel)]
            if c.get("use_bias"):
                args.append(const(f"{name}/B", np.asarray(layer.bias.numpy(), np.float32)))
            pad = {"pads": [0, 0, 0, 0]} if c["padding"] == "valid" else {"auto_pad": "SAME_UPPER"}
            y = node("Conv", args, f"{name}/conv", kernel_shape=_pair(c["kernel_size"]), strides=_pair(c["strides"]),
                     dilations=_pair(c.get("dilation_rate", 1)), **pad)
            act = c.get("activation", "linear")
            if act not in ("linear", "relu"):
                raise UnsupportedLayer(f"layer {name} (activation {act})")
            out_of[name] = node("Relu", [y], f"{name}/relu") if act == "relu" else y
        elif kind == "BatchNormalization":
            if c["axis"] not in (-1, 3, [3], [-1]):
                raise UnsupportedLayer(f"layer {name} (normalising axis {c['axis']})")
            mean = np.asarray(layer.moving_mean.numpy(), np.float32)
            gamma = layer.gamma.numpy() if c.get("scale", True) else np.ones_like(mean)
            beta = layer.beta.numpy() if c.get("center", True) else np.zeros_like(mean)
            args = [ins[0], const(f"{name}/gamma", np.asarray(gamma, np.float32)),
                    const(f"{name}/beta", np.asarray(beta, np.float32)), const(f"{name}/mean", mean),
                    const(f"{name}/var", np.asarray(layer.moving_variance.numpy(), np.float32))]
            out_of[name] = node("BatchNormalization", args, f"{name}/bn", epsilon=float(c["epsilon"]))
        elif kind in ("Activation", "ReLU"):
            relu = (c.get("activation") == "relu" if kind == "Activation" else
                    c.get("max_value") is None and not c.get("negative_slope") and not c.get("threshold"))
            if not relu:
                raise UnsupportedLayer(f"layer {name} ({kind} other than a plain relu)")
            out_of[name] = node("Relu", ins, f"{name}/relu")
        elif kind == "MaxPooling2D":
            out_of[name] = node("MaxPool", ins, f"{name}/pool", **_pool_attrs(c))
        elif kind == "AveragePooling2D":  # TensorFlow's "same" average leaves the padding out of the count
            out_of[name] = node("AveragePool", ins, f"{name}/pool", count_include_pad=0, **_pool_attrs(c))
        elif kind == "Concatenate":
            if c["axis"] not in (-1, 3):
                raise UnsupportedLayer(f"layer {name} (concatenation on axis {c['axis']})")
            out_of[name] = node("Concat", ins, f"{name}/concat", axis=1)
        elif kind == "GlobalAveragePooling2D":
            if c.get("keepdims") or c.get("data_format", "channels_last") != "channels_last":
                raise UnsupportedLayer(f"layer {name} (keepdims or channels_first)")
            y = node("GlobalAveragePool", ins, f"{name}/gap")
            out_of[name] = node("Flatten", [y], f"{name}/flat", axis=1)
        elif kind == "Flatten":  # Keras flattens channels-last: back to NHWC first
            if c.get("data_format", "channels_last") != "channels_last":
                raise UnsupportedLayer(f"layer {name} (channels_first)")
            y = node("Transpose", ins, f"{name}/nhwc", perm=[0, 2, 3, 1])
            out_of[name] = node("Flatten", [y], f"{name}/flat", axis=1)

    outputs = cfg["output_layers"]
    if outputs and isinstance(outputs[0], str):  # one output: Keras writes the triple itself
        outputs = [outputs]
    if len(outputs) != 1:
        raise UnsupportedLayer(f"{len(outputs)} outputs")
    last = out_of[outputs[0][0]]
    nodes.append(helper.make_node("Identity", [last], ["embedding"], name="embedding"))
    dim = int(model.output_shape[-1])
    graph = helper.make_graph(
        nodes, f"blastscan-{model.name}", [x_in],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])], initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="blastscan",
                              producer_version=str(EXPORTER_VERSION))
    proto.ir_version = 8  # every onnxruntime since 1.10 reads it
    onnx.checker.check_model(proto, full_check=False)
    return proto.SerializeToString()


# -- running it --------------------------------------------------------------------------------------
class OnnxRunner:
    """An onnxruntime session over a graph from :func:`export_keras`; call it with a uint8 batch.

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
    from blastscan._io import file_sha256

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
    bytes); default :class:`OnnxRunner`. Another engine passes its own and gets the same checks.
    """
    from blastscan.errors import BlastscanError

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
            from blastscan._io import atomic_write_bytes, file_sha256

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
