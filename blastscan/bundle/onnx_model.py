"""A fitted classifier as one ONNX graph: ``X`` (float64, ``(n, d)``) in, ``p_all`` (float64, ``(n,)``) out.

What the data-only bundle (:mod:`blastscan.bundle.data_only`) stores instead of a pickle. Every family of the
registry is written from its fitted numbers with ``onnx.helper`` (scaler, PCA, logistic regression, the
RBF SVM with its Platt or isotonic calibration, the FCN head, FCN -> SVM, votes as their members' graphs
on their own columns plus the mean); XGBoost's trees are converted by ``onnxmltools`` and embedded, and so
are the fine-tuned blocks (written by the backbones' Keras exporter, float32; writing them needs TensorFlow). The
graph computes in float64 where the estimator does (so probabilities agree to about 1e-12), and in
float32 exactly where the estimator itself rounds to float32 (the FCN's layers, XGBoost's inputs, the
kernel of the SVM behind the FCN), so its probabilities equal the estimator's to float32 rounding. The
fine-tuned blocks are float32 too: a fit that predicts in bfloat16 (``precision_`` bf16) differs from its
graph by bfloat16 rounding.

:class:`OnnxModel` runs such a graph in ONNX Runtime and looks like an estimator to the bundle
(``classes_`` and ``predict_proba``), so a data-only bundle scores through the same code as a joblib one.
A family without a writer here raises :class:`NotWritable` (one line; joblib bundles still work for it).
"""

from __future__ import annotations

# onnx, onnxmltools and onnxruntime are imported where they are used: importing onnx alone takes about a
# second, and scoring a joblib bundle needs none of them
import os

import numpy as np

from blastscan.features.engines.onnx_export import UnsupportedLayer

__all__ = ["OPSET", "NotWritable", "to_onnx", "OnnxModel", "writable"]

OPSET = 15  # onnxmltools' XGBoost converter writes at most opset 15
INPUT, OUTPUT = "X", "p_all"


class NotWritable(Exception):
    """The estimator has no ONNX writer here (the message names it)."""


class _Graph:
    """Nodes and constants of the graph being written, with unique names."""

    def __init__(self):
        self.nodes, self.inits, self.opsets, self._n = [], [], {"": OPSET}, 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, arr, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        arr = np.array(arr, copy=True, order="C")  # (np.ascontiguousarray would make a scalar 1-d)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, kind: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        from onnx import helper

        out = self._name(hint or kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [out], name=out, **attrs))
        return out

    def cast(self, x: str, dtype) -> str:
        from onnx import TensorProto

        return self.op("Cast", [x], to=TensorProto.DOUBLE if np.dtype(dtype) == np.float64 else TensorProto.FLOAT)

    def embed(self, proto, feeds: dict[str, str]) -> dict[str, str]:
        """Copy ``proto``'s graph in, its inputs fed by ``feeds``; returns its outputs' names here."""
        from onnx import helper

        prefix = self._name("sub") + "/"
        rename = dict(feeds)
        for init in proto.graph.initializer:
            new = type(init)()
            new.CopyFrom(init)
            new.name = rename.setdefault(init.name, prefix + init.name)
            self.inits.append(new)
        for node in proto.graph.node:
            outs = [rename.setdefault(o, prefix + o) for o in node.output]
            ins = [rename.get(i, prefix + i) if i else "" for i in node.input]
            copy = helper.make_node(node.op_type, ins, outs, name=prefix + node.name, domain=node.domain)
            copy.attribute.extend(node.attribute)
            self.nodes.append(copy)
        for opset in proto.opset_import:
            if opset.domain != "":
                self.opsets[opset.domain] = max(self.opsets.get(opset.domain, 0), opset.version)
        return {o.name: rename[o.name] for o in proto.graph.output}

    def model(self, x: str, out: str, n_features: int):
        import onnx
        from onnx import TensorProto, helper

        self.nodes.append(helper.make_node("Identity", [out], [OUTPUT], name=OUTPUT))
        graph = helper.make_graph(
            self.nodes, "blastscan-classifier",
            [helper.make_tensor_value_info(x, TensorProto.DOUBLE, ["n", int(n_features)])],
            [helper.make_tensor_value_info(OUTPUT, TensorProto.DOUBLE, ["n"])], initializer=self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()],
                                  producer_name="blastscan")
        proto.ir_version = 8
        onnx.checker.check_model(proto, full_check=True)
        return proto


