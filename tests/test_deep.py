"""Frozen deep backbones: registry, weights resolution, preprocessing, batching, and real embeddings."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from blastscan.errors import BlastscanError
from blastscan.features import backbones, deep
from blastscan.features.base import get_extractor

ROOT = Path(__file__).resolve().parents[1]
_BUILT: dict[tuple, deep.DeepExtractor] = {}


def built(name: str, **options) -> deep.DeepExtractor:
    """One extractor per (name, options) for the whole module: building a network costs seconds."""
    key = (name, tuple(sorted((k, str(v)) for k, v in options.items())))
    if key not in _BUILT:
        _BUILT[key] = get_extractor(name, **options)
    return _BUILT[key]


def embed(ext, paths) -> np.ndarray:
    results = list(ext.compute_paths([str(p) for p in paths]))
    assert not any(r.failures for r in results)
    return np.vstack([r.features for r in results])


def mean_pairwise_cosine(X: np.ndarray) -> float:
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = Xn @ Xn.T
    return float(C[np.triu_indices(len(X), 1)].mean())


def write_png(path: Path, seed: int, size=(60, 50)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(autouse=True)
def isolated_lookup(monkeypatch, tmp_path):
    """No weights from the environment or the Keras cache, and a private sha256 cache, unless a test sets them."""
    monkeypatch.delenv(deep.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def fake_weights(folder: Path, content: bytes, name: str = "vgg16_imagenet_notop.weights.h5") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(content)
    return folder


# -- no TensorFlow for import and construction ---------------------------------------------------------
def test_import_and_construction_do_not_import_tensorflow():
    code = (
        "import sys, blastscan.cli, blastscan.features.deep\n"
        "from blastscan.features.base import get_extractor\n"
        "e = get_extractor('inception_v3', random_weights=True, input_size=160)\n"
        "e.identity, e.feature_names\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# -- weights resolution and identity -------------------------------------------------------------------
def test_missing_weights_name_backbone_places_and_fixes(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BlastscanError) as err:
        get_extractor("vgg16", weights_dir=str(empty))
    msg = str(err.value)
    assert msg.startswith("vgg16 weights: not found")
    for part in ("vgg16_imagenet_notop.weights.h5", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 str(empty), "--weights-dir", "BLASTSCAN_WEIGHTS_DIR", "blastscan weights --download"):
        assert part in msg
    with pytest.raises(BlastscanError) as err:  # nothing given: the Keras cache is searched, and named
        get_extractor("inception_v3")
    assert str(tmp_path / "keras-home" / "models") in str(err.value)


def test_weights_lookup_order(tmp_path, monkeypatch):
    both = fake_weights(tmp_path / "both", b"ours")
    fake_weights(both, b"keras", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert deep.find_weights("vgg16", both).path.name == "vgg16_imagenet_notop.weights.h5"
    keras_only = fake_weights(tmp_path / "k", b"keras", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert deep.find_weights("vgg16", keras_only).path.parent == keras_only
    # a file is used as is, unless it is another backbone's file
    assert deep.find_weights("vgg16", both / "vgg16_imagenet_notop.weights.h5").path is not None
    assert deep.find_weights("inception_v3", both / "vgg16_imagenet_notop.weights.h5").path is None
    # the environment variable, then the Keras cache
    monkeypatch.setenv(deep.WEIGHTS_ENV, str(keras_only))
    assert deep.find_weights("vgg16").path.parent == keras_only
    monkeypatch.delenv(deep.WEIGHTS_ENV)
    cache = fake_weights(tmp_path / "keras-home" / "models", b"k", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    assert deep.find_weights("vgg16").path.parent == cache
    # a folder given explicitly is authoritative: no fallback to the cache
    assert deep.find_weights("vgg16", tmp_path / "nowhere").path is None


def test_identity_follows_input_size_and_weights_not_batch_size(tmp_path):
    a = fake_weights(tmp_path / "a", b"weights A")
    a_copy = fake_weights(tmp_path / "a-copy", b"weights A")
    b = fake_weights(tmp_path / "b", b"weights B")
    ident = lambda **o: get_extractor("vgg16", **o).identity  # noqa: E731
    assert ident(weights_dir=a) == ident(weights_dir=a_copy)  # content counts, not the path
    assert ident(weights_dir=a) != ident(weights_dir=b)
    assert ident(weights_dir=a) != ident(random_weights=True)
    assert ident(weights_dir=a) != ident(weights_dir=a, input_size=160)
    assert ident(weights_dir=a, batch_size=4) == ident(weights_dir=a, batch_size=64)
    cfg = get_extractor("vgg16", weights_dir=a).config()
    assert cfg["weights"] == "sha256:" + hashlib.sha256(b"weights A").hexdigest()
    assert cfg["input_size"] == 224 and get_extractor("inception_v3", random_weights=True).config()["input_size"] == 299
    assert "random" in get_extractor("vgg16", random_weights=True).config()["weights"]


def test_weights_sha256_is_cached_and_follows_changes(tmp_path):
    f = tmp_path / "w.h5"
    f.write_bytes(b"one")
    assert deep.file_sha256(f) == hashlib.sha256(b"one").hexdigest()
    cache_file = tmp_path / "cache" / "blastscan" / "weights-sha256.json"
    cache = json.loads(cache_file.read_text())
    # a cached entry (same path, size, mtime) is trusted, not rehashed
    cache[os.path.realpath(f)]["sha256"] = "cached"
    cache_file.write_text(json.dumps(cache))
    backbones._SHA_MEMO.clear()
    assert deep.file_sha256(f) == "cached"
    # a changed file is hashed again
    f.write_bytes(b"two")
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert deep.file_sha256(f) == hashlib.sha256(b"two").hexdigest()


def test_invalid_sizes_are_clear_errors():
    with pytest.raises(BlastscanError, match="--input-size"):
        get_extractor("inception_v3", random_weights=True, input_size=64)
    with pytest.raises(BlastscanError, match="--batch-size"):
        get_extractor("vgg16", random_weights=True, batch_size=0)


# -- command line ----------------------------------------------------------------------------------------
def test_cli_extract_without_weights_is_one_line_error(tmp_path):
    from blastscan.cli import main

    for i in range(2):
        write_png(tmp_path / "data" / "all" / f"a{i}.png", i)
        write_png(tmp_path / "data" / "hem" / f"h{i}.png", 10 + i)
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "data"), "--features", "vgg16", "-q",
                                    "--weights-dir", str(tmp_path / "empty"), "--store", str(tmp_path / "store")])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("note: ")]  # dataset notes aside
    assert len(lines) == 1 and lines[0].startswith("error: vgg16 weights: not found"), res.stderr


def test_cli_weights_reports_found_and_missing(tmp_path):
    from blastscan.cli import main

    folder = fake_weights(tmp_path / "w", b"vgg bytes")
    res = CliRunner().invoke(main, ["weights", "--weights-dir", str(folder)])
    assert res.exit_code == 1  # inception_v3 is missing
    out = {line.split()[0]: line for line in res.stdout.splitlines()}
    assert "found" in out["vgg16"] and hashlib.sha256(b"vgg bytes").hexdigest() in out["vgg16"]
    assert "missing" in out["inception_v3"] and "--weights-dir" in out["inception_v3"]


# -- preprocessing and batches (random weights, small inputs) ----------------------------------------------
@pytest.mark.parametrize("name, size, expected", [
    # inception_v3: x / 127.5 - 1 on RGB; vgg16: BGR minus the ImageNet mean, no scaling
    ("inception_v3", 75, [200 / 127.5 - 1, 100 / 127.5 - 1, 50 / 127.5 - 1]),
    ("vgg16", 32, [50 - 103.939, 100 - 116.779, 200 - 123.68]),
])
def test_preprocessing_is_the_backbones_own(name, size, expected):
    import importlib

    ext = built(name, random_weights=True, input_size=size)
    flat = np.zeros((40, 70, 3), np.uint8) + np.array([200, 100, 50], np.uint8)
    x = ext.preprocess([flat])
    assert x.shape == (1, size, size, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 5, 7], expected, rtol=1e-5)
    noisy = np.random.default_rng(0).integers(0, 256, (90, 60, 3), dtype=np.uint8)
    own = importlib.import_module(f"keras.applications.{name}").preprocess_input
    np.testing.assert_allclose(ext.preprocess([noisy])[0], own(ext.resize(noisy).astype(np.float32)), atol=1e-4)


def test_embeddings_are_deterministic_and_batches_cover_every_path(tmp_path):
    a, b = write_png(tmp_path / "a.png", 1), write_png(tmp_path / "b.png", 2)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = [a, b, corrupt, a, tmp_path / "gone.png", b]
    ext = built("vgg16", random_weights=True, input_size=48, batch_size=2)
    results = list(ext.compute_paths([str(p) for p in paths]))
    assert len(results) == 3
    covered = [i for r in results for i in r.indices] + [i for r in results for i in r.failures]
    assert sorted(covered) == list(range(len(paths)))
    failures = {i: why for r in results for i, why in r.failures.items()}
    assert set(failures) == {2, 4} and all(failures.values())
    rows = {i: f for r in results for i, f in zip(r.indices, r.features)}
    assert all(f.shape == (512,) and f.dtype == np.float32 and np.isfinite(f).all() for f in rows.values())
    # same image in another batch position -> same vector; another image -> another vector
    np.testing.assert_allclose(rows[0], rows[3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows[1], rows[5], rtol=1e-5, atol=1e-6)
    assert not np.allclose(rows[0], rows[1])
    # seeded random weights: a fresh instance gives the same vectors
    again = get_extractor("vgg16", random_weights=True, input_size=48, batch_size=4)
    np.testing.assert_allclose(embed(again, [a])[0], rows[0], rtol=1e-5, atol=1e-6)


def test_unloadable_weights_file_is_a_clear_error(tmp_path):
    folder = fake_weights(tmp_path / "w", b"not an h5 file")
    ext = get_extractor("vgg16", weights_dir=folder, input_size=32)
    with pytest.raises(BlastscanError, match="cannot load as vgg16 weights"):
        list(ext.compute_paths([str(write_png(tmp_path / "a.png", 0))]))


def test_extract_pipeline_stores_then_reuses(tmp_path):
    from blastscan.dataset import build_manifest
    from blastscan.pipelines.extract import extract, load_features

    for i in range(3):
        write_png(tmp_path / "data" / "all" / f"a{i}.png", i)
    manifest = build_manifest(tmp_path / "data", progress=False).df
    opts = {"random_weights": True, "input_size": 40, "batch_size": 2}
    first = extract(manifest, ["vgg16"], tmp_path / "store", extractor_options=opts, progress=False)
    assert first.runs[0].computed == 3
    second = extract(manifest, ["vgg16"], tmp_path / "store", extractor_options=dict(opts, batch_size=8),
                     progress=False)
    assert second.runs[0].computed == 0 and second.runs[0].reused == 3  # batch size is not in the identity
    fm = load_features(manifest, "vgg16", tmp_path / "store", extractor_options=opts)
    assert fm.X.shape == (3, 512) and fm.feature_names[0] == "vgg16_avgpool_0000"


# -- real ImageNet weights on real cells -----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v3", "vgg16"])
def test_real_weights_tell_cells_apart_random_weights_do_not(name, weights_dir, real_cell_paths):
    real = mean_pairwise_cosine(embed(built(name, weights_dir=weights_dir, input_size=160), real_cell_paths))
    rand = mean_pairwise_cosine(embed(built(name, random_weights=True, input_size=160), real_cell_paths))
    assert rand > 0.97  # untrained networks map every cell to nearly the same vector
    assert real < 0.93 and real < rand - 0.05, (real, rand)


def _subject_sample(root: Path, per_class: int = 120, per_subject: int = 25):
    """Up to ``per_subject`` cells from each subject, largest subjects first, until ``per_class`` cells."""
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    picked = []
    for label in ("all", "hem"):
        by_subject: dict[str, list] = {}
        for r in rows:
            if r["label"] == label:
                by_subject.setdefault(r["subject"], []).append(r)
        quota = per_class
        for subject in sorted(by_subject, key=lambda s: (-len(by_subject[s]), s)):
            take = by_subject[subject][:min(per_subject, quota)]
            picked += take
            quota -= len(take)
    return ([root / r["path"] for r in picked], np.array([r["label"] == "all" for r in picked], int),
            np.array([r["subject"] for r in picked]))


@pytest.mark.slow  # a real network over real cells of several subjects
def test_inception_embeddings_separate_all_from_hem_across_subjects(weights_dir, cnmc_root):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    paths, y, subjects = _subject_sample(cnmc_root)
    assert len(set(subjects[y == 1])) >= 4 and len(set(subjects[y == 0])) >= 4
    X = embed(built("inception_v3", weights_dir=weights_dir, input_size=160), paths)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.001, max_iter=2000))
    proba = cross_val_predict(model, X, y, groups=subjects, cv=GroupKFold(n_splits=5), method="predict_proba")[:, 1]
    auc = roc_auc_score(y, proba)
    # chance is 0.5; every cell is scored by a model that never saw its subject. (~0.74 measured; with
    # only two large HEM subjects in this subset, subject-disjoint AUC stays modest.)
    assert auc > 0.6, auc


def test_extractor_pickles_settings_not_its_network():
    import pickle

    ext = built("vgg16", random_weights=True, input_size=48, batch_size=2)
    ext.forward(np.zeros((1, 48, 48, 3), np.uint8))
    clone = pickle.loads(pickle.dumps(ext))
    assert clone.identity == ext.identity and clone._run is None and clone.engine_used is None
    with pytest.raises(TypeError, match="uint8"):  # float input would be scaled twice: refused
        ext.forward(np.zeros((1, 48, 48, 3), np.float32))


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["auto", "tensorflow"])
def test_tensorflow_start_up_chatter_does_not_reach_the_terminal(tmp_path, engine):
    # TensorFlow's C++ runtime writes oneDNN/absl lines to fd 2 on import and first use; on a command
    # line they read like errors. The real stderr of a subprocess is what a user would see.
    code = (
        "import numpy as np, blastscan.features.deep as d\n"
        "from blastscan.features.base import get_extractor\n"
        f"e = get_extractor('vgg16', random_weights=True, input_size=32, engine={engine!r})\n"
        "print(e.forward(np.zeros((2, 32, 32, 3), np.uint8)).shape)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=180, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 512)"
    assert "oneDNN" not in out.stderr and "absl" not in out.stderr and "cpu_feature_guard" not in out.stderr, out.stderr


# -- precision (bf16) -------------------------------------------------------------------------------------
def test_float32_identity_is_unchanged_and_bf16_has_its_own():
    # Pinned: these are the identities of the tables computed before --precision existed.
    assert get_extractor("inception_v3", random_weights=True).identity == "inception_v3@1-43a931244e"
    assert get_extractor("vgg16", random_weights=True).identity == "vgg16@1-7cd3c32f7e"
    f32 = get_extractor("vgg16", random_weights=True, precision="float32")
    bf16 = get_extractor("vgg16", random_weights=True, precision="bf16")
    assert "precision" not in f32.config() and f32.identity == "vgg16@1-7cd3c32f7e"
    assert bf16.config()["precision"] == "bf16" and bf16.identity != f32.identity
    assert get_extractor("vgg16", random_weights=True, precision="bfloat16").identity == bf16.identity
    with pytest.raises(BlastscanError, match="--precision"):
        get_extractor("vgg16", random_weights=True, precision="fp16")


@pytest.mark.parametrize("cpuinfo, ok", [
    ("model name\t: Intel Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile\n", True),
    ("model name\t: Intel Xeon\nflags\t\t: fpu avx2 amx_bf16\n", True),
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),
    ("model name\t: AMD EPYC\nflags\t\t: fpu avx2 fma avx512f\n", False),
    ("", False),
])
def test_bf16_support_reads_the_cpu_flags(cpuinfo, ok):
    got, why = deep.bf16_support(cpuinfo)
    assert got is ok and why
    if not ok:
        assert "no bfloat16 instructions" in why


def test_cli_bf16_on_a_cpu_without_it_is_one_line_error(tmp_path, monkeypatch):
    from blastscan.cli import main

    monkeypatch.delenv(deep.BF16_EMULATED_ENV, raising=False)
    monkeypatch.setattr(deep, "bf16_support", lambda cpuinfo=None, cpu=None: (False, "Test CPU has no bfloat16 instructions"))
    for i in range(2):
        write_png(tmp_path / "data" / "all" / f"a{i}.png", i)
        write_png(tmp_path / "data" / "hem" / f"h{i}.png", 10 + i)
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "data"), "-f", "handcrafted,vgg16", "-q",
                                    "--random-weights", "--precision", "bf16", "--store", str(tmp_path / "store")])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("note: ")]  # dataset notes aside
    assert len(lines) == 1 and lines[0].startswith("error: --precision bf16: Test CPU"), res.stderr
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").glob("handcrafted*"))  # checked first


@pytest.mark.slow
def test_bf16_embeddings_match_float32_on_real_cells(weights_dir, real_cell_paths, monkeypatch):
    monkeypatch.setenv(deep.BF16_EMULATED_ENV, "1")  # runs on any CPU (slower where emulated)
    # at the backbone's own input size (299): the setting the 0.999 promise is made for
    f32 = embed(built("inception_v3", weights_dir=weights_dir), real_cell_paths)
    bf16_ext = get_extractor("inception_v3", weights_dir=weights_dir, precision="bf16", engine="tensorflow")
    bf16 = embed(bf16_ext, real_cell_paths)
    assert bf16.dtype == np.float32 and bf16.shape == f32.shape
    assert bf16_ext._model.layers[-2].compute_dtype == "bfloat16"  # really computed in bfloat16 ...
    assert not np.array_equal(bf16, f32)
    cos = (f32 * bf16).sum(1) / np.linalg.norm(f32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() >= 0.999, cos  # ... and still the same embedding
    import keras

    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored after the build
