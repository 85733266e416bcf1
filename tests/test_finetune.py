"""finetune: cached block activations (float16-array store tables) and the trainable last blocks + head,
on a tiny stand-in network (``tail="tiny"``) and a handful of cells."""

from __future__ import annotations

import csv
from collections import defaultdict

import numpy as np
import pytest

from blastscan.errors import BlastscanError
from blastscan.features.store import ARRAY_LAYOUT, FeatureStore

TINY = {"tail": "tiny", "channels": 8, "epochs": 2, "batch_size": 8}


def _toy(n_subjects=10, per=8, seed=0):
    """Rows of 4x4x8 'activations' whose first value is the row number; the class shifts the rest."""
    rng = np.random.default_rng(seed)
    n = n_subjects * per
    groups = np.repeat([f"s{i}" for i in range(n_subjects)], per)
    y = np.repeat(np.arange(n_subjects) % 2, per)
    X = rng.normal(size=(n, 4 * 4 * 8)).astype(np.float32) + 0.5 * y[:, None]
    X[:, 0] = np.arange(n)
    return X, y, groups


# -- the store's float16-array layout -----------------------------------------------------------------
def test_array_table_round_trips_in_float16_and_survives_compaction(tmp_path):
    store = FeatureStore(tmp_path)
    names = [f"a_{i:05d}" for i in range(300)]
    ident = store.ensure_table({"identity": "act@1-x", "name": "act", "storage": ARRAY_LAYOUT}, names)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 300)).astype(np.float32), rng.normal(size=(2, 300)).astype(np.float32)
    store.write_chunk(ident, ["s1", "s2", "s3"], a, {"bad": "unreadable"})
    store.write_chunk(ident, ["s4", "s5"], b)
    store.compact(ident)
    assert len(list((tmp_path / ident).glob("part-*.parquet"))) == 1
    import pyarrow.parquet as pq

    part = next((tmp_path / ident).glob("part-*.parquet"))
    assert pq.read_schema(part).names == ["sha256", "values"]  # two columns, not 300
    df = store.read(ident, ["s5", "s1", "missing"])
    assert list(df.columns) == names and df.dtypes.iloc[0] == np.float16
    np.testing.assert_array_equal(df.loc["s1"].to_numpy(), a[0].astype(np.float16))
    np.testing.assert_array_equal(df.loc["s5"].to_numpy(), b[1].astype(np.float16))
    assert store.known_shas(ident) == {"s1", "s2", "s3", "s4", "s5", "bad"}


# -- configuration: -c finetune on -f inception_v3 reads the activations --------------------------------
def test_finetune_reads_the_cached_activations_and_is_opt_in():
    from blastscan.classifiers import classifier_inputs, default_classifiers
    from blastscan.pipelines.compare import _not_applicable, _plan_configs

    assert "finetune" not in default_classifiers()
    assert classifier_inputs("finetune", "inception_v3") == "inception_v3_mixed8_act"
    assert classifier_inputs("finetune", "size") is None
    assert classifier_inputs("svm_pca", "inception_v3") == "inception_v3"
    configs, sets = _plan_configs(["inception_v3", "size"], ["finetune", "svm_pca"], [], {})
    by = {c.name: c for c in configs}
    assert by["inception_v3/finetune"].inputs == "inception_v3_mixed8_act"
    assert by["inception_v3/svm_pca"].inputs == "" and "size/finetune" not in by
    assert set(sets) == {"inception_v3", "size", "inception_v3_mixed8_act"}
    skipped = _not_applicable(["inception_v3", "size"], ["finetune", "svm_pca"])
    assert [(s["name"], s["reason"]) for s in skipped] == [("size/finetune",
                                                           "finetune does not run on the 'size' features")]


