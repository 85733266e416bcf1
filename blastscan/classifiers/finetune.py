"""InceptionV3 fine-tuned: its last two blocks (``mixed9``, ``mixed10``, initialised from the ImageNet weights)
and a small head, trained per fit on cached ``mixed8`` activations (:mod:`blastscan.features.activations`).

``-c finetune`` on ``-f inception_v3`` reads the ``inception_v3_mixed8_act`` table in place of the pooled
embedding (:func:`blastscan.classifiers.classifier_inputs`), so the configuration is
``inception_v3/finetune`` and every outer, inner and threshold fit of ``compare`` / ``train`` trains a fresh
network on its own rows only, like any other classifier. Opt-in: never in the default grid.

Training: Adam, class-balanced sample weights, batch-norm layers kept in inference mode (their ImageNet
statistics; small batches would only add noise), early stopping on the validation loss of held-out
*training subjects* (a group-disjoint split inside ``fit``; the best epoch's weights are kept), a fixed seed,
bfloat16 mixed precision where the CPU runs it natively (float32 elsewhere and on a GPU; TensorFlow uses a
GPU when it sees one, nothing depends on it). One line per epoch goes to stderr.

Before training too long, the rate is measured on the first batches: when the expected time of the fit
exceeds ``max_minutes`` the fit stops with a one-line error stating the estimate, unless
``BLASTSCAN_FINETUNE_OK=1`` is set (the command line's ``--yes`` sets it) or ``--param finetune.max_minutes=...``
is raised.

The fitted estimator keeps the trained weights as numpy arrays: it pickles with joblib like any other
model, and predicting rebuilds the blocks with TensorFlow. For a data-only bundle, :meth:`onnx_parts` writes
the trained blocks as an ONNX graph (float32; :func:`blastscan.features.engines.onnx_export.export_keras`) and hands
over the head's numbers (:mod:`blastscan.bundle.onnx_model` assembles the classifier's graph from them).
"""

from __future__ import annotations

import os
import random
import sys
import time

import numpy as np

from blastscan.classifiers.base import (BinaryClassifier, Integral, Interval, Real, balanced_weights, choices,
                                        inner_folds, register_classifier)
from blastscan.errors import BlastscanError
from blastscan.features.backbones import WEIGHTS_ENV, find_weights
from blastscan.features.deep import BACKBONES  # importing deep registers the backbones
from blastscan.features.precision import bf16_support
from blastscan.options import DeepOptions

__all__ = ["FinetuneClassifier", "OK_ENV", "INPUTS", "build_tail", "share_weights_dir"]

OK_ENV = "BLASTSCAN_FINETUNE_OK"
#: Feature set named on the command line -> the table the fits read.
INPUTS = {"inception_v3": "inception_v3_mixed8_act"}
FIRST_TRAINABLE = "mixed8"  # the blocks after this one are trained
RATE_BATCHES = 3  # batches timed (after the first, which builds the graph) before the time is estimated


def build_tail(tail: str, shape: tuple[int, int, int], seed: int):
    """The trainable blocks as a Keras model from activations ``shape`` to a feature map.

    ``"inception_v3"``: InceptionV3's layers after ``mixed8`` (``mixed9``, ``mixed10``), weights not loaded
    (the caller loads them). ``"tiny"``: one random 3x3 convolution (tests only: a stand-in with the same
    interface that trains in milliseconds).
    """
    from blastscan._tf import import_keras

    keras = import_keras()
    if tail == "tiny":
        inp = keras.Input(shape)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu",
                                kernel_initializer=keras.initializers.GlorotUniform(seed))(inp)
        return keras.Model(inp, x), None
    full = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(299, 299, 3))
    block = full.get_layer(FIRST_TRAINABLE).output
    if tuple(block.shape[1:]) != tuple(shape):
        raise BlastscanError("finetune", f"activations of shape {tuple(shape)} do not fit InceptionV3 after "
                                         f"{FIRST_TRAINABLE} (expects {tuple(block.shape[1:])})")
    return keras.Model(block, full.output), full


@register_classifier("finetune", "InceptionV3's last blocks (mixed9, mixed10; ImageNet start) + dense head, trained "
                                 "per fit on cached mixed8 activations, early stopping on held-out subjects",
                     scale=False, libraries=[("tensorflow", 2), ("keras", 2)], order=90, default=False)
