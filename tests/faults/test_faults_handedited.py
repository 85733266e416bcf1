"""Issue 24: hand-edited or crafted files give one-line errors, never a traceback: bundle sidecars
(metadata not an object, a number as blastscan_version), joblib bundles loaded with --trust (a string
format_version, no model, no threshold), a store's meta.json of {} (see test_faults_store)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import joblib
import pytest

from blastscan.bundle import FORMAT, FORMAT_VERSION, load_bundle, save_bundle, sidecar_path
from blastscan.errors import BlastscanError

ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def good(sample_root, tmp_path_factory):
    from blastscan.dataset import build_manifest
    from blastscan.evaluation import EvalSettings
    from blastscan.pipelines.extract import extract
    from blastscan.pipelines.train import train_bundle

    tmp = tmp_path_factory.mktemp("handedited")
    manifest = build_manifest(sample_root / "C-NMC_Leukemia" / "training_data" / "fold_0").df
    extract(manifest, ["size"], tmp / "store", jobs=1, progress=False)
    bundle = train_bundle(manifest, "size", "logreg", tmp / "store", progress=False, settings=EvalSettings(inner_folds=2))
    return save_bundle(bundle, tmp / "model.joblib")


def _sidecar_edit(good, tmp_path, edit):
    path = tmp_path / "m.joblib"
    path.write_bytes(good.read_bytes())
    side = json.loads(sidecar_path(good).read_text())
    edit(side)
    sidecar_path(path).write_text(json.dumps(side))
    return path


@pytest.mark.parametrize("edit,words", [
    (lambda s: s.update(metadata=["not", "an", "object"]), "metadata is not an object"),
    (lambda s: s.update(metadata=5), "metadata is not an object"),
    (lambda s: s["metadata"].update(blastscan_version=0.1), "not a version string"),
    (lambda s: s.update(bundle_sha256=12), "bundle_sha256 is not a string"),
])
def test_a_hand_edited_sidecar_is_one_line(good, tmp_path, edit, words):
    with pytest.raises(BlastscanError, match=words):
        load_bundle(_sidecar_edit(good, tmp_path, edit))


def _crafted(good, tmp_path, edit):
    content = joblib.load(good)
    edit(content)
    path = tmp_path / "crafted.joblib"
    joblib.dump(content, path)
    return path


@pytest.mark.parametrize("edit,words", [
    (lambda c: c.update(format_version=str(FORMAT_VERSION)), "is not a whole number"),
    (lambda c: c.update(format_version=None), "is not a whole number"),
    (lambda c: c.update(model=None), "holds no usable model"),
    (lambda c: c.update(model="a string"), "holds no usable model"),
    (lambda c: c["metadata"].pop("threshold"), "no decision threshold"),
    (lambda c: c["metadata"].update(threshold={"value": "0.5"}), "no decision threshold"),
    (lambda c: c["metadata"].update(threshold={"value": 7.0}), "no decision threshold"),
    (lambda c: c.update(metadata=[]), "metadata is not an object"),
    (lambda c: c["metadata"].pop("feature_set"), "no feature_set"),
    (lambda c: c.update(extras=[1]), "extras are not an object"),
    (lambda c: c.update(format="other"), "not a blastscan bundle"),
])
def test_a_crafted_bundle_under_trust_is_one_line(good, tmp_path, edit, words):
    with pytest.raises(BlastscanError, match=words):
        load_bundle(_crafted(good, tmp_path, edit), trust=True)


def test_the_untouched_bundle_still_loads(good, tmp_path):
    assert load_bundle(good).threshold == joblib.load(good)["metadata"]["threshold"]["value"]
    assert joblib.load(good)["format"] == FORMAT


@pytest.mark.slow
def test_score_with_a_crafted_bundle_is_one_line_on_the_command_line(good, tmp_path, sample_root):
    path = _crafted(good, tmp_path, lambda c: c.update(model=None))
    res = subprocess.run([sys.executable, "-m", "blastscan.cli", "score", str(path), str(sample_root), "--trust",
                          "-o", str(tmp_path / "p.csv"), "-q"], capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith(f"error: {path}: holds no usable model")