def test_activation_extractor_identity_names_block_precision_and_storage():
    from blastscan.features.base import get_extractor

    a = get_extractor("inception_v3_mixed8_act", random_weights=True)
    b = get_extractor("inception_v3_mixed8_act", random_weights=True, precision="bf16")
    assert a.identity != b.identity
    assert a.config()["block"] == "mixed8" and a.config()["storage"] == "float16"
    assert a.describe()["storage"] == ARRAY_LAYOUT and len(a.feature_names) == 8 * 8 * 1280
    assert get_extractor("inception_v3", random_weights=True).identity != a.identity
    with pytest.raises(BlastscanError, match="299"):
        get_extractor("inception_v3_mixed8_act", random_weights=True, input_size=224)


# -- training -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fit_predict_pickle_and_early_stopping_on_held_out_subjects():
    import pickle

    from blastscan.classifiers import fit_classifier, get_classifier

    X, y, groups = _toy()
    est = fit_classifier(get_classifier("finetune", **TINY), X, y, groups=groups)
    m = est.steps[-1][1]
    val = m.validation_idx_
    assert m.early_stopping_note_.startswith("group-disjoint")
    assert not set(groups[val]) & set(np.delete(groups, val))  # held-out subjects, whole
    assert 1 <= m.best_epoch_ <= m.n_epochs_ <= 2 and m.rate_ > 0
    p = est.predict_proba(X)[:, 1]
    again = pickle.loads(pickle.dumps(est)).predict_proba(X)[:, 1]  # rebuilt from the numpy weights
    np.testing.assert_allclose(again, p, atol=1e-6)
    # the same seed gives the same model
    p2 = fit_classifier(get_classifier("finetune", **TINY), X, y, groups=groups).predict_proba(X)[:, 1]
    np.testing.assert_allclose(p2, p, atol=1e-6)


@pytest.mark.slow
def test_refuses_in_one_line_when_the_expected_time_is_too_long(monkeypatch):
    from blastscan.classifiers import fit_classifier, get_classifier
    from blastscan.classifiers.finetune import OK_ENV

    X, y, groups = _toy()
    monkeypatch.delenv(OK_ENV, raising=False)
    slow = get_classifier("finetune", **{**TINY, "max_minutes": 1e-9})
    with pytest.raises(BlastscanError, match=r"would take about .* min here .*cells/s.*BLASTSCAN_FINETUNE_OK=1") as e:
        fit_classifier(slow, X, y, groups=groups)
    assert "\n" not in str(e.value)
    monkeypatch.setenv(OK_ENV, "1")
    fit_classifier(get_classifier("finetune", **{**TINY, "max_minutes": 1e-9}), X, y, groups=groups)


# -- data-only export: the trained blocks as ONNX ------------------------------------------------------
def _onnx_p_all(est, X):
    from blastscan.bundle.onnx_model import OnnxModel, to_onnx

    return OnnxModel(to_onnx(est, X.shape[1]).SerializeToString()).p_all(X)


@pytest.mark.slow
def test_the_trained_blocks_written_as_onnx_give_the_fitted_p_all():
    from blastscan.classifiers import fit_classifier, get_classifier

    X, y, groups = _toy()
    est = fit_classifier(get_classifier("finetune", **TINY, precision="float32"), X, y, groups=groups)
    p = est.predict_proba(X)[:, 1]
    assert p.std() > 1e-3
    np.testing.assert_allclose(_onnx_p_all(est, X), p, rtol=0, atol=1e-5)
    np.testing.assert_allclose(est.predict_proba(X)[:, 1], p, rtol=0, atol=1e-7)  # still predicts after writing


@pytest.mark.slow
def test_inception_blocks_mixed9_mixed10_as_onnx_match_keras(weights_dir, monkeypatch):
    """The real blocks (batch norm, pooling branches, concatenations) from the ImageNet start, one epoch
    on a few random 8 x 8 x 1280 'activations'."""
    from blastscan.classifiers import fit_classifier, get_classifier
    from blastscan.features.backbones import WEIGHTS_ENV

    monkeypatch.setenv(WEIGHTS_ENV, str(weights_dir))
    rng = np.random.default_rng(1)
    groups = np.repeat([f"s{i}" for i in range(6)], 3)
    y = np.repeat(np.arange(6) % 2, 3)
    X = np.abs(rng.normal(size=(18, 8 * 8 * 1280))).astype(np.float32) + 0.3 * y[:, None]
    est = fit_classifier(get_classifier("finetune", epochs=1, batch_size=6, precision="float32", val_fraction=0.34),
                         X, y, groups=groups)
    p = est.predict_proba(X)[:, 1]
    assert p.std() > 1e-4
    np.testing.assert_allclose(_onnx_p_all(est, X), p, rtol=0, atol=1e-5)


