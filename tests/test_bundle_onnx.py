"""Data-only bundles (.bsb): the same scores, metadata and view reference as the joblib bundle, read without any
unpickling; an edit anywhere is refused in one line; a deep bundle scores in a process where TensorFlow
cannot be imported and no weight file exists."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from blastscan.bundle import load_bundle, save_bundle
from blastscan.bundle.scoring import score_frame
from blastscan.dataset import build_manifest
from blastscan.errors import BlastscanError
from blastscan.evaluation import EvalSettings
from blastscan.pipelines.extract import extract
from blastscan.pipelines.train import train_bundle

ROOT = Path(__file__).resolve().parents[1]


def _cells(sample_root, tmp, n_subjects=4, per_subject=5) -> tuple[Path, list[str]]:
    rows = build_manifest(sample_root).df
    rows = rows[rows["label"].isin(["all", "hem"])]
    by_subject = defaultdict(list)
    for r in rows.itertuples():
        by_subject[(r.label, r.subject)].append(r.path)
    picked = []
    for label in ("all", "hem"):
        subjects = sorted(k for k in by_subject if k[0] == label and len(by_subject[k]) >= 3)[:n_subjects]
        picked += [(p, k[0], k[1]) for k in subjects for p in sorted(by_subject[k])[:per_subject]]
    dataset = tmp / "cells.csv"
    with open(dataset, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subject"])
        w.writerows(picked)
    return dataset, [p for p, _, _ in picked]


@pytest.fixture(scope="module")
def made(sample_root, tmp_path_factory) -> dict:
    """A vote (size/logreg + shape/svm) trained on ~40 real sample cells, saved in both formats."""
    tmp = tmp_path_factory.mktemp("bsb")
    dataset, paths = _cells(sample_root, tmp)
    manifest = build_manifest(dataset).df
    store = tmp / "store"
    extract(manifest, ["size", "shape"], store, jobs=1, progress=False)
    members = [{"classifier": "logreg", "params": {}, "columns": [[0, 12]]},
               {"classifier": "svm", "params": {}, "columns": [[12, 66]]}]
    bundle = train_bundle(manifest, "size+shape", "vote", store, params={"members": members}, progress=False,
                          settings=EvalSettings(inner_folds=3))
    assert bundle.metadata["feature_names"][11].startswith("size") and len(bundle.feature_names) == 66
    return {"bundle": bundle, "joblib": save_bundle(bundle, tmp / "m.joblib"), "bsb": save_bundle(bundle, tmp / "m.bsb"),
            "paths": paths, "store": store, "tmp": tmp}


def test_data_only_bundle_scores_holds_and_shows_what_the_joblib_one_does(made):
    a, b = load_bundle(made["joblib"]), load_bundle(made["bsb"])
    assert type(b.model).__name__ == "OnnxModel"
    assert b.metadata == json.loads(json.dumps(a.metadata))  # every metadata field carried over whole
    fa = score_frame(a, made["paths"], made["store"])
    fb = score_frame(b, made["paths"], made["store"])
    np.testing.assert_allclose(fb["p_all"], fa["p_all"], rtol=0, atol=1e-9)
    assert fa["p_all"].std() > 0.01
    assert list(fb["pred"]) == list(fa["pred"])
    # the view's reference: arrays and thumbnails as they were
    ra, rb = a.extras["view"], b.extras["view"]
    for key in ("mean", "scale", "vectors"):
        np.testing.assert_array_equal(rb["reference"][key], ra["reference"][key])
        assert rb["reference"][key].dtype == ra["reference"][key].dtype
    assert rb["reference"]["thumbnails"] == ra["reference"]["thumbnails"]
    np.testing.assert_array_equal(rb["handcrafted"]["quantiles"]["all"], ra["handcrafted"]["quantiles"]["all"])


def test_loading_reads_no_pickle(made, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a data-only bundle must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    import joblib

    monkeypatch.setattr(joblib, "load", refuse)
    bundle = load_bundle(made["bsb"])
    assert bundle.threshold == made["bundle"].threshold


def _rewrite(src: Path, dst: Path, change=None, add=None, comment=None, manifest_fix=False):
    """Copy the zip, changing entries (name -> new bytes), adding ones, or fixing the manifest to match."""
    with zipfile.ZipFile(src) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
        old_comment = zf.comment
    entries.update(change or {})
    entries.update(add or {})
    if manifest_fix:
        man = json.loads(entries["manifest.json"])
        man["entries"] = {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)}
                          for n, b in entries.items() if n != "manifest.json"}
        entries["manifest.json"] = json.dumps(man).encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, b in entries.items():
            zf.writestr(n, b)
        zf.comment = old_comment if comment is None else comment
    return dst


def test_an_edit_anywhere_is_refused_in_one_line(made, tmp_path):
    src = made["bsb"]
    with zipfile.ZipFile(src) as zf:
        meta = json.loads(zf.read("metadata.json"))
        graph = zf.read("model.onnx")
    meta["threshold"]["value"] = 0.01
    cases = {
        "metadata": _rewrite(src, tmp_path / "a.bsb", change={"metadata.json": json.dumps(meta).encode()}),
        "graph": _rewrite(src, tmp_path / "b.bsb", change={"model.onnx": graph[:-1] + bytes([graph[-1] ^ 1])}),
        "manifest without comment": _rewrite(src, tmp_path / "c.bsb", manifest_fix=True,
                                             change={"metadata.json": json.dumps(meta).encode()}),
        "extra entry": _rewrite(src, tmp_path / "d.bsb", add={"evil.pkl": pickle.dumps({"x": 1})}),
        "no comment": _rewrite(src, tmp_path / "e.bsb", comment=b""),
    }
    raw = tmp_path / "f.bsb"
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF  # damage in the middle of the file
    raw.write_bytes(bytes(data))
    cases["flipped byte"] = raw
    (tmp_path / "g.bsb").write_bytes(pickle.dumps({"format": "blastscan-bundle"}))
    cases["a pickle named .bsb"] = tmp_path / "g.bsb"
    for what, path in cases.items():
        with pytest.raises(BlastscanError) as err:
            load_bundle(path, trust=True)
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and "refusing" in msg, (what, msg)


def test_model_json_is_validated_strictly(made, tmp_path):
    with zipfile.ZipFile(made["bsb"]) as zf:
        model = json.loads(zf.read("model.json"))
    model["n_features"] = 65
    path = _rewrite(made["bsb"], tmp_path / "m.bsb", change={"model.json": json.dumps(model).encode()},
                    manifest_fix=True)
    with zipfile.ZipFile(path) as zf:  # a consistent file: manifest and comment match the edit
        man = zf.read("manifest.json")
    _rewrite(path, tmp_path / "n.bsb", comment=b"blastscan-bsb manifest-sha256=" + hashlib.sha256(man).hexdigest().encode())
    with pytest.raises(BlastscanError, match="n_features"):
        load_bundle(tmp_path / "n.bsb")


def test_a_family_without_onnx_writer_is_one_line_and_joblib_still_works(made, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    bundle = made["bundle"]
    X = np.random.default_rng(0).normal(size=(20, 66))
    other = type(bundle)(model=KNeighborsClassifier(3).fit(X, np.arange(20) % 2), metadata=dict(bundle.metadata),
                         extras={})
    other.metadata["classifier"] = "knn"
    with pytest.raises(BlastscanError, match=r"classifier 'knn' cannot be written as a data-only bundle.*joblib"):
        save_bundle(other, tmp_path / "k.bsb")
    assert not (tmp_path / "k.bsb").exists()
    save_bundle(other, tmp_path / "k.joblib")
    assert load_bundle(tmp_path / "k.joblib").model.n_neighbors == 3


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["random", "imagenet"])
def test_deep_bundle_scores_without_tensorflow_or_weights(sample_root, tmp_path, request, weights):
    """inception_v3 (at 75 px: the real architecture, a small input; seeded random weights, and the real
    ImageNet weights where ../shared has them) + svm_pca, written with its backbone graph; then `blastscan
    score` in a process where importing tensorflow or keras fails and no weight file can be found."""
    dataset, paths = _cells(sample_root, tmp_path, n_subjects=3, per_subject=4)
    manifest = build_manifest(dataset).df
    store = tmp_path / "store"
    opts = ({"random_weights": True, "input_size": 75} if weights == "random"
            else {"weights_dir": str(request.getfixturevalue("weights_dir")), "input_size": 75})
    extract(manifest, ["inception_v3"], store, jobs=1, progress=False, extractor_options=opts)
    bundle = train_bundle(manifest, "inception_v3", "svm_pca", store, params={"n_components": 8},
                          extractor_options=opts, progress=False, settings=EvalSettings(inner_folds=2))
    path = save_bundle(bundle, tmp_path / "deep.bsb")
    with zipfile.ZipFile(path) as zf:
        assert "backbones/inception_v3.onnx" in zf.namelist()
    small = save_bundle(bundle, tmp_path / "small.bsb", embed=False)  # --no-embed: the weights are needed again
    with zipfile.ZipFile(small) as zf:
        assert not any(n.startswith("backbones/") for n in zf.namelist())
    assert "embedded_backbones" not in load_bundle(small).extras
    expected = score_frame(bundle, paths)  # the in-memory model on features computed now

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for mod in ("tensorflow", "keras"):
        (blocker / f"{mod}.py").write_text(f"raise ImportError('{mod} is blocked in this test')\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)]), "BLASTSCAN_WEIGHTS_DIR": str(empty),
           "KERAS_HOME": str(empty), "XDG_CACHE_HOME": str(empty), "HOME": str(empty)}
    out = tmp_path / "p.csv"
    code = ("import sys, blastscan.cli as c\n"
            "try:\n    c.main()\nfinally:\n"
            "    assert 'tensorflow' not in sys.modules or sys.modules['tensorflow'] is None\n")
    run = subprocess.run([sys.executable, "-c", code, "score", str(path), *paths, "-o", str(out), "-q", "-j", "1"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    got = pd.read_csv(out).set_index("path")["p_all"]
    want = expected.set_index("path")["p_all"]
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), rtol=0, atol=1e-5)
    assert want.std() > 0.001


def test_view_serves_a_data_only_bundle(made):
    import urllib.request

    from blastscan.view.server import ViewServer

    expected = score_frame(load_bundle(made["joblib"]), made["paths"][:2], made["store"]).set_index("path")
    srv = ViewServer(made["bsb"], "127.0.0.1", 0, max_upload_mb=1.0, jobs=1, token="bsb-test-token").start()
    try:
        def request(url, data=None):
            req = urllib.request.Request(url, data=data, headers={"X-Blastscan": "1",
                                                                 "X-Blastscan-Token": "bsb-test-token"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())

        info = request(srv.url + "api/bundle")
        assert info["has_reference"] and info["n_reference_cells"] > 0
        for p in made["paths"][:2]:
            res = request(f"{srv.url}api/cell?name={os.path.basename(p)}", Path(p).read_bytes())
            assert res["p_all"] == pytest.approx(expected.loc[p, "p_all"], abs=1e-9)
            assert res["neighbours"] and res["neighbours"][0]["image"].startswith("data:image/jpeg;base64,")
    finally:
        srv.close()


def test_extras_json_holds_only_typed_numeric_arrays_and_bytes():
    from blastscan.bundle.data_only import _decode, _encode, _json_loads

    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": b"\xff\xd8jpeg", "c": [np.int64(3), "x", None]}
    back = _decode(json.loads(json.dumps(_encode(data, "extras"))), "extras")
    assert back["a"].dtype == np.float32 and back["a"].shape == (2, 3) and (back["a"] == data["a"]).all()
    assert back["b"] == data["b"] and back["c"] == [3, "x", None]
    with pytest.raises(TypeError, match="object"):
        _encode({"bad": np.array([object()])}, "extras")
    with pytest.raises(TypeError, match="set"):
        _encode({"bad": {1, 2}}, "extras")
    bad = [{"__array__": {"dtype": "object", "shape": [1], "base64": ""}},                 # not a numeric dtype
           {"__array__": {"dtype": "float64", "shape": [3], "base64": "AAAAAAAAAAA="}},   # 8 bytes for 3 values
           {"__array__": {"dtype": "float64", "shape": [-1], "base64": ""}},
           {"__array__": {"dtype": "float64", "shape": [0], "base64": ""}, "x": 1},
           {"__bytes__": "not base64!"}]
    for value in bad:
        with pytest.raises(ValueError):
            _decode({"v": value}, "extras")
    for text in (b'{"a": 1, "a": 2}', b'{"a": NaN}'):
        with pytest.raises(ValueError):
            _json_loads(text)


def test_score_names_the_data_only_alternative_for_a_joblib_bundle_only(made, tmp_path):
    from click.testing import CliRunner

    from blastscan.cli import main

    for path in (made["joblib"], made["bsb"]):
        r = CliRunner().invoke(main, ["score", str(path), made["paths"][0], "-o", str(tmp_path / "p.csv"), "-q",
                                      "--store", str(made["store"])])
        assert r.exit_code == 0, r.output
        notes = [line for line in r.output.splitlines() if "runs code" in line]
        assert len(notes) == (1 if path.suffix == ".joblib" else 0)
        if notes:
            assert ".bsb" in notes[0]


def test_cli_export_writes_a_data_only_bundle_of_a_compare_run(made, tmp_path):
    from click.testing import CliRunner

    from blastscan.cli import main
    from blastscan.pipelines.compare import compare

    manifest = build_manifest(made["tmp"] / "cells.csv").df
    run = tmp_path / "run"
    compare(manifest, ["size"], ["svm"], made["store"], run, jobs=1, progress=False,
            settings=EvalSettings(folds=3, leaky_folds=0, n_boot=0))
    out = tmp_path / "e.bsb"
    r = CliRunner().invoke(main, ["export", str(run), "--config", "size/svm", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert "data-only" in r.output and zipfile.is_zipfile(out)
    bundle = load_bundle(out)
    assert bundle.metadata["source_run"]["config"] == "size/svm"
    p = bundle.predict_proba(made["paths"][:4], store=made["store"])
    assert np.isfinite(p).all()