# -- writers, one per step type: (graph, estimator, input name, input dtype) -> (output name, dtype) ---
def _scaler(g, est, x, dt):
    if getattr(est, "mean_", None) is not None and est.with_mean:
        x = g.op("Sub", [x, g.const(est.mean_.astype(dt), "mean")])
    if getattr(est, "scale_", None) is not None and est.with_std:
        x = g.op("Div", [x, g.const(est.scale_.astype(dt), "scale")])
    return x, dt


def _pca(g, est, x, dt):
    # sklearn's PCA.transform: (X - mean_) @ components_.T, divided by sqrt(explained_variance_) when whitening
    x = g.op("Sub", [x, g.const(est.mean_.astype(dt), "mean")])
    x = g.op("MatMul", [x, g.const(est.components_.T.astype(dt), "components")])
    if est.whiten:
        x = g.op("Div", [x, g.const(np.sqrt(est.explained_variance_).astype(dt), "whiten")])
    return x, dt


_TRANSFORMS = {"StandardScaler": _scaler, "PCA": _pca}


def _column(g, x, j: int) -> str:
    """Column ``j`` of a 2-d tensor as a 1-d tensor."""
    return g.op("Gather", [x, g.const(np.asarray(j, np.int64), "col")], axis=1)


def _p1(g, est, x, dt) -> str:
    """float64 P(label 1) of the fitted two-class ``est`` for input ``x`` (dtype ``dt``)."""
    classes = [int(c) for c in getattr(est, "classes_", [0, 1])]
    if sorted(classes) != [0, 1]:
        raise NotWritable(f"classes {classes} (expected 0 = HEM, 1 = ALL)")
    p = _proba_first(g, est, x, dt)  # P(classes_[1])
    if classes[1] != 1:
        p = g.op("Sub", [g.const(np.asarray(1.0), "one"), p])
    return p


def _proba_first(g, est, x, dt) -> str:
    kind = type(est).__name__
    if kind == "Pipeline":
        for _, step in est.steps[:-1]:
            if step is None or step == "passthrough":
                continue
            writer = _TRANSFORMS.get(type(step).__name__)
            if writer is None:
                raise NotWritable(f"pipeline step {type(step).__name__}")
            x, dt = writer(g, step, x, dt)
        return _proba_first(g, est.steps[-1][1], x, dt)
    writer = _CLASSIFIERS.get(kind)
    if writer is None:
        raise NotWritable(kind)
    p = writer(g, est, x, dt)
    if kind in _CLIPPED:  # BinaryClassifier.predict_proba clips to [0, 1]
        p = g.op("Min", [g.op("Max", [p, g.const(np.asarray(0.0), "zero")]), g.const(np.asarray(1.0), "one")])
    return p


def _logreg(g, est, x, dt):
    if est.coef_.shape[0] != 1:
        raise NotWritable("multi-class LogisticRegression")
    x = g.cast(x, np.float64) if dt != np.float64 else x
    z = g.op("MatMul", [x, g.const(est.coef_[0].astype(np.float64), "coef")])
    z = g.op("Add", [z, g.const(np.asarray(float(est.intercept_[0])), "intercept")])
    return g.op("Sigmoid", [z])


def _svm_decision(g, est, x, dt) -> str:
    """The SVC's decision score (float64); the RBF kernel in ``dt`` as sklearn's ``rbf_kernel`` computes it
    for that input dtype (distances in float64, then for float32 input the kernel in float32)."""
    sv = np.asarray(est.support_vectors_)
    if len(est.dual_coef_) == 0:
        zeros = g.op("Mul", [_column(g, g.cast(x, np.float64), 0), g.const(np.asarray(0.0), "zero")])
        return g.op("Add", [zeros, g.const(np.asarray(float(est.intercept_)), "intercept")])
    x64 = g.cast(x, np.float64)
    sv64 = sv.astype(dt).astype(np.float64)  # the support vectors as the input dtype holds them
    xx = g.op("ReduceSum", [g.op("Mul", [x64, x64]), g.const(np.asarray([1], np.int64), "axis")], keepdims=1)
    cross = g.op("MatMul", [x64, g.const(sv64.T.copy(), "sv_t")])
    d2 = g.op("Add", [g.op("Sub", [xx, g.op("Mul", [cross, g.const(np.asarray(2.0), "two")])]),
                      g.const((sv64 ** 2).sum(axis=1), "sv_sq")])
    d2 = g.op("Max", [d2, g.const(np.asarray(0.0), "zero")])  # sklearn clips rounding below zero
    if dt == np.float32:
        k = g.op("Exp", [g.op("Mul", [g.cast(d2, np.float32), g.const(np.asarray(-est.gamma_, np.float32), "gamma")])])
        k = g.cast(k, np.float64)
    else:
        k = g.op("Exp", [g.op("Mul", [d2, g.const(np.asarray(-float(est.gamma_)), "gamma")])])
    s = g.op("MatMul", [k, g.const(np.asarray(est.dual_coef_, np.float64), "dual")])
    return g.op("Add", [s, g.const(np.asarray(float(est.intercept_)), "intercept")])


