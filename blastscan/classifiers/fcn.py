"""A small fully connected head (Dense + ReLU + Dropout + sigmoid) trained with Keras.

Keras trains it, with early stopping on a group-disjoint validation part of the training data; the fitted
estimator keeps only the weights as numpy arrays and predicts with a numpy forward pass. So the fitted
model pickles with joblib like any scikit-learn estimator, predicts identically after loading, and
neither predicting nor loading imports TensorFlow (only ``fit`` does, lazily: it costs seconds).
"""

from __future__ import annotations

import random

import numpy as np
from scipy.special import expit
from sklearn.utils.validation import check_is_fitted, validate_data

from blastscan._tf import import_keras
from blastscan.classifiers.base import (BinaryClassifier, Integral, Interval, Real, balanced_weights, inner_folds,
                                        register_classifier)

__all__ = ["FCNClassifier"]


@register_classifier("fcn", "StandardScaler + Keras dense head (ReLU, dropout, sigmoid), early stopping on "
                            "held-out subjects", libraries=[("tensorflow", 2), ("keras", 2)], order=40, default=False)
class FCNClassifier(BinaryClassifier):
    """One hidden layer, trained with Adam on balanced class weights.

    Parameters
    ----------
    hidden : int
        Width of the hidden ReLU layer.
    dropout : float
        Dropout rate after the hidden layer (training only).
    epochs : int
        Maximum epochs.
    patience : int
        Early stopping: epochs without a better validation loss before stopping; the best epoch's
        weights are kept.
    batch_size : int
    lr : float
        Adam learning rate.
    val_fraction : float
        Share of the training groups held out for early stopping (one fold of a
        ``StratifiedGroupKFold`` with ``round(1 / val_fraction)`` folds).
    random_state : int
        Seeds weights, dropout, shuffling and the validation split (``keras.utils.set_random_seed``).

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    coefs_, intercepts_ : lists of float32 arrays
        Hidden and output layer weights.
    validation_idx_ : ndarray
        Training rows used for early stopping.
    early_stopping_note_ : str
        How the validation part was chosen (``"per-sample ..."`` when groups could not be used).
    best_epoch_, n_epochs_ : int
        Epoch (1-based) whose weights were kept; epochs run.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> X, y = make_classification(200, 20, random_state=0)
    >>> fcn = FCNClassifier(hidden=16, epochs=5).fit(X, y, groups=np.arange(200) // 10)
    >>> fcn.predict_proba(X[:2]).shape
    (2, 2)
    """

    _parameter_constraints = {
        "hidden": [Interval(Integral, 1, None, closed="left")],
        "dropout": [Interval(Real, 0, 0.95, closed="both")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "patience": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "val_fraction": [Interval(Real, 0.05, 0.5, closed="both")],
        **BinaryClassifier._parameter_constraints,
    }

    def __init__(self, hidden=256, dropout=0.3, epochs=60, patience=8, batch_size=64, lr=1e-3, val_fraction=0.2,
                 random_state=0):
        self.hidden = hidden
        self.dropout = dropout
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.lr = lr
        self.val_fraction = val_fraction
        self.random_state = random_state

    def _fit(self, X, y01, groups):
        folds, self.early_stopping_note_ = inner_folds(y01, groups, max(2, round(1 / self.val_fraction)),
                                                       self.random_state)
        train, val = folds[0]
        self.validation_idx_ = val
        X = X.astype(np.float32, copy=False)
        y = y01.astype(np.float32)
        weights, self.best_epoch_, self.n_epochs_ = _train_keras(
            X[train], y[train], balanced_weights(y01[train]), (X[val], y[val], balanced_weights(y01[val])),
            hidden=int(self.hidden), dropout=float(self.dropout), epochs=int(self.epochs),
            patience=int(self.patience), batch_size=int(self.batch_size), lr=float(self.lr),
            seed=int(self.random_state))
        self.coefs_ = [weights[0], weights[2]]
        self.intercepts_ = [weights[1], weights[3]]

    def hidden_activations(self, X) -> np.ndarray:
        """Hidden-layer activations (ReLU outputs), shape (n, hidden): the learned features."""
        check_is_fitted(self)
        return self._hidden(validate_data(self, X, reset=False, dtype=(np.float64, np.float32)))

    def _hidden(self, X):
        return np.maximum(np.asarray(X, dtype=np.float32) @ self.coefs_[0] + self.intercepts_[0], 0.0)

    def _proba1(self, X):
        return expit((self._hidden(X) @ self.coefs_[1] + self.intercepts_[1])[:, 0].astype(np.float64))


def _train_keras(X, y, w, validation, *, hidden, dropout, epochs, patience, batch_size, lr, seed):
    """Train the head; returns ``(get_weights(), best_epoch, epochs_run)``. Leaves numpy's and Python's
    global random states as they were (Keras seeds them)."""
    keras = import_keras()  # TensorFlow is imported here, on the first fit: it costs seconds

    saved = np.random.get_state(), random.getstate()
    try:
        keras.backend.clear_session()  # many fits in one process must not pile up graphs
        keras.utils.set_random_seed(seed)
        model = keras.Sequential([
            keras.Input((X.shape[1],)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dropout(dropout, seed=seed),
            keras.layers.Dense(1, activation="sigmoid"),
        ])
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=lr), loss="binary_crossentropy")
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True)
        history = model.fit(X, y, sample_weight=w, validation_data=validation, epochs=epochs,
                            batch_size=batch_size, shuffle=True, verbose=0, callbacks=[stop])
        losses = history.history["val_loss"]
        best = int(np.argmin(losses))
        if stop.best_weights is not None:  # Keras restores only when it stopped early; we always keep the best
            model.set_weights(stop.best_weights)
        return [np.asarray(a, dtype=np.float32) for a in model.get_weights()], best + 1, len(losses)
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
