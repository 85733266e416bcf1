"""Bundles: train on real cells, save with a checked sidecar, load, score the same as in memory; refuse
tampered files and features that cannot be recomputed as in training; export from a compare run."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import blastscan
from blastscan.dataset import build_manifest, labelled, load_image
from blastscan.errors import BlastscanError
from blastscan.features import base
from blastscan.features.base import BatchExtractor, BatchResult
from blastscan.bundle import BundleWarning, load_bundle, save_bundle, sidecar_path
from blastscan.evaluation import EvalSettings
from blastscan.features.featureset import clear_extractor_cache
from blastscan.pipelines.export import export_run
from blastscan.evaluation.calibration import apply_calibration
from blastscan.pipelines.train import train_bundle
from blastscan.pipelines.extract import extract, load_features
from blastscan.provenance import manifest_hash

N_SUBJECTS, MIN_CELLS, MAX_CELLS = 4, 3, 5  # subjects per class; cells per subject


@pytest.fixture(scope="module")
def cells(cnmc_root, tmp_path_factory) -> dict:
    """~36 real cells: 4 ALL and 4 HEM subjects with 3-5 cells each, as a dataset CSV, plus their manifest."""
    rows = list(csv.DictReader(open(cnmc_root / "manifest.csv")))
    by_subject = defaultdict(list)
    for r in rows:
        by_subject[(r["label"], r["subject"])].append(r)
    picked = []
    for label in ("all", "hem"):
        subjects = [k for k, v in by_subject.items() if k[0] == label and len(v) >= MIN_CELLS][:N_SUBJECTS]
        picked += [r for k in subjects for r in by_subject[k][:MAX_CELLS]]
    tmp = tmp_path_factory.mktemp("cells")
    dataset = tmp / "cells.csv"
    with open(dataset, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subject"])
        w.writerows([str(cnmc_root / r["path"]), r["label"], r["subject"]] for r in picked)
    manifest = build_manifest(dataset).df
    return {"dataset": dataset, "manifest": manifest, "paths": [str(cnmc_root / r["path"]) for r in picked],
            "store": tmp / "store", "tmp": tmp}


@pytest.fixture(scope="module")
def trained(cells) -> dict:
    """handcrafted + logreg fitted on the cells, saved as a bundle."""
    extract(cells["manifest"], ["handcrafted"], cells["store"], jobs=1, progress=False)
    bundle = train_bundle(cells["manifest"], "handcrafted", "logreg", cells["store"], progress=False)
    path = save_bundle(bundle, cells["tmp"] / "model.joblib")
    return {"bundle": bundle, "path": path}


def _copy_bundle(src: Path, dst_dir: Path) -> Path:
    for p in (src, sidecar_path(src)):
        shutil.copy(p, dst_dir / p.name)
    return dst_dir / src.name


def test_round_trip_scores_like_the_model_in_memory(cells, trained, tmp_path):
    fm = load_features(cells["manifest"], "handcrafted", cells["store"])
    in_memory = trained["bundle"].model.predict_proba(fm.X.astype(np.float64))[:, 1]
    # what ships: the model's P(ALL), then the bundle's calibration map (plain numbers in the metadata)
    in_memory = apply_calibration(in_memory, trained["bundle"].metadata["calibration"])
    expected = dict(zip(fm.rows["path"], in_memory))
    paths = list(reversed(cells["paths"]))  # the answer follows the order given, not the manifest's
    loaded = blastscan.load_bundle(trained["path"])
    # features recomputed from the images in a fresh temporary store, not read from the training store
    p = loaded.predict_proba(paths)
    np.testing.assert_allclose(p, [expected[q] for q in paths], rtol=1e-12)
    calls = loaded.predict(paths[:5])
    assert list(calls) == ["all" if q >= loaded.threshold else "hem" for q in p[:5]]


def test_bundle_records_threshold_metrics_and_training_data(cells, trained):
    meta = trained["bundle"].metadata
    data = labelled(cells["manifest"])
    td = meta["training_data"]
    assert (td["n_images"], td["n_subjects_all"], td["n_subjects_hem"]) == (len(data), N_SUBJECTS, N_SUBJECTS)
    assert td["manifest_sha256"] == manifest_hash(data)
    tm = meta["training_metrics"]
    # issue 23: the bundle reports the threshold procedure measured on held-out subjects (outer folds), not the
    # in-sample recall of its own out-of-fold predictions (which meets the target by construction)
    assert "outer subject-disjoint" in tm["split"] and "held-out subjects" in tm["split"]
    assert meta["threshold"]["rule"] == "recall"
    op = meta["operating_point"]
    assert op["recall_all"] == tm["metrics"]["recall_all"] and op["split"] == tm["split"]
    assert op["n_subjects"] == 2 * N_SUBJECTS and len(op["fold_thresholds"]) >= 2
    assert "subject-disjoint CV over all 8 training subjects" in meta["threshold"]["chosen_on"]
    assert meta["calibration"]["method"] == "platt_logit" and meta["threshold"]["calibrated"]
    assert len(meta["feature_names"]) == meta["n_features"] == trained["bundle"].model.n_features_in_
    # "handcrafted" is the union of its families: one extractor (store table, version) each
    assert [e["identity"].split("@")[0] for e in meta["extractors"]] == ["shape", "color", "texture", "chromatin"]
    assert meta["versions"]["scikit-learn"]


def test_sidecar_is_json_with_the_file_hash(trained):
    side = json.loads(sidecar_path(trained["path"]).read_text())
    assert side["bundle_sha256"] == hashlib.sha256(trained["path"].read_bytes()).hexdigest()
    assert side["metadata"]["threshold"]["value"] == pytest.approx(trained["bundle"].threshold)
    assert "trust" in side["warning"]


def test_changed_bundle_is_refused_unless_trusted(trained, tmp_path):
    import joblib

    path = _copy_bundle(trained["path"], tmp_path)
    joblib.dump(joblib.load(path), path, compress=0)  # same content, other bytes: a swapped file
    with pytest.raises(BlastscanError, match="sha256 does not match"):
        load_bundle(path)
    assert load_bundle(path, trust=True).threshold == pytest.approx(trained["bundle"].threshold)


def test_bundle_without_sidecar_is_refused_unless_trusted(trained, tmp_path):
    path = _copy_bundle(trained["path"], tmp_path)
    sidecar_path(path).unlink()
    with pytest.raises(BlastscanError, match="no sidecar"):
        load_bundle(path)
    assert load_bundle(path, trust=True).feature_set == "handcrafted"


def test_other_extractor_config_is_refused(cells, trained, tmp_path):
    bundle = load_bundle(_copy_bundle(trained["path"], tmp_path))
    rec = bundle.metadata["extractors"][0]
    rec["config"]["grey_levels"] = 256  # as if trained by a handcrafted extractor with other settings
    rec["identity"] = "handcrafted@1-0123456789"
    save_bundle(bundle, tmp_path / "edited.joblib")  # re-signed: the hash check passes
    edited = load_bundle(tmp_path / "edited.joblib")
    with pytest.raises(BlastscanError, match="grey_levels"):
        edited.predict_proba(cells["paths"][:2])


def test_library_version_mismatch_warns(trained, tmp_path):
    bundle = load_bundle(_copy_bundle(trained["path"], tmp_path))
    bundle.metadata["versions"]["numpy"] = ".".join(np.__version__.split(".")[:1] + ["999", "0"])  # same major
    save_bundle(bundle, tmp_path / "numpy_minor.joblib")
    assert load_bundle(tmp_path / "numpy_minor.joblib").warnings == []
    bundle.metadata["versions"]["scikit-learn"] = "0.1.0"
    save_bundle(bundle, tmp_path / "old_sklearn.joblib")
    with pytest.warns(BundleWarning, match="scikit-learn 0.1.0"):
        loaded = load_bundle(tmp_path / "old_sklearn.joblib")
    assert any("scikit-learn" in w for w in loaded.warnings)


# -- a deep-like extractor whose identity holds the hash of its weight file ------------------------------
class FakeDeep(BatchExtractor):
    name = "fake_deep"
    version = "1"

    def __init__(self, options=None):
        path = Path((options.weights_dir if options is not None else None) or ".") / "fake.weights.h5"
        if not path.is_file():
            raise BlastscanError(str(path), "no weight file")
        data = path.read_bytes()
        self.scale = float(data[0])
        self.weights_sha256 = hashlib.sha256(data).hexdigest()

    def config(self):
        return {"weights": f"sha256:{self.weights_sha256}"}

    @property
    def feature_names(self):
        return ["fd_mean_r", "fd_mean_g", "fd_std_b"]

    def compute_paths(self, paths):
        ok, feats, failures = [], [], {}
        for i, p in enumerate(paths):
            try:
                img = load_image(p).astype(np.float32)
            except BlastscanError as exc:
                failures[i] = exc.why
                continue
            ok.append(i)
            feats.append([img[..., 0].mean() * self.scale, img[..., 1].mean(), img[..., 2].std()])
        yield BatchResult(ok, np.array(feats, np.float32).reshape(len(ok), 3), failures)


@pytest.fixture
def fake_deep(monkeypatch, tmp_path):
    base.EXTRACTORS.register("fake_deep", FakeDeep)
    clear_extractor_cache()
    dirs = {}
    for name, content in (("train", b"\x02weights"), ("copy", b"\x02weights"), ("other", b"\x03weights")):
        dirs[name] = tmp_path / f"weights_{name}"
        dirs[name].mkdir()
        (dirs[name] / "fake.weights.h5").write_bytes(content)
    yield dirs
    base.EXTRACTORS.remove("fake_deep")
    clear_extractor_cache()


def test_deep_bundle_refuses_other_weights(cells, fake_deep, tmp_path):
    opts = {"weights_dir": str(fake_deep["train"])}
    store = tmp_path / "store"
    extract(cells["manifest"], ["fake_deep"], store, extractor_options=opts, progress=False)
    bundle = train_bundle(cells["manifest"], "fake_deep", "logreg", store, extractor_options=opts, progress=False)
    path = save_bundle(bundle, tmp_path / "deep.joblib")
    loaded = load_bundle(path)
    expected = bundle.predict_proba(cells["paths"][:4])
    # the same weights elsewhere: accepted, same scores
    same = loaded.predict_proba(cells["paths"][:4], extractor_options={"weights_dir": str(fake_deep["copy"])})
    np.testing.assert_allclose(same, expected, rtol=1e-12)
    with pytest.raises(BlastscanError, match=r"weights.*--weights-dir"):
        loaded.predict_proba(cells["paths"][:4], extractor_options={"weights_dir": str(fake_deep["other"])})


# -- export from a compare run ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(cells, trained) -> Path:
    from blastscan.pipelines.compare import compare

    manifest = cells["manifest"].copy()
    manifest.loc[manifest.index[:2], "label"] = None  # unlabelled rows: not used by the run, not trained on
    out = cells["tmp"] / "run"
    compare(manifest, ["handcrafted"], ["logreg"], cells["store"], out, jobs=1, progress=False,
            settings=EvalSettings(folds=3, leaky_folds=0, n_boot=0, threshold_rule="f1"))
    return out


def test_export_refits_the_run_config_on_its_used_rows(cells, run_dir, tmp_path):
    bundle = export_run(run_dir, "handcrafted/logreg", tmp_path / "exported.joblib", progress=False)
    meta = load_bundle(tmp_path / "exported.joblib").metadata
    used = pd.read_parquet(run_dir / "manifest.parquet")
    assert meta["training_data"]["n_images"] == int(used["used"].sum()) == len(cells["manifest"]) - 2
    assert meta["threshold"]["rule"] == "f1"  # the run's rule, not the default
    assert meta["source_run"]["same_images_as_run"] is True
    assert meta["source_run"]["config"] == "handcrafted/logreg"
    assert bundle.path == tmp_path / "exported.joblib"


def test_export_unknown_config_lists_the_run_configs(run_dir, tmp_path):
    with pytest.raises(BlastscanError, match="choose from: handcrafted/logreg"):
        export_run(run_dir, "handcrafted/svm", tmp_path / "x.joblib", progress=False)
    assert not (tmp_path / "x.joblib").exists()


def test_blastscan_version_is_checked():
    from blastscan.bundle import blastscan_version_check

    assert blastscan_version_check("0.1.3", "m.joblib", installed="0.1.0") is None
    assert "0.2.0 made this bundle" in blastscan_version_check("0.2.0", "m.joblib", installed="0.3.1")
    with pytest.raises(BlastscanError, match="newer than the installed"):
        blastscan_version_check("0.4.0", "m.joblib", installed="0.3.1")
    with pytest.raises(BlastscanError, match="another major version"):
        blastscan_version_check("1.0.0", "m.joblib", installed="0.3.1")
