"""Issue 24, the cached ONNX graph: flipped bytes, another network under the name, NaN weights with a
forged record: each is rebuilt from the weights (never run), and the rebuilt graph gives the same numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blastscan.errors import BlastscanError
from blastscan.features.engines import graph_cache
from blastscan.features.engines.onnxruntime import available

pytestmark = pytest.mark.skipif(not available()[0], reason="onnxruntime not installed")
SIZE = 16


def _tiny(width: int, seed: int = 0):
    from blastscan._tf import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    x = keras.Input((SIZE, SIZE, 3))
    y = keras.layers.Conv2D(width, 3, activation="relu")(x)
    return keras.Model(x, keras.layers.GlobalAveragePooling2D()(y))


class Builder:
    def __init__(self, width=4):
        self.width, self.calls = width, 0

    def __call__(self):
        self.calls += 1
        return _tiny(self.width)


BATCH = np.random.default_rng(5).integers(0, 256, (3, SIZE, SIZE, 3), np.uint8)


@pytest.fixture
def cached(tmp_path):
    path = tmp_path / "onnx" / "tiny-16px-x.onnx"
    build = Builder()
    run = graph_cache.load_or_export(path, build, SIZE, "tf", dim=4)
    assert build.calls == 1 and path.is_file() and graph_cache.record_path(path).is_file()
    return path, run(BATCH)


def _load(path, dim=4):
    build = Builder()
    run = graph_cache.load_or_export(path, build, SIZE, "tf", dim=dim)
    return build.calls, run(BATCH)


def test_a_sound_cached_graph_is_used_without_building(cached):
    path, want = cached
    calls, got = _load(path)
    assert calls == 0
    np.testing.assert_array_equal(got, want)


def test_bit_flips_in_the_cached_graph_mean_a_rebuild(cached, capsys):
    path, want = cached
    good = path.read_bytes()
    rng = np.random.default_rng(2)
    for pos in rng.choice(len(good), size=5, replace=False):
        bad = bytearray(good)
        bad[pos] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(bad))
        calls, got = _load(path)
        assert calls == 1  # rebuilt, never run as it was
        np.testing.assert_array_equal(got, want)
        assert _load(path)[0] == 0  # the cache holds a sound graph again
        good = path.read_bytes()
    assert "does not match the sha256" in capsys.readouterr().err


def test_another_network_under_the_name_means_a_rebuild(cached, tmp_path):
    path, want = cached
    other = tmp_path / "other" / "tiny-16px-x.onnx"
    graph_cache.load_or_export(other, Builder(width=8), SIZE, "tf", dim=8)
    path.write_bytes(other.read_bytes())  # the graph alone: its sha256 is not the recorded one
    assert _load(path)[0] == 1
    # the graph with its own record: the record says another width
    path.write_bytes(other.read_bytes())
    graph_cache.record_path(path).write_bytes(graph_cache.record_path(other).read_bytes())
    calls, got = _load(path)
    assert calls == 1
    np.testing.assert_array_equal(got, want)


def test_nan_weights_with_a_forged_record_fail_the_probe_and_are_rebuilt(cached):
    import onnx
    from onnx import numpy_helper

    from blastscan._io import file_sha256

    path, want = cached
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        if init.name.endswith("/W"):
            w = numpy_helper.to_array(init).copy()
            w.flat[0] = np.nan
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    path.write_bytes(proto.SerializeToString())
    rec = json.loads(graph_cache.record_path(path).read_text())
    rec["sha256"] = file_sha256(path)  # the checksum matches: only the probe can tell
    graph_cache.record_path(path).write_text(json.dumps(rec))
    calls, got = _load(path)
    assert calls == 1 and np.isfinite(got).all()
    np.testing.assert_array_equal(got, want)


def test_a_network_that_gives_nan_even_when_rebuilt_is_one_line(tmp_path):
    def nan_net():
        m = _tiny(4)
        k = m.layers[1].kernel
        k.assign(np.full(k.shape, np.nan, np.float32))
        return m

    with pytest.raises(BlastscanError, match="NaN or inf on a probe batch"):
        graph_cache.load_or_export(tmp_path / "n.onnx", nan_net, SIZE, "tf", dim=4)
    assert not (tmp_path / "n.onnx").exists()


@pytest.mark.slow
def test_extract_over_a_bit_flipped_cached_graph_rebuilds_it_and_stores_the_same_features(weights_dir, sample_root,
                                                                                         tmp_path):
    """The issue's case end to end: real weights, a flipped byte in the cached graph (the file still
    loads); the next extract rebuilds the graph and stores the same embeddings, never NaN."""
    import os
    import subprocess
    import sys

    import pandas as pd

    cells = tmp_path / "cells" / "all"
    cells.mkdir(parents=True)
    src = sorted((sample_root / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all").iterdir())[:3]
    for p in src:
        (cells / p.name).write_bytes(p.read_bytes())
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONWARNINGS": "ignore",
           "TF_CPP_MIN_LOG_LEVEL": "2"}

    def extract(store):
        res = subprocess.run([sys.executable, "-m", "blastscan.cli", "extract", str(cells.parent), "-f",
                              "inception_v3", "--input-size", "75", "--weights-dir", str(weights_dir), "--store",
                              str(store), "--engine", "onnxruntime", "-q", "-j", "1"],
                             capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0 and "failed 0" in res.stdout, res.stdout + res.stderr[-2000:]
        parts = sorted(store.glob("inception_v3*/part-*.parquet"))
        return pd.concat([pd.read_parquet(p) for p in parts]).set_index("sha256").sort_index(), res.stderr

    first, _ = extract(tmp_path / "s1")
    (graph,) = list((tmp_path / "cache" / "blastscan" / "onnx").glob("inception_v3-75px-*.onnx"))
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside the weights: the graph still loads
    graph.write_bytes(bytes(data))
    second, err = extract(tmp_path / "s2")
    assert "does not match the sha256" in err
    assert np.isfinite(second.to_numpy(np.float32)).all()
    pd.testing.assert_frame_equal(first, second)