def _svm(g, est, x, dt):
    s = _svm_decision(g, est, x, dt)
    if est.calibration == "sigmoid":
        a, b = est.calibrator_
        z = g.op("Add", [g.op("Mul", [s, g.const(np.asarray(-float(a)), "platt_a")]),
                         g.const(np.asarray(-float(b)), "platt_b")])
        return g.op("Sigmoid", [z])
    return _isotonic(g, est.calibrator_, s)


def _isotonic(g, iso, s) -> str:
    """``IsotonicRegression.predict`` (linear interpolation between its knots, clipped outside) as
    ``y0 + sum_k slope_k * (clip(s, x_k, x_k+1) - x_k)``."""
    if getattr(iso, "out_of_bounds", "clip") != "clip":
        raise NotWritable(f"IsotonicRegression(out_of_bounds={iso.out_of_bounds!r})")
    xs, ys = np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64)
    base = g.op("Mul", [s, g.const(np.asarray(0.0), "zero")])
    out = g.op("Add", [base, g.const(np.asarray(ys[0]), "y0")])
    if len(xs) < 2:
        return out
    keep = np.diff(xs) > 0
    lo, hi = xs[:-1][keep], xs[1:][keep]
    slope = (np.diff(ys)[keep]) / (hi - lo)
    s2 = g.op("Unsqueeze", [s, g.const(np.asarray([1], np.int64), "axis")])
    clipped = g.op("Min", [g.op("Max", [s2, g.const(lo, "lo")]), g.const(hi, "hi")])
    rise = g.op("MatMul", [g.op("Sub", [clipped, g.const(lo, "lo")]), g.const(slope, "slope")])
    return g.op("Add", [out, rise])


def _group_svm(g, est, x, dt):
    return _svm(g, est, x, dt)


def _pca_svm(g, est, x, dt):
    x = g.cast(x, np.float64)  # PCASVC._proba1 works in float64
    x, dt = _pca(g, est.pca_, x, np.float64)
    return _p1(g, est.svm_, x, dt)


def _fcn_hidden(g, fcn, x):
    x32 = g.cast(x, np.float32)
    h = g.op("Add", [g.op("MatMul", [x32, g.const(np.asarray(fcn.coefs_[0], np.float32), "w0")]),
                     g.const(np.asarray(fcn.intercepts_[0], np.float32), "b0")])
    return g.op("Relu", [h])


def _fcn(g, est, x, dt):
    h = _fcn_hidden(g, est, x)
    z = g.op("Add", [g.op("MatMul", [h, g.const(np.asarray(est.coefs_[1], np.float32), "w1")]),
                     g.const(np.asarray(est.intercepts_[1], np.float32), "b1")])
    z = _column(g, z, 0)
    return g.op("Sigmoid", [g.cast(z, np.float64)])  # FCNClassifier: expit in float64 of the float32 logit


def _fcn_svm(g, est, x, dt):
    h = _fcn_hidden(g, est.fcn_, x)  # float32, as FCNClassifier._hidden returns it
    h, hdt = _scaler(g, est.scaler_, h, np.float32)  # StandardScaler keeps float32 input in float32
    return _p1(g, est.svm_, h, hdt)


