"""The Keras network of a frozen backbone written as an ONNX graph, the graph every graph engine runs
(:mod:`.onnxruntime`, :mod:`.openvino`).

The graph is read off the built Keras model, layer by layer, so the architecture and the weights are
Keras' own: nothing is re-declared here. Each layer type the registered backbones use has one writer in
:data:`WRITERS` (:data:`SUPPORTED`); a network with another layer raises :class:`UnsupportedLayer` and the
extractor falls back to TensorFlow. The backbone's ``preprocess_input`` is part of the graph (uint8 NHWC in,
float32 embeddings out), as in the TensorFlow path, so batches travel as uint8; its constants are the
backbone's (:data:`blastscan.features.backbones.PREPROCESS_MODES`).

onnx is imported when a graph is written, not with this module (a run over a cached graph never imports it).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from blastscan.features.backbones import PREPROCESS_MODES

__all__ = ["EXPORTER_VERSION", "OPSET", "SUPPORTED", "WRITERS", "UnsupportedLayer", "export_keras"]

EXPORTER_VERSION = 1  # bump when the written graph changes
OPSET = 17


class UnsupportedLayer(Exception):
    """The network holds a layer (or a setting) this exporter does not write."""


class _Graph:
    """The nodes and constants written so far; ``input`` is the preprocessed NCHW float32 input."""

    def __init__(self):
        from onnx import helper, numpy_helper

        self._helper, self._numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self.input = ""

    def const(self, name: str, arr) -> str:
        self.inits.append(self._numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, ins: list[str], out: str, **attrs) -> str:
        self.nodes.append(self._helper.make_node(op, ins, [out], name=out, **attrs))
        return out


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


# -- one writer per layer type: (graph, layer name, layer config, layer, input names) -> output name -------
def _input(g: _Graph, name: str, c: dict, layer, ins: list[str]) -> str:
    return g.input


def _conv2d(g: _Graph, name: str, c: dict, layer, ins: list[str]) -> str:
    if c.get("data_format", "channels_last") != "channels_last" or c.get("groups", 1) != 1:
        raise UnsupportedLayer(f"layer {name} (grouped or channels_first convolution)")
    if c["padding"] not in ("valid", "same"):
        raise UnsupportedLayer(f"layer {name} (padding {c['padding']})")
    kernel = np.asarray(layer.kernel.numpy(), np.float32).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    args = [ins[0], g.const(f"{name}/W", kernel)]
    if c.get("use_bias"):
        args.append(g.const(f"{name}/B", np.asarray(layer.bias.numpy(), np.float32)))
    pad = {"pads": [0, 0, 0, 0]} if c["padding"] == "valid" else {"auto_pad": "SAME_UPPER"}
    y = g.node("Conv", args, f"{name}/conv", kernel_shape=_pair(c["kernel_size"]), strides=_pair(c["strides"]),
               dilations=_pair(c.get("dilation_rate", 1)), **pad)
    act = c.get("activation", "linear")
    if act not in ("linear", "relu"):
        raise UnsupportedLayer(f"layer {name} (activation {act})")
    return g.node("Relu", [y], f"{name}/relu") if act == "relu" else y


def _batch_norm(g: _Graph, name: str, c: dict, layer, ins: list[str]) -> str:
    if c["axis"] not in (-1, 3, [3], [-1]):
        raise UnsupportedLayer(f"layer {name} (normalising axis {c['axis']})")
    mean = np.asarray(layer.moving_mean.numpy(), np.float32)
    gamma = layer.gamma.numpy() if c.get("scale", True) else np.ones_like(mean)
    beta = layer.beta.numpy() if c.get("center", True) else np.zeros_like(mean)
    args = [ins[0], g.const(f"{name}/gamma", np.asarray(gamma, np.float32)),
            g.const(f"{name}/beta", np.asarray(beta, np.float32)), g.const(f"{name}/mean", mean),
            g.const(f"{name}/var", np.asarray(layer.moving_variance.numpy(), np.float32))]
    return g.node("BatchNormalization", args, f"{name}/bn", epsilon=float(c["epsilon"]))


def _relu(kind: str):
    def write(g: _Graph, name: str, c: dict, layer, ins: list[str]) -> str:
        relu = (c.get("activation") == "relu" if kind == "Activation" else
                c.get("max_value") is None and not c.get("negative_slope") and not c.get("threshold"))
        if not relu:
            raise UnsupportedLayer(f"layer {name} ({kind} other than a plain relu)")
        return g.node("Relu", ins, f"{name}/relu")

    return write


def _max_pool(g: _Graph, name: str, c: dict, layer, ins: list[str]) -> str:
    return g.node("MaxPool", ins, f"{name}/pool", **_pool_attrs(c))


def _average_pool(g: _Graph, name: str, c: dict, layer, ins: list[str]) -> str:
    # TensorFlow's "same" average leaves the padding out of the count
    return g.node("AveragePool", ins, f"{name}/pool", count_include_pad=0, **_pool_attrs(c))


def _concatenate(g: _Graph, name: str, c: dict, layer, ins: list[str]) -> str:
    if c["axis"] not in (-1, 3):
        raise UnsupportedLayer(f"layer {name} (concatenation on axis {c['axis']})")
    return g.node("Concat", ins, f"{name}/concat", axis=1)


def _global_average_pool(g: _Graph, name: str, c: dict, layer, ins: list[str]) -> str:
    if c.get("keepdims") or c.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedLayer(f"layer {name} (keepdims or channels_first)")
    y = g.node("GlobalAveragePool", ins, f"{name}/gap")
    return g.node("Flatten", [y], f"{name}/flat", axis=1)


def _flatten(g: _Graph, name: str, c: dict, layer, ins: list[str]) -> str:
    if c.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedLayer(f"layer {name} (channels_first)")
    y = g.node("Transpose", ins, f"{name}/nhwc", perm=[0, 2, 3, 1])  # Keras flattens channels-last
    return g.node("Flatten", [y], f"{name}/flat", axis=1)


#: The writer of each Keras layer type the exporter supports.
WRITERS: dict[str, Callable[[_Graph, str, dict, Any, list[str]], str]] = {
    "InputLayer": _input, "Conv2D": _conv2d, "BatchNormalization": _batch_norm, "Activation": _relu("Activation"),
    "ReLU": _relu("ReLU"), "MaxPooling2D": _max_pool, "AveragePooling2D": _average_pool,
    "Concatenate": _concatenate, "GlobalAveragePooling2D": _global_average_pool, "Flatten": _flatten,
}
SUPPORTED = tuple(WRITERS)


def _write_input(g: _Graph, model, input_size: int | None, preprocess: str | None):
    """Set :attr:`_Graph.input` to the network's NCHW float32 input made from the graph's input ``x``, and
    return ``x``'s description: uint8 NHWC images -> float32 -> ``preprocess_input`` (per-channel affine,
    RGB->BGR for caffe) -> NCHW; or, ``preprocess`` None, float32 NHWC activations of an earlier block -> NCHW."""
    from onnx import TensorProto, helper

    if preprocess is None:
        g.input = g.node("Transpose", ["x"], "pre/nchw", perm=[0, 3, 1, 2])
        return helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *[int(d) for d in model.input_shape[1:]]])
    pre = PREPROCESS_MODES[preprocess]
    x = g.node("Cast", ["x"], "pre/cast", to=TensorProto.FLOAT)
    x = g.node("Mul", [x, g.const("pre/scale", np.asarray(pre.scale, np.float32))], "pre/scaled")
    x = g.node("Add", [x, g.const("pre/offset", np.asarray(pre.offset, np.float32))], "pre/shifted")
    x = g.node("Transpose", [x], "pre/nchw", perm=[0, 3, 1, 2])
    if pre.bgr:
        x = g.node("Gather", [x, g.const("pre/bgr", np.asarray([2, 1, 0], np.int64))], "pre/bgr_out", axis=1)
    g.input = x
    return helper.make_tensor_value_info("x", TensorProto.UINT8, ["n", input_size, input_size, 3])


def export_keras(model, input_size: int | None, preprocess: str | None) -> bytes:
    """The ONNX graph (serialised ``ModelProto``) of a built Keras functional ``model``.

    Input ``x``: uint8 ``(n, input_size, input_size, 3)`` RGB; output ``embedding``: float32 ``(n, dim)``.
    ``preprocess`` names the ``keras.applications`` preprocessing mode (``"tf"``, ``"caffe"``). ``preprocess``
    None: the model reads activations of an earlier block instead (the fine-tuned blocks), and ``x`` is
    float32 ``(n, h, w, c)``, the model's own input shape (``input_size`` unused).

    Raises
    ------
    UnsupportedLayer
        When the model holds a layer or setting not written here.
    """
    import onnx
    from onnx import TensorProto, helper

    if preprocess is not None and preprocess not in PREPROCESS_MODES:
        raise UnsupportedLayer(f"preprocessing mode {preprocess!r}")
    cfg = model.get_config()
    layers = {layer.name: layer for layer in model.layers}
    g = _Graph()
    x_in = _write_input(g, model, input_size, preprocess)
    out_of: dict[str, str] = {}
    for lc in cfg["layers"]:
        kind, name = lc["class_name"], lc["name"]
        if kind not in WRITERS:
            raise UnsupportedLayer(f"layer {name} ({kind})")
        out_of[name] = WRITERS[kind](g, name, lc["config"], layers[name], [out_of[n] for n in _inputs(lc)])

    outputs = cfg["output_layers"]
    if outputs and isinstance(outputs[0], str):  # one output: Keras writes the triple itself
        outputs = [outputs]
    if len(outputs) != 1:
        raise UnsupportedLayer(f"{len(outputs)} outputs")
    g.nodes.append(helper.make_node("Identity", [out_of[outputs[0][0]]], ["embedding"], name="embedding"))
    dim = int(model.output_shape[-1])
    graph = helper.make_graph(
        g.nodes, f"blastscan-{model.name}", [x_in],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])], initializer=g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="blastscan",
                              producer_version=str(EXPORTER_VERSION))
    proto.ir_version = 8  # every onnxruntime since 1.10 reads it
    onnx.checker.check_model(proto, full_check=False)
    return proto.SerializeToString()