class FinetuneClassifier(BinaryClassifier):
    """Trainable last blocks of a backbone plus a small head (global average pooling, dropout, sigmoid).

    Parameters
    ----------
    epochs : int
        Maximum epochs.
    patience : int
        Early stopping: epochs without a better validation loss before stopping (best weights kept).
    batch_size : int
    lr : float
        Adam learning rate (blocks and head).
    dropout : float
        Dropout before the output layer (training only).
    val_fraction : float
        Share of the training subjects held out for early stopping.
    tail : {"inception_v3", "tiny"}
        The trainable blocks: InceptionV3's ``mixed9`` + ``mixed10`` from ImageNet weights, or a tiny random
        stand-in (tests).
    channels : int
        Channels of the cached activations (1280 for ``mixed8``); the rows are ``(h, w, channels)`` flattened.
    precision : {"auto", "float32", "bf16"}
        ``auto``: bf16 mixed precision on a CPU with native bfloat16 and no GPU, else float32.
    max_minutes : float
        Refuse a fit whose measured rate predicts more than this many minutes (``BLASTSCAN_FINETUNE_OK=1``,
        or ``--yes`` on the command line, overrides).
    random_state : int

    Attributes
    ----------
    weights_ : list of ndarray
        Trained weights of the whole network (blocks + head).
    shape_ : tuple
        Activation shape ``(h, w, c)``.
    validation_idx_, early_stopping_note_, best_epoch_, n_epochs_, history_, rate_, precision_
        What training did: held-out rows, how they were chosen, the epoch kept, epochs run, per-epoch
        losses, training cells per second, arithmetic used.
    """

    #: ``classifier_inputs``: the table these fits read for a feature set (none other is accepted)
    input_features = INPUTS

    _parameter_constraints = {
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "dropout": [Interval(Real, 0, 0.95, closed="both")],
        "val_fraction": [Interval(Real, 0.05, 0.5, closed="both")],
        "tail": [choices("inception_v3", "tiny")],
        "channels": [Interval(Integral, 1, None, closed="left")],
        "precision": [choices("auto", "float32", "bf16")],
        "max_minutes": [Interval(Real, 0, None, closed="neither")],  # without BLASTSCAN_FINETUNE_OK=1
        **BinaryClassifier._parameter_constraints,
    }

    def __init__(self, epochs=8, patience=2, batch_size=32, lr=1e-4, dropout=0.3, val_fraction=0.2,
                 tail="inception_v3", channels=1280, precision="auto", max_minutes=30.0, random_state=0):
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.lr = lr
        self.dropout = dropout
        self.val_fraction = val_fraction
        self.tail = tail
        self.channels = channels
        self.precision = precision
        self.max_minutes = max_minutes
        self.random_state = random_state

    # -- pickling: the weights travel, the built network does not --------------------------------------
    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_net"}

    def _shape(self, width: int) -> tuple[int, int, int]:
        c = int(self.channels)
        side = int(round(np.sqrt(width / c)))
        if side * side * c != width:
            raise ValueError(f"{width} features are not square activations with {c} channels")
        return side, side, c

    def _fit(self, X, y01, groups):
        self.shape_ = self._shape(X.shape[1])
        folds, self.early_stopping_note_ = inner_folds(y01, groups, max(2, round(1 / self.val_fraction)),
                                                       self.random_state)
        train, val = folds[0]
        self.validation_idx_ = val
        self.precision_ = _resolve_precision(self.precision)
        net = self._network(load_imagenet=True, precision=self.precision_)
        X = X.reshape(-1, *self.shape_)
        self.history_, self.best_epoch_, self.rate_ = _train(
            net, X[train], y01[train].astype(np.float32), balanced_weights(y01[train]),
            (X[val], y01[val].astype(np.float32), balanced_weights(y01[val])),
            epochs=int(self.epochs), patience=int(self.patience), batch_size=int(self.batch_size),
            lr=float(self.lr), seed=int(self.random_state), max_minutes=float(self.max_minutes))
        self.n_epochs_ = len(self.history_)
        self.weights_ = [np.asarray(w, dtype=np.float32) for w in net.get_weights()]
        self._net = net

    def _network(self, load_imagenet: bool, precision: str):
        """Blocks + head as one Keras model (under ``precision``); ImageNet weights loaded into the blocks
        when ``load_imagenet`` and the tail is InceptionV3."""
        from blastscan._tf import import_keras

        keras = import_keras()
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # a fresh network per fit retraces by design: no warning per fit
        seed = int(self.random_state)
        keras.backend.clear_session()  # many fits in one process must not pile up graphs
        keras.utils.set_random_seed(seed)
        previous = keras.config.dtype_policy()
        if precision == "bf16":
            keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            tail, full = build_tail(self.tail, self.shape_, seed)
            if full is not None and load_imagenet:
                full.load_weights(str(_imagenet_weights()))
            for layer in tail.layers:  # ImageNet batch statistics kept: BN runs in inference mode
                if isinstance(layer, keras.layers.BatchNormalization):
                    layer.trainable = False
            inp = keras.Input(self.shape_)
            x = keras.layers.GlobalAveragePooling2D()(tail(inp))
            x = keras.layers.Dropout(float(self.dropout), seed=seed)(x)
            out = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x)
            return keras.Model(inp, out)
        finally:
            keras.config.set_dtype_policy(previous)

    def _fitted_network(self, precision: str):
        net = self._network(load_imagenet=False, precision=precision)
        net.set_weights(self.weights_)
        return net

    def _proba1(self, X):
        net = getattr(self, "_net", None)
        if net is None:
            net = self._net = self._fitted_network(self.precision_)
        X = np.asarray(X, dtype=np.float32).reshape(-1, *self.shape_)
        p = net.predict(X, batch_size=max(1, int(self.batch_size)) * 2, verbose=0)
        return np.asarray(p, dtype=np.float64)[:, 0]

    def onnx_parts(self) -> tuple[bytes, np.ndarray, np.ndarray]:
        """The fitted network in float32 for a data-only bundle: ``(graph, kernel, bias)``.

        ``graph`` (serialised ONNX) is the trained blocks followed by their global average pooling: input
        ``x`` float32 activations ``(n, h, w, c)``, output ``embedding`` float32 ``(n, features)``; the head
        is ``sigmoid(embedding @ kernel + bias)`` (``kernel`` ``(features, 1)``; dropout is off at inference).
        Needs TensorFlow (the blocks are read off the Keras network rebuilt from :attr:`weights_`).
        """
        from blastscan._tf import import_keras
        from blastscan.features.engines.onnx_export import export_keras

        keras = import_keras()
        net = self._fitted_network("float32")  # a bf16 fit keeps float32 weights: the graph is float32
        blocks = next(layer for layer in net.layers if isinstance(layer, keras.Model))
        pooled = keras.Model(blocks.input, keras.layers.GlobalAveragePooling2D()(blocks.output))
        head = net.layers[-1]
        return (export_keras(pooled, None, None), np.asarray(head.kernel.numpy(), np.float32),
                np.asarray(head.bias.numpy(), np.float32))


