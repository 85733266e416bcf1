"""The ONNX Runtime engine of the deep backbones: same embeddings as TensorFlow, cached graph, fallbacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from blastscan.errors import BlastscanError
from blastscan.features import deep
from blastscan.features.engines import graph_cache, onnxruntime
from blastscan.features.backbones import Backbone
from blastscan.features.base import get_extractor
from blastscan.options import DeepOptions

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not onnxruntime.available()[0], reason="onnxruntime not installed")


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(deep.WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("BLASTSCAN_ENGINE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))


def embed(ext, paths) -> np.ndarray:
    results = list(ext.compute_paths([str(p) for p in paths]))
    assert not any(r.failures for r in results)
    return np.vstack([r.features for r in results])


def assert_same_function(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float32 rounding: what the engines may differ by (and nothing more)."""
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99999, cos.min()
    scale = np.abs(b).max(axis=1, keepdims=True)
    assert (np.abs(a - b) / scale).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v3", "vgg16"])
def test_real_weights_give_tensorflows_embeddings_and_the_graph_is_cached(name, weights_dir, real_cell_paths,
                                                                        tmp_path):
    ort = get_extractor(name, weights_dir=weights_dir, engine="onnxruntime")
    tf = get_extractor(name, weights_dir=weights_dir, engine="tensorflow")
    assert ort.identity == tf.identity  # one feature table for both engines
    a, b = embed(ort, real_cell_paths), embed(tf, real_cell_paths)
    assert ort.engine_used.startswith("onnxruntime") and tf.engine_used.startswith("tensorflow")
    assert_same_function(a, b)
    cached = graph_cache.cache_path(name, ort.input_size, ort.weights_sha256)
    assert cached.is_file() and cached.parent == tmp_path / "cache" / "blastscan" / "onnx"
    # a later process runs the cached graph without importing TensorFlow, and gets the same numbers
    code = ("import sys, numpy as np\n"
            "from blastscan.features.base import get_extractor\n"
            f"e = get_extractor({name!r}, weights_dir={str(weights_dir)!r}, engine='onnxruntime')\n"
            f"paths = {[str(p) for p in real_cell_paths[:4]]!r}\n"
            "x = np.vstack([r.features for r in e.compute_paths(paths)])\n"
            "np.save(sys.argv[1], x)\n"
            "print(e.engine_used, 'tensorflow' in sys.modules)\n")
    out = tmp_path / "x.npy"
    res = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    engine, imported_tf = res.stdout.split()[-3:-1], res.stdout.split()[-1]
    assert engine[0] == "onnxruntime" and imported_tf == "False", res.stdout
    np.testing.assert_array_equal(np.load(out), a[:4])


@pytest.mark.parametrize("name,size", [pytest.param("inception_v3", 75, marks=pytest.mark.slow), ("vgg16", 48)])
def test_random_weights_same_function_both_engines_with_preprocessing(name, size, tmp_path):
    rng = np.random.default_rng(1)
    batch = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)  # every channel matters (BGR for vgg16)
    ort = get_extractor(name, random_weights=True, input_size=size, engine="onnxruntime")
    tf = get_extractor(name, random_weights=True, input_size=size, engine="tensorflow")
    a, b = ort.forward(batch), tf.forward(batch)
    assert_same_function(a, b)
    swapped = ort.forward(batch[..., ::-1].copy())  # a channel-order slip would go unnoticed otherwise
    assert not np.allclose(swapped, a, rtol=1e-3)
    assert not (tmp_path / "cache" / "blastscan" / "onnx").exists()  # random weights: nothing cached


def _mobilenet(size: int) -> Backbone:
    return Backbone(name="mobilenet_v2", constructor="MobileNetV2", preprocess_module="mobilenet_v2",
                    input_size=size, dim=1280, min_size=32, keras_file="x.h5", keras_subdir="x", keras_md5="x",
                    preprocess_mode="tf")


def test_a_network_with_other_layers_falls_back_to_tensorflow_or_says_why():
    batch = np.zeros((1, 32, 32, 3), np.uint8)
    # depthwise convolutions, Add, ZeroPadding2D
    auto = deep.DeepExtractor(_mobilenet(32), DeepOptions(random_weights=True))
    assert auto.forward(batch).shape == (1, 1280)
    assert auto.engine_used.startswith("tensorflow")
    forced = deep.DeepExtractor(_mobilenet(32), DeepOptions(random_weights=True, engine="onnxruntime"))
    with pytest.raises(BlastscanError, match="cannot be written as an ONNX graph .*use --engine tensorflow"):
        forced.forward(batch)


def test_damaged_or_unwritable_cache_still_gives_the_same_embeddings(weights_dir, real_cell_paths, tmp_path,
                                                                    monkeypatch):
    ext = get_extractor("vgg16", weights_dir=weights_dir, input_size=64, engine="onnxruntime")
    path = graph_cache.cache_path("vgg16", 64, ext.weights_sha256)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an onnx graph")  # e.g. a disk that filled up before atomic writes existed
    first = embed(ext, real_cell_paths[:3])
    assert path.stat().st_size > 1_000_000  # rewritten
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # the cache folder cannot be made
    again = get_extractor("vgg16", weights_dir=weights_dir, input_size=64, engine="onnxruntime", batch_size=2)
    np.testing.assert_array_equal(embed(again, real_cell_paths[:3]), first)


def test_engine_choice_is_checked_once_with_one_line_errors(monkeypatch):
    with pytest.raises(BlastscanError, match="'gpu' is not one of auto, onnxruntime, openvino, tensorflow"):
        get_extractor("vgg16", random_weights=True, engine="gpu")
    with pytest.raises(BlastscanError, match="float32 only"):
        get_extractor("vgg16", random_weights=True, engine="onnxruntime", precision="bf16")
    monkeypatch.setenv("BLASTSCAN_ENGINE", "tensorflow")
    assert get_extractor("vgg16", random_weights=True).engine == "tensorflow"
    monkeypatch.setenv("BLASTSCAN_ENGINE", "cuda")
    with pytest.raises(BlastscanError, match=r"\$BLASTSCAN_ENGINE"):
        get_extractor("vgg16", random_weights=True)
    monkeypatch.delenv("BLASTSCAN_ENGINE")
    # bf16 (auto) runs on OpenVINO (installed here), TensorFlow being the reference
    bf16 = get_extractor("vgg16", random_weights=True, precision="bf16")
    assert bf16.engine == "auto" and bf16.engine_choice == "openvino"


def test_cli_extract_names_the_engine_and_refuses_an_unknown_one(tmp_path, sample_root):
    from blastscan.cli import main

    cells = tmp_path / "cells"
    for label in ("all", "hem"):
        (cells / label).mkdir(parents=True)
        for p in sorted(sample_root.rglob(f"*_{label}.png"))[:2]:
            (cells / label / p.name).symlink_to(p)
    args = ["extract", str(cells), "-f", "vgg16", "--random-weights", "--input-size", "48", "-q",
            "--store", str(tmp_path / "store")]
    res = CliRunner().invoke(main, args + ["--engine", "onnxruntime"])
    assert res.exit_code == 0, res.output
    assert "computed 4" in res.output and "onnxruntime" in res.output
    bad = CliRunner().invoke(main, args + ["--engine", "gpu"])
    assert bad.exit_code == 2 and "'gpu' is not one of" in bad.output
