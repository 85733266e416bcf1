"""Engines and precision of the deep backbones: the auto rule for a given CPU, OpenVINO beside ONNX Runtime,
float32 tables reused over bf16, and a bundle's precision followed (or overridden) when scoring."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from blastscan.errors import BlastscanError
from blastscan.features import deep
from blastscan.features.base import get_extractor
from blastscan.features.engines.onnx_export import export_keras
from blastscan.features.engines.onnxruntime import OnnxRunner
from blastscan.features.featureset import FeatureSet
from blastscan.features.precision import (Cpu, bf16_support, choose_engine, engine_installed, read_cpu,
                                          resolve_precision)

XEON_AMX = Cpu("Intel Xeon", frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))
ZEN5 = Cpu("AMD EPYC", frozenset({"avx2", "avx512f", "avx512_bf16"}))
ZEN3 = Cpu("AMD EPYC 7B13", frozenset({"avx2", "fma"}))
GRAVITON3 = Cpu("", frozenset({"asimd", "bf16", "i8mm"}))
SKYLAKE = Cpu("Intel Xeon Gold", frozenset({"avx2", "avx512f"}))
NATIVE_BF16, WHY_NOT = bf16_support()
needs_bf16 = pytest.mark.skipif(not NATIVE_BF16, reason=f"needs a CPU with bfloat16 instructions: {WHY_NOT}")


def everything(engine):
    return True, ""


def only(*engines):
    return lambda engine: (engine in engines, "" if engine in engines else f"{engine} not installed")


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("BLASTSCAN_ENGINE", raising=False)
    monkeypatch.delenv(deep.BF16_EMULATED_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# -- the rule, for CPUs given as parameters ----------------------------------------------------------------
@pytest.mark.parametrize("cpu, expected", [(XEON_AMX, "bf16"), (ZEN5, "bf16"), (GRAVITON3, "bf16"),
                                           (ZEN3, "float32"), (SKYLAKE, "float32"), (Cpu(), "float32")])
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bfloat16(cpu, expected):
    assert resolve_precision("auto", cpu=cpu, installed=everything) == expected
    assert resolve_precision("float32", cpu=cpu, installed=everything) == "float32"  # forced
    assert resolve_precision(None, cpu=cpu, installed=everything) == "float32"  # the library's default


def test_auto_precision_needs_openvino_and_an_engine_that_runs_bf16_fast():
    assert resolve_precision("auto", cpu=XEON_AMX, installed=only("onnxruntime", "tensorflow")) == "float32"
    assert resolve_precision("auto", "onnxruntime", cpu=XEON_AMX, installed=everything) == "float32"
    assert resolve_precision("auto", "tensorflow", cpu=XEON_AMX, installed=everything) == "float32"
    assert resolve_precision("auto", "openvino", cpu=XEON_AMX, installed=everything) == "bf16"
    with pytest.raises(BlastscanError, match="--precision: 'fp16' is not one of auto, float32, bf16"):
        resolve_precision("fp16", cpu=XEON_AMX)


@pytest.mark.parametrize("precision, cpu, installed, expected", [
    ("bf16", XEON_AMX, everything, "openvino"),
    ("bf16", XEON_AMX, only("onnxruntime", "tensorflow"), "tensorflow"),
    ("float32", ZEN5, everything, "openvino"),  # measured 1.0-1.2x ONNX Runtime on AVX-512
    ("float32", SKYLAKE, everything, "openvino"),
    ("float32", ZEN3, everything, "onnxruntime"),  # not measured there: the float32 engine it had
    ("float32", ZEN3, only("openvino", "tensorflow"), "openvino"),
    ("float32", ZEN5, only("onnxruntime", "tensorflow"), "onnxruntime"),
    ("float32", ZEN5, only("tensorflow"), "tensorflow"),
])
def test_auto_engine_rule(precision, cpu, installed, expected):
    assert choose_engine("auto", precision, cpu=cpu, installed=installed) == expected
    assert choose_engine("tensorflow", precision, cpu=cpu, installed=installed) == "tensorflow"  # asked: kept


def test_cpu_flags_are_read_from_cpuinfo_text(tmp_path):
    text = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n" * 2
    (tmp_path / "cpuinfo").write_text(text)
    cpu = read_cpu(tmp_path / "cpuinfo")
    assert cpu == Cpu("AMD EPYC 9B14", frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"}))
    assert cpu.native_bf16 == ["avx512_bf16"] and "avx512_bf16" in cpu.describe()
    assert read_cpu(tmp_path / "missing") == Cpu()  # unreadable: no flags, so float32


def test_engine_installed_looks_modules_up_without_importing():
    assert engine_installed("openvino", find_spec=lambda m: None) == (
        False, "openvino and onnx not installed; pip install openvino onnx")
    assert engine_installed("onnxruntime", find_spec=lambda m: object()) == (True, "")


def test_engines_are_declared_by_their_modules_and_the_choices_follow():
    from blastscan.cli import main
    from blastscan.features.engines import REGISTRY
    from blastscan.features.precision import ENGINES, check_engine

    assert ENGINES == ("auto", *REGISTRY.names()) and {"onnxruntime", "openvino", "tensorflow"} <= set(ENGINES)
    for name, engine in REGISTRY.items():  # each engine is one module of engines/, named after it
        assert engine.name == name and engine.make.__module__ == f"blastscan.features.engines.{name}"
    offered = {c.name: tuple(p.type.choices) for c in main.commands.values() for p in c.params if p.name == "engine"}
    assert "extract" in offered and set(offered.values()) == {ENGINES}  # the command line offers the registered ones
    # what an engine declares decides which precisions it takes, and the message names those that do
    with pytest.raises(BlastscanError, match=r"--engine onnxruntime: runs float32 only; bf16 runs on --engine "
                                             r"openvino or tensorflow$"):
        check_engine("onnxruntime", "bf16")


def test_the_extractor_decides_for_the_cpu_it_is_given():
    on_amx = get_extractor("vgg16", random_weights=True, precision="auto", cpu=XEON_AMX)
    on_zen3 = get_extractor("vgg16", random_weights=True, precision="auto", cpu=ZEN3)
    float32 = get_extractor("vgg16", random_weights=True)
    assert on_zen3.precision == "float32" and on_zen3.identity == float32.identity == "vgg16@1-7cd3c32f7e"
    assert on_amx.precision == "bf16" and on_amx.precision_asked == "auto"
    # bf16's rounding depends on the engine: OpenVINO's bf16 is its own table, TensorFlow's keeps its identity
    assert on_amx.config()["precision"] == "bf16" and on_amx.config()["engine"] == "openvino"
    tf_bf16 = get_extractor("vgg16", random_weights=True, precision="bf16", engine="tensorflow")
    assert "engine" not in tf_bf16.config() and tf_bf16.identity not in (on_amx.identity, float32.identity)
    # float32 engines agree to float32 rounding: one table
    assert get_extractor("vgg16", random_weights=True, engine="openvino").identity == float32.identity
    assert on_amx.build_options()["engine"] == "openvino"  # a bundle rebuilds bf16 on its engine


# -- OpenVINO runs the exporter's graph ------------------------------------------------------------------
def _random_graph(size: int = 48) -> bytes:
    ext = get_extractor("vgg16", random_weights=True, input_size=size, engine="tensorflow")
    return export_keras(ext._keras_model(), size, "caffe")


def test_openvino_and_onnxruntime_run_the_same_graph_to_float32_rounding():
    from blastscan.features.engines.openvino import OpenVinoRunner

    graph = _random_graph()
    batch = np.random.default_rng(3).integers(0, 256, (3, 48, 48, 3), dtype=np.uint8)
    ov, ort = OpenVinoRunner(graph, "float32", threads=1)(batch), OnnxRunner(graph, threads=1)(batch)
    assert ov.dtype == np.float32 and ov.shape == ort.shape == (3, 512)
    cos = (ov * ort).sum(1) / np.linalg.norm(ov, axis=1) / np.linalg.norm(ort, axis=1)
    assert cos.min() > 0.99999, cos


@pytest.mark.skipif(NATIVE_BF16, reason="checks the refusal on a CPU without bfloat16")
def test_openvino_refuses_bf16_it_would_compute_in_float32():
    from blastscan.features.engines.openvino import OpenVinoRunner

    with pytest.raises(RuntimeError, match="not bfloat16"):
        OpenVinoRunner(_random_graph(), "bf16")
    ext = get_extractor("vgg16", random_weights=True, input_size=48, precision="bf16")
    with pytest.raises(BlastscanError, match="--precision bf16: .*use --precision float32"):
        ext.forward(np.zeros((1, 48, 48, 3), np.uint8))


def _embed(ext, paths) -> np.ndarray:
    results = list(ext.compute_paths([str(p) for p in paths]))
    assert not any(r.failures for r in results)
    return np.vstack([r.features for r in results])


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["inception_v3", "vgg16"])
def test_real_weights_openvino_float32_gives_onnxruntimes_embeddings(name, weights_dir, real_cell_paths):
    cells = real_cell_paths[:6]
    ov = get_extractor(name, weights_dir=weights_dir, engine="openvino", precision="float32")
    ort = get_extractor(name, weights_dir=weights_dir, engine="onnxruntime", precision="float32")
    assert ov.identity == ort.identity
    a, b = _embed(ov, cells), _embed(ort, cells)
    assert ov.engine_used.startswith("openvino") and ort.engine_used.startswith("onnxruntime")
    assert _cos(a, b).min() >= 0.99999, _cos(a, b)
    assert (np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max() < 1e-4
    if NATIVE_BF16:  # bf16 on real cells stays the same embedding (the README's 0.999 promise)
        bf16 = _embed(get_extractor(name, weights_dir=weights_dir, precision="bf16", engine="openvino"), cells)
        assert not np.array_equal(bf16, b) and _cos(bf16, b).min() >= 0.999, _cos(bf16, b)


# -- the store: float32 reused over bf16; a bundle's precision ------------------------------------------
def _manifest(tmp_path, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        p = tmp_path / "img" / f"c{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(p)
        rows.append({"path": str(p), "sha256": f"{i:064x}", "label": "all", "subject": str(i)})
    return pd.DataFrame(rows)


def test_a_complete_float32_table_is_reused_instead_of_computing_bf16(tmp_path):
    df, store = _manifest(tmp_path, 4), tmp_path / "store"
    opts = {"random_weights": True, "input_size": 32}
    FeatureSet("vgg16", {**opts, "precision": "float32"}).ensure(df.iloc[:3], store, jobs=1, progress=False)

    # the float32 table lacks an image: bf16 stays (no mixing of precisions within a feature set)
    auto = FeatureSet("vgg16", {**opts, "precision": "auto", "cpu": XEON_AMX})
    assert auto.settle_precision(df, store) == [] and auto.extractors[0].precision == "bf16"
    # it holds every image: it is read, nothing computed, and the summary says so
    auto = FeatureSet("vgg16", {**opts, "precision": "auto", "cpu": XEON_AMX})
    summary = auto.ensure(df.iloc[:3], store, jobs=1, progress=False)
    run = summary.runs[0]
    assert run.computed == 0 and run.reused == 3 and run.precision == "float32"
    assert "float32 table" in summary.format() and "bf16 not computed" in summary.format()
    fm = auto.read(df.iloc[:3], store)
    assert fm.X.shape == (3, 512) and fm.extractors[0]["precision"] == "float32"
    # asked explicitly, bf16 is bf16
    explicit = FeatureSet("vgg16", {**opts, "precision": "bf16", "cpu": XEON_AMX})
    assert explicit.settle_precision(df.iloc[:3], store) == [] and explicit.extractors[0].precision == "bf16"


def test_a_bundles_precision_is_followed_unless_another_is_asked():
    bf16 = get_extractor("vgg16", random_weights=True, input_size=32, precision="bf16", engine="openvino")
    record = [{**bf16.describe(), "kind": bf16.kind, "options": bf16.build_options(), "precision": "bf16",
               "engine": "openvino"}]
    # float32 asked: computed in float32 although the bundle was trained on bf16 features
    fs = FeatureSet.from_specs("vgg16", record, {"precision": "float32"})
    assert fs.extractors[0].precision == "float32" and "precision" not in fs.extractors[0].config()
    if NATIVE_BF16:  # by default the bundle's own precision
        assert FeatureSet.from_specs("vgg16", record, {"precision": "auto"}).extractors[0].identity == bf16.identity
    else:  # which this CPU cannot run: one line that names the way out
        with pytest.raises(BlastscanError, match="use --precision float32"):
            FeatureSet.from_specs("vgg16", record, {})
    # a CPU without bfloat16 (given as a parameter): one line that names the way out
    no_bf16 = [{**record[0], "options": {**record[0]["options"], "cpu": ZEN3}}]
    with pytest.raises(BlastscanError, match="--precision bf16: AMD EPYC 7B13 has no bfloat16.*--precision float32"):
        FeatureSet.from_specs("vgg16", no_bf16, {})
    # other weights are still refused, whatever the precision
    other = [{**record[0], "config": {**record[0]["config"], "weights": "sha256:0000"}}]
    with pytest.raises(BlastscanError, match="cannot be recomputed as in training"):
        FeatureSet.from_specs("vgg16", other, {"precision": "float32"})


@pytest.mark.parametrize("command", ["extract", "compare", "train", "score", "view"])
def test_every_feature_command_takes_the_deep_option_group(command):
    from blastscan.cli import main

    res = CliRunner().invoke(main, [command, "--help"])
    assert res.exit_code == 0
    for option in ("--weights-dir", "--precision", "--engine", "--batch-size", "openvino"):
        assert option in res.output, (command, option)


@pytest.mark.parametrize("n, batch, workers", [(192, 32, 2), (300, 32, 2), (1000, 32, 3), (5, 32, 4), (64, 8, 1)])
def test_deep_tasks_on_a_cluster_keep_every_worker_busy_to_the_end(n, batch, workers):
    from blastscan.features.compute import BATCHES_PER_TASK, _task_images

    size = _task_images(n, batch, workers)
    tasks = [min(size, n - lo) for lo in range(0, n, size)]
    assert size <= BATCHES_PER_TASK * batch and sum(tasks) == n
    # as many tasks per worker for all (the last round is not one worker's alone), and within one image
    assert len(tasks) % workers == 0 or len(tasks) < workers
    assert max(tasks) - min(tasks) <= max(1, len(tasks))