class _Recording:
    """A factory for compare's fits that records the rows each fit was given (by their row number)."""

    def __init__(self):
        self.seen = []

    def __call__(self, random_state=0, **params):
        from blastscan.classifiers.finetune import FinetuneClassifier

        outer = self

        class Recorder(FinetuneClassifier):
            def _fit(self, X, y01, groups):
                outer.seen.append(X[:, 0].astype(int))
                super()._fit(X, y01, groups)

        from sklearn.pipeline import Pipeline

        return Pipeline([("model", Recorder(random_state=random_state, **{**TINY, **params}))])


@pytest.mark.slow
def test_every_fit_of_a_subject_disjoint_cv_sees_only_its_training_rows():
    from blastscan.evaluation import plan_subject_folds, run_fit, subject_cv_tasks

    X, y, groups = _toy(n_subjects=12, per=6)
    plan = plan_subject_folds(groups, y, 3, 0)
    tasks, _ = subject_cv_tasks(plan, y, groups, inner_splits=2, seed=0)
    record = _Recording()
    for task in tasks:
        p = run_fit(record, {"epochs": 1}, X, y, groups, task, 0, {})
        assert p.shape == (len(task.predict),)
        seen = record.seen[-1]
        np.testing.assert_array_equal(np.sort(seen), np.sort(task.train))  # exactly its training rows
        assert not set(groups[seen]) & set(groups[task.predict])  # no subject of the predicted rows
    assert len(record.seen) == len(tasks) >= 3


# -- caching and bundles on real cells -----------------------------------------------------------------
@pytest.fixture(scope="module")
def few_cells(cnmc_root, tmp_path_factory):
    """18 real cells: 3 ALL and 3 HEM subjects, 3 cells each."""
    from blastscan.dataset import build_manifest

    rows = list(csv.DictReader(open(cnmc_root / "manifest.csv")))
    by_subject = defaultdict(list)
    for r in rows:
        by_subject[(r["label"], r["subject"])].append(r)
    picked = []
    for label in ("all", "hem"):
        subjects = [k for k, v in by_subject.items() if k[0] == label and len(v) >= 3][:3]
        picked += [r for k in subjects for r in by_subject[k][:3]]
    tmp = tmp_path_factory.mktemp("finetune")
    dataset = tmp / "cells.csv"
    with open(dataset, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subject"])
        w.writerows([str(cnmc_root / r["path"]), r["label"], r["subject"]] for r in picked)
    return {"manifest": build_manifest(dataset).df, "paths": [str(cnmc_root / r["path"]) for r in picked],
            "store": tmp / "store", "tmp": tmp}


@pytest.mark.slow
def test_activations_are_computed_once_then_reused_and_a_bundle_scores_new_cells(few_cells, monkeypatch):
    import blastscan
    from blastscan.bundle import save_bundle
    from blastscan.evaluation import EvalSettings
    from blastscan.features.featureset import FeatureSet
    from blastscan.pipelines.train import train_bundle

    opts = {"random_weights": True}
    fs = FeatureSet("inception_v3_mixed8_act", opts)
    first = fs.ensure(few_cells["manifest"], few_cells["store"], progress=False).runs[0]
    again = fs.ensure(few_cells["manifest"], few_cells["store"], progress=False).runs[0]
    assert (first.computed, first.reused) == (18, 0) and (again.computed, again.reused) == (0, 18)
    fm = fs.read(few_cells["manifest"], few_cells["store"])
    assert fm.X.shape == (18, 81920) and np.isfinite(fm.X).all()

    tiny = {"tail": "tiny", "channels": 1280, "epochs": 1, "batch_size": 4}
    bundle = train_bundle(few_cells["manifest"], "inception_v3", "finetune", few_cells["store"], params=tiny,
                          extractor_options=opts, settings=EvalSettings(inner_folds=2), progress=False)
    assert bundle.metadata["classifier"] == "finetune"
    assert bundle.metadata["extractors"][0]["identity"] == fs.extractors[0].identity
    in_memory = dict(zip(fm.rows["path"], bundle.model.predict_proba(fm.X)[:, 1]))
    path = save_bundle(bundle, few_cells["tmp"] / "finetune.joblib")
    loaded = blastscan.load_bundle(path)
    # recomputed from the images in a fresh store, predicted by the blocks rebuilt from the saved weights
    p = loaded.predict_proba(few_cells["paths"][:5])
    np.testing.assert_allclose(p, [in_memory[q] for q in few_cells["paths"][:5]], atol=1e-5)


def _blocked_env(tmp) -> dict:
    """An environment where importing tensorflow or keras fails and no weight file can be found."""
    import os
    from pathlib import Path

    blocker, empty = tmp / "blocker", tmp / "empty"
    blocker.mkdir(exist_ok=True)
    empty.mkdir(exist_ok=True)
    for mod in ("tensorflow", "keras"):
        (blocker / f"{mod}.py").write_text(f"raise ImportError('{mod} is blocked in this test')\n")
    root = Path(__file__).resolve().parents[1]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(root)]), "BLASTSCAN_WEIGHTS_DIR": str(empty),
            "KERAS_HOME": str(empty), "XDG_CACHE_HOME": str(empty), "HOME": str(empty)}