def share_weights_dir(classifiers, extractor_options) -> None:
    """When ``finetune`` is among ``classifiers``, let its fits (which may run in worker processes) find the
    ImageNet weights given as ``--weights-dir``: they look where the extractors look by default,
    ``$BLASTSCAN_WEIGHTS_DIR``, which this sets for the process and the workers it starts."""
    weights_dir = DeepOptions.from_mapping(extractor_options).weights_dir
    names = [classifiers] if isinstance(classifiers, str) else list(classifiers or [])
    if weights_dir and "finetune" in names:
        os.environ[WEIGHTS_ENV] = str(weights_dir)


def _resolve_precision(precision: str) -> str:
    if precision != "auto":
        return precision
    from blastscan._tf import import_keras

    import_keras()
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        return "float32"
    return "bf16" if bf16_support()[0] else "float32"


def _imagenet_weights():
    found = find_weights(BACKBONES["inception_v3"], None)  # $BLASTSCAN_WEIGHTS_DIR, else the Keras cache
    if found.path is None:
        raise found.missing_error()
    return found.path


def _train(net, X, y, w, validation, *, epochs, patience, batch_size, lr, seed, max_minutes):
    """Train ``net``; returns ``(history, best_epoch, cells_per_second)``. Leaves numpy's and Python's
    global random states as they were (Keras seeds them)."""
    from blastscan._tf import import_keras

    keras = import_keras()
    saved = np.random.get_state(), random.getstate()
    try:
        net.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="binary_crossentropy")
        watch = _progress(keras, len(X), len(validation[0]), epochs, batch_size, max_minutes)
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        history = net.fit(X, y, sample_weight=w, validation_data=validation, epochs=epochs, batch_size=batch_size,
                          shuffle=True, verbose=0, callbacks=[watch, stop])
        if watch.refusal:
            raise BlastscanError("finetune", watch.refusal)
        losses = history.history["val_loss"]
        if stop.best_weights is not None:  # Keras restores only when it stopped early; we always keep the best
            net.set_weights(stop.best_weights)
        hist = [{"epoch": i + 1, "loss": float(a), "val_loss": float(b)}
                for i, (a, b) in enumerate(zip(history.history["loss"], losses))]
        return hist, int(np.argmin(losses)) + 1, watch.rate
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])


def _progress(keras, n_train, n_val, epochs, batch_size, max_minutes):
    """A Keras callback: one line per epoch on stderr, and the rate check after the first batches (it stops
    training and leaves the one-line reason in ``refusal`` when the fit would take too long)."""

    class Progress(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.refusal, self.rate, self.t_batch, self.t_epoch = "", None, None, time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.t_epoch = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            if batch == 1:  # batch 0 builds the graph
                self.t_batch = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if self.rate is not None or batch < RATE_BATCHES or self.t_batch is None:
                return
            self.rate = RATE_BATCHES * batch_size / max(time.perf_counter() - self.t_batch, 1e-9)
            # training steps, plus the validation forward passes (about a third of a step each)
            minutes = epochs * (n_train + n_val / 3) / self.rate / 60
            if minutes > max_minutes and os.environ.get(OK_ENV) != "1":
                self.refusal = (f"this fit would take about {minutes:.1f} min here ({self.rate:.1f} cells/s x "
                                f"{epochs} epochs of {n_train} cells), over max_minutes={max_minutes:g}; pass "
                                f"--yes (or set {OK_ENV}=1, or --param finetune.max_minutes=...) to run it anyway, "
                                "or use a GPU")
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            if self.refusal:
                return
            logs = logs or {}
            print(f"finetune: epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.4f}, val_loss "
                  f"{logs.get('val_loss', float('nan')):.4f} ({time.perf_counter() - self.t_epoch:.0f} s, "
                  f"{n_train} training cells)", file=sys.stderr, flush=True)

    return Progress()