def _xgboost(g, est, x, dt):
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    model = est.model_
    proto = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, int(model.n_features_in_)]))],
                            target_opset=OPSET)
    outs = g.embed(proto, {"input": g.cast(x, np.float32)})
    probs = outs.get("probabilities") or list(outs.values())[-1]
    # model_ was fitted on the 0/1 encoding of est.classes_: its column 1 is P(est.classes_[1])
    return g.cast(_column(g, probs, 1), np.float64)


def _vote(g, est, x, dt):
    ps = []
    for member, cols in zip(est.members_, est.columns_):
        sub = g.op("Gather", [g.cast(x, np.float64), g.const(np.asarray(cols, np.int64), "columns")], axis=1)
        ps.append(g.op("Unsqueeze", [_p1(g, member, sub, np.float64), g.const(np.asarray([1], np.int64), "axis")]))
    stacked = g.op("Concat", ps, axis=1) if len(ps) > 1 else ps[0]
    return g.op("ReduceMean", [stacked], axes=[1], keepdims=0)


def _finetune(g, est, x, dt):
    # float32 throughout, as the fitted network (built in float32 here, whatever precision it trained in)
    import onnx

    try:
        blocks, kernel, bias = est.onnx_parts()
    except UnsupportedLayer as exc:
        raise NotWritable(f"FinetuneClassifier's blocks ({exc})") from None
    x = g.op("Reshape", [g.cast(x, np.float32), g.const(np.asarray([-1, *est.shape_], np.int64), "shape")])
    pooled = g.embed(onnx.load_from_string(blocks), {"x": x})["embedding"]
    z = g.op("Add", [g.op("MatMul", [pooled, g.const(kernel, "w")]), g.const(bias, "b")])
    return g.cast(g.op("Sigmoid", [_column(g, z, 0)]), np.float64)


def _tuned(g, est, x, dt):
    return _p1(g, est.model_, g.cast(x, np.float64), np.float64)


_CLASSIFIERS = {"LogisticRegression": _logreg, "GroupCalibratedSVC": _group_svm, "PCASVC": _pca_svm,
                "FCNClassifier": _fcn, "FCNSVMClassifier": _fcn_svm, "BalancedXGBClassifier": _xgboost,
                "SoftVote": _vote, "Tuned": _tuned, "FinetuneClassifier": _finetune}
_CLIPPED = {"GroupCalibratedSVC", "PCASVC", "FCNClassifier", "FCNSVMClassifier", "BalancedXGBClassifier",
            "SoftVote", "Tuned", "FinetuneClassifier"}


def writable(est) -> bool:
    """Whether :func:`to_onnx` has a writer for every part of ``est``."""
    try:
        to_onnx(est, int(getattr(est, "n_features_in_", 1)))
        return True
    except NotWritable:
        return False


def to_onnx(est, n_features: int):
    """The ``onnx.ModelProto`` computing P(ALL) of the fitted ``est`` (input ``X`` float64 ``(n, n_features)``,
    output ``p_all`` float64 ``(n,)``). Raises :class:`NotWritable` for a part without a writer."""
    g = _Graph()
    p = _p1(g, est, INPUT, np.float64)
    return g.model(INPUT, p, n_features)


class OnnxModel:
    """An ONNX graph from :func:`to_onnx`, run by ONNX Runtime, with the estimator interface the bundle uses.

    ``classes_`` is ``[0, 1]`` and ``predict_proba(X)[:, 1]`` is P(ALL), as for the fitted estimator.
    """

    classes_ = np.array([0, 1])

    def __init__(self, graph: bytes, threads: int | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads or min(4, len(os.sched_getaffinity(0))))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(graph, so, providers=["CPUExecutionProvider"])
        shape = self.session.get_inputs()[0].shape
        self.n_features_in_ = int(shape[1]) if isinstance(shape[1], int) else None

    def p_all(self, X) -> np.ndarray:
        X = np.ascontiguousarray(X, dtype=np.float64)
        if X.ndim != 2 or (self.n_features_in_ is not None and X.shape[1] != self.n_features_in_):
            raise ValueError(f"expected (n, {self.n_features_in_}) features, got {X.shape}")
        if len(X) == 0:
            return np.zeros(0)
        return np.asarray(self.session.run([OUTPUT], {INPUT: X})[0], dtype=np.float64)

    def predict_proba(self, X) -> np.ndarray:
        p = self.p_all(X)
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        return (self.p_all(X) >= 0.5).astype(int)