_NO_TF_CLI = ("import sys, blastscan.cli as c\n"
              "try:\n    c.main()\nfinally:\n"
              "    assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n")


@pytest.mark.slow
def test_a_data_only_bundle_scores_new_cells_without_tensorflow(few_cells, weights_dir):
    """The network up to mixed8 (ImageNet weights: random ones give near-constant activations) and the trained
    blocks both travel as ONNX in the .bsb: `blastscan score` runs where TensorFlow cannot be imported and no
    weight file exists, and gives the P(ALL) of the model in memory."""
    import subprocess
    import sys
    import zipfile

    import pandas as pd

    from blastscan.bundle import load_bundle, save_bundle
    from blastscan.bundle.scoring import score_frame
    from blastscan.evaluation import EvalSettings
    from blastscan.pipelines.train import train_bundle

    from blastscan.features.featureset import FeatureSet

    opts = {"weights_dir": str(weights_dir)}
    FeatureSet("inception_v3_mixed8_act", opts).ensure(few_cells["manifest"], few_cells["store"], progress=False)
    tiny = {"tail": "tiny", "channels": 1280, "epochs": 2, "batch_size": 4, "precision": "float32", "lr": 1e-3}
    bundle = train_bundle(few_cells["manifest"], "inception_v3", "finetune", few_cells["store"], params=tiny,
                          extractor_options=opts, settings=EvalSettings(inner_folds=2), progress=False)
    path = save_bundle(bundle, few_cells["tmp"] / "finetune.bsb")
    with zipfile.ZipFile(path) as zf:
        assert "backbones/inception_v3_mixed8_act.onnx" in zf.namelist()
    loaded = load_bundle(path)
    assert set(loaded.extras["embedded_backbones"]) == {"inception_v3_mixed8_act"}
    paths = few_cells["paths"][:6]
    want = score_frame(bundle, paths).set_index("path")["p_all"]  # joblib path: Keras, features computed now
    assert want.std() > 1e-3
    out = few_cells["tmp"] / "p.csv"
    run = subprocess.run([sys.executable, "-c", _NO_TF_CLI, "score", str(path), *paths, "-o", str(out), "-q",
                          "-j", "1"], env=_blocked_env(few_cells["tmp"]), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    got = pd.read_csv(out).set_index("path")["p_all"]
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=0, atol=1e-5)


# -- the command line ---------------------------------------------------------------------------------
def _cli(args, env=None, timeout=900):
    import os
    import subprocess
    import sys

    from blastscan.classifiers.finetune import OK_ENV

    env = {k: v for k, v in (env or os.environ).items() if k != OK_ENV}
    return subprocess.run([sys.executable, "-m", "blastscan.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**env, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"})


def _dataset(few_cells):
    path = few_cells["tmp"] / "cells.csv"
    assert path.is_file()
    return path


TINY_CLI = ["-c", "finetune", "--param", "finetune.tail=tiny", "--param", "finetune.channels=1280",
            "--param", "finetune.epochs=1", "--param", "finetune.batch_size=4"]


@pytest.mark.slow
def test_yes_runs_a_fit_the_rate_check_refuses(few_cells):
    args = ["train", _dataset(few_cells), "-f", "inception_v3", *TINY_CLI, "--param", "finetune.max_minutes=1e-9",
            "--random-weights", "--store", few_cells["store"], "--folds", "2", "--inner-folds", "2",
            "--bootstrap", "0", "-q"]
    refused = _cli(args)
    assert refused.returncode != 0
    lines = [ln for ln in refused.stderr.splitlines() if "would take about" in ln]
    assert len(lines) == 1 and "--yes" in lines[0] and "Traceback" not in refused.stderr
    ran = _cli([*args, "--yes"])
    assert ran.returncode == 0, ran.stderr[-2000:]
    for command in ("compare", "export"):
        assert "--yes" in _cli([command, "--help"]).stdout


@pytest.mark.slow
def test_compare_on_a_local_cluster_then_export_a_data_only_bundle_that_scores_without_tensorflow(few_cells,
                                                                                                 weights_dir):
    """`compare --scheduler local:2` fits finetune like any other configuration (real mixed8 activations, the
    tiny stand-in blocks); `export` writes the .bsb and the joblib bundle of it; `score` with the .bsb, where
    TensorFlow cannot be imported, gives the joblib bundle's P(ALL)."""
    import pandas as pd

    run, tmp = few_cells["tmp"] / "run-local2", few_cells["tmp"]
    common = ["--weights-dir", weights_dir, "--store", few_cells["store"]]
    # float32 fits: the joblib bundle then predicts in float32 like the .bsb's graph (a bf16 fit differs from it
    # by bfloat16 rounding: up to 7e-4 in P(ALL) here)
    res = _cli(["compare", _dataset(few_cells), "-f", "inception_v3", *TINY_CLI, "--param", "finetune.lr=1e-3",
                "--param", "finetune.precision=float32", "--precision", "float32", "--folds", "2", "--inner-folds", "2", "--leaky-folds", "0", "--bootstrap",
                "0", "--scheduler", "local:2", "--out", run, *common, "-q"])
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = pd.read_csv(run / "metrics.csv")
    rows = metrics[(metrics["config"] == "inception_v3/finetune") & (metrics["split"] == "subject_cv_pooled")]
    assert len(rows) and rows["roc_auc"].notna().all(), metrics[["config", "split"]].drop_duplicates()
    for out in ("m.bsb", "m.joblib"):
        res = _cli(["export", run, "--config", "inception_v3/finetune", "--out", tmp / out, "-q",
                    "--weights-dir", weights_dir])
        assert res.returncode == 0, res.stderr[-3000:]
    paths = few_cells["paths"][:6]
    joblib_out, bsb_out = tmp / "p-joblib.csv", tmp / "p-bsb.csv"
    res = _cli(["score", tmp / "m.joblib", *paths, "-o", joblib_out, "-q", "-j", "1", "--weights-dir", weights_dir])
    assert res.returncode == 0, res.stderr[-3000:]
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _NO_TF_CLI, "score", str(tmp / "m.bsb"), *paths, "-o", str(bsb_out),
                          "-q", "-j", "1"], env=_blocked_env(tmp), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    want = pd.read_csv(joblib_out).set_index("path")["p_all"]
    got = pd.read_csv(bsb_out).set_index("path")["p_all"]
    assert want.std() > 1e-3
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=0, atol=1e-5)
