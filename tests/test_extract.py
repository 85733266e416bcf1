"""Extract pipeline: computes only what is missing, keeps work on interruption, joins in manifest order."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from blastscan.errors import BlastscanError
from blastscan.features import base, compute
from blastscan.features.base import BatchExtractor, BatchResult, PerImageExtractor
from blastscan.features.featureset import clear_extractor_cache
from blastscan.features.store import FeatureStore
from blastscan.pipelines import extract as ex


def _make_fake_extractors(log_dir: Path, fail_on_mean: float | None = None, interrupt_after: int | None = None):
    """Build fake extractors as local classes (pickled by value for worker processes)."""

    class FakePixel(PerImageExtractor):
        name = "fake_px"
        version = "1"

        def __init__(self, options=None):
            self.log_dir = str(log_dir)

        @property
        def feature_names(self):
            return ["px_mean", "px_max"]

        def compute(self, image):
            mean = float(image.mean())
            with open(Path(self.log_dir) / "calls.log", "a") as fh:
                fh.write(f"{mean}\n")
            if interrupt_after is not None:
                n = len((Path(self.log_dir) / "calls.log").read_text().split())
                if n > interrupt_after:
                    raise KeyboardInterrupt
            if fail_on_mean is not None and abs(mean - fail_on_mean) < 1e-6:
                raise BlastscanError("cell", "segmentation failed: no nucleus")
            return np.array([mean, image.max()], np.float32)

    class FakeBatch(BatchExtractor):
        name = "fake_batch"
        version = "2"

        def __init__(self, options=None):
            self.size = (options.input_size if options is not None else None) or 4

        def config(self):
            return {"size": self.size}

        @property
        def feature_names(self):
            return [f"b{i}" for i in range(3)]

        def compute_paths(self, paths):
            for start in range(0, len(paths), 2):
                idx = list(range(start, min(start + 2, len(paths))))
                feats = np.array([[i, self.size, 1.0] for i in idx], np.float32)
                yield BatchResult(indices=idx, features=feats, failures={})

    _register("fake_px", FakePixel)
    _register("fake_batch", FakeBatch)
    clear_extractor_cache()
    return FakePixel, FakeBatch


def _register(name: str, factory) -> None:
    """Register a test's extractor, replacing one that an earlier call of the same test registered."""
    base.EXTRACTORS.remove(name)
    base.EXTRACTORS.register(name, factory)


def _manifest(tmp_path: Path, values: list[int], dup_of_first: bool = False) -> pd.DataFrame:
    rows = []
    for i, v in enumerate(values):
        p = tmp_path / f"img_{i}.png"
        Image.fromarray(np.full((8, 8, 3), v, np.uint8)).save(p)
        rows.append({"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "label": "all"})
    if dup_of_first:
        p = tmp_path / "copy_of_0.png"
        p.write_bytes(Path(rows[0]["path"]).read_bytes())
        rows.append({"path": str(p), "sha256": rows[0]["sha256"], "label": "all"})
    return pd.DataFrame(rows)


def _calls(tmp_path: Path) -> int:
    log = tmp_path / "calls.log"
    return len(log.read_text().split()) if log.exists() else 0


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    base.EXTRACTORS.remove("fake_px")
    base.EXTRACTORS.remove("fake_batch")
    clear_extractor_cache()


def test_second_run_computes_nothing_and_duplicates_are_computed_once(tmp_path):
    _make_fake_extractors(tmp_path)
    man = _manifest(tmp_path, [10, 20, 30], dup_of_first=True)
    s1 = ex.extract(man, ["fake_px"], tmp_path / "store", jobs=1, progress=False)
    assert (s1.runs[0].computed, s1.runs[0].reused, s1.runs[0].failed) == (3, 0, 0)
    assert _calls(tmp_path) == 3  # the byte-identical copy is not computed again
    s2 = ex.extract(man, ["fake_px"], tmp_path / "store", jobs=1, progress=False)
    assert (s2.runs[0].computed, s2.runs[0].reused) == (0, 3)
    assert _calls(tmp_path) == 3


def test_parallel_workers_give_the_same_features(tmp_path):
    _make_fake_extractors(tmp_path)
    man = _manifest(tmp_path, list(range(0, 250, 3)))  # > one task per worker
    ex.extract(man, "fake_px", tmp_path / "s2", jobs=2, progress=False)
    fm = ex.load_features(man, "fake_px", tmp_path / "s2")
    np.testing.assert_allclose(fm.X[:, 0], list(range(0, 250, 3)))


def test_failures_are_listed_not_raised_and_not_retried_unless_asked(tmp_path):
    _make_fake_extractors(tmp_path, fail_on_mean=20.0)
    man = _manifest(tmp_path, [10, 20, 30])
    s1 = ex.extract(man, ["fake_px"], tmp_path / "store", jobs=1, progress=False)
    run = s1.runs[0]
    assert (run.computed, run.failed) == (2, 1)
    assert run.failures == [(man.path[1], "segmentation failed: no nucleus")]
    assert "segmentation failed" in s1.format()
    s2 = ex.extract(man, ["fake_px"], tmp_path / "store", jobs=1, progress=False)
    assert (s2.runs[0].computed, s2.runs[0].reused, s2.runs[0].failed) == (0, 2, 1)
    assert _calls(tmp_path) == 3
    ex.extract(man, ["fake_px"], tmp_path / "store", jobs=1, progress=False, retry_failed=True)
    assert _calls(tmp_path) == 4
    fm = ex.load_features(man, "fake_px", tmp_path / "store")
    assert fm.rows.path.tolist() == [man.path[0], man.path[2]]
    assert fm.dropped.path.tolist() == [man.path[1]]
    assert "no nucleus" in fm.dropped.reason[0]


def test_unreadable_image_is_a_failure(tmp_path):
    _make_fake_extractors(tmp_path)
    man = _manifest(tmp_path, [10, 20])
    Path(man.path[1]).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    s = ex.extract(man, ["fake_px"], tmp_path / "store", jobs=1, progress=False)
    assert s.runs[0].failed == 1 and s.runs[0].failures[0][0] == man.path[1]


def test_interrupted_run_keeps_finished_rows_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(compute, "TASK_IMAGES", 2)
    _make_fake_extractors(tmp_path, interrupt_after=5)
    man = _manifest(tmp_path, list(range(10, 110, 10)))
    with pytest.raises(KeyboardInterrupt):
        ex.extract(man, ["fake_px"], tmp_path / "store", jobs=1, progress=False)
    ident = base.EXTRACTORS.get("fake_px")().identity
    kept = FeatureStore(tmp_path / "store").known_shas(ident)
    assert len(kept) == 4  # two finished tasks of two images each; the one in flight is lost
    _make_fake_extractors(tmp_path)
    s = ex.extract(man, ["fake_px"], tmp_path / "store", jobs=1, progress=False)
    assert (s.runs[0].computed, s.runs[0].reused) == (6, 4)


def test_batch_extractor_and_union_feature_set_join_in_manifest_order(tmp_path):
    _make_fake_extractors(tmp_path)
    man = _manifest(tmp_path, [10, 20, 30, 40, 50])
    ex.extract(man, ["fake_px+fake_batch"], tmp_path / "store", jobs=1, progress=False)
    shuffled = man.iloc[[3, 0, 4, 1, 2]].reset_index(drop=True)
    fm = ex.load_features(shuffled, "fake_px+fake_batch", tmp_path / "store")
    assert fm.feature_names == ["px_mean", "px_max", "b0", "b1", "b2"]
    np.testing.assert_allclose(fm.X[:, 0], [40, 10, 50, 20, 30])
    assert [d["name"] for d in fm.extractors] == ["fake_px", "fake_batch"]


def test_identity_follows_config_so_other_settings_are_not_reused(tmp_path):
    _make_fake_extractors(tmp_path)
    man = _manifest(tmp_path, [10, 20])
    ex.extract(man, ["fake_batch"], tmp_path / "store", jobs=1, progress=False, extractor_options={"input_size": 4})
    with pytest.raises(BlastscanError, match="blastscan extract"):
        ex.load_features(man, "fake_batch", tmp_path / "store", extractor_options={"input_size": 8})


def test_missing_rows_name_the_command_that_computes_them(tmp_path):
    _make_fake_extractors(tmp_path)
    man = _manifest(tmp_path, [10, 20, 30])
    ex.extract(man.iloc[:2], ["fake_px"], tmp_path / "store", jobs=1, progress=False)
    with pytest.raises(BlastscanError, match=r"1 of 3 images; run: blastscan extract"):
        ex.load_features(man, "fake_px", tmp_path / "store")


def test_unknown_feature_set_is_a_clear_error(tmp_path):
    man = _manifest(tmp_path, [10])
    with pytest.raises(BlastscanError, match="unknown"):
        ex.extract(man, ["handcrafted+nope"], tmp_path / "store", progress=False)


def test_equivalent_options_share_one_extractor_instance():
    from blastscan.features.featureset import build_extractor as _extractor

    # Scoring a bundle passes the recorded input size explicitly; the instance (and its built network)
    # from extraction with the default size must be reused, not built a second time.
    a = _extractor("vgg16", {"random_weights": True})
    b = _extractor("vgg16", {"random_weights": True, "input_size": 224})
    c = _extractor("vgg16", {"random_weights": True, "input_size": 160})
    assert a is b
    assert c is not a and c.identity != a.identity


def _shared_context_extractors(log_dir: Path, fail_second_on_mean: float | None = None):
    """Two per-image extractors with one context key: the context (a 'segmentation') must be built once."""

    class _Shared(PerImageExtractor):
        version = "1"
        context = "fake_ctx"

        def __init__(self, options=None):
            self.log_dir = str(log_dir)

        def make_context(self, image):
            with open(Path(self.log_dir) / "calls.log", "a") as fh:
                fh.write("ctx\n")
            return float(image.mean())

        def compute(self, image):
            return self.compute_context(self.make_context(image))

    class CtxA(_Shared):
        name = "fake_ctx_a"
        feature_names = ["a"]

        def compute_context(self, ctx):
            return np.array([ctx], np.float32)

    class CtxB(_Shared):
        name = "fake_ctx_b"
        feature_names = ["b1", "b2"]

        def compute_context(self, ctx):
            if fail_second_on_mean is not None and abs(ctx - fail_second_on_mean) < 1e-6:
                raise BlastscanError("features", "no nucleoli")
            return np.array([2 * ctx, -ctx], np.float32)

    _register("fake_ctx_a", CtxA)
    _register("fake_ctx_b", CtxB)
    clear_extractor_cache()


@pytest.mark.parametrize("jobs", [1, 2])
def test_families_sharing_a_context_build_it_once_per_image(tmp_path, jobs):
    _shared_context_extractors(tmp_path, fail_second_on_mean=20.0)
    try:
        man = _manifest(tmp_path, [10, 20, 30] + list(range(40, 40 + 3 * 40, 3)))  # several tasks with jobs=2
        s = ex.extract(man, ["fake_ctx_a", "fake_ctx_b"], tmp_path / "store", jobs=jobs, progress=False)
        assert _calls(tmp_path) == len(man)  # one context per image for both extractors
        a, b = s.runs
        assert (a.computed, a.failed) == (len(man), 0) and (b.computed, b.failed) == (len(man) - 1, 1)
        assert b.failures == [(man.path[1], "no nucleoli")]  # one family's failure does not fail the other
        fm = ex.load_features(man, "fake_ctx_a+fake_ctx_b", tmp_path / "store")
        assert fm.feature_names == ["a", "b1", "b2"] and len(fm.rows) == len(man) - 1
        np.testing.assert_allclose(fm.X[:, 1], 2 * fm.X[:, 0])
        # Only the missing family is computed later; its context is built for the images it lacks only.
        ex.extract(man, ["fake_ctx_a", "fake_ctx_b"], tmp_path / "store", jobs=jobs, progress=False)
        assert _calls(tmp_path) == len(man)
    finally:
        base.EXTRACTORS.remove("fake_ctx_a")
        base.EXTRACTORS.remove("fake_ctx_b")


def test_a_cell_that_fails_is_one_line_whatever_the_number_of_families():
    from blastscan.features.compute import ExtractorRun
    from blastscan.features.featureset import ExtractSummary

    why = "segmentation failed: no nucleus"
    runs = [ExtractorRun(name, f"{name}@1", 2, computed=0, failed=2, failures=[("a.bmp", why), ("b.bmp", why)])
            for name in ("shape", "color", "texture", "chromatin")]
    runs.append(ExtractorRun("vgg16", "vgg16@1", 2, failed=1, failures=[("b.bmp", "unreadable")]))
    text = ExtractSummary(runs, Path("store")).format()
    failed = [line for line in text.splitlines() if line.startswith("  failed:")]
    assert failed == [f"  failed: a.bmp: {why} (chromatin, color, shape, texture)",
                      f"  failed: b.bmp: shape, color, texture, chromatin: {why}; vgg16: unreadable"]
    assert ExtractSummary(runs, Path("store")).format(max_failures=1).endswith("... and 1 more image failed")


def test_the_readme_extract_example_holds_every_set_the_default_compare_reads():
    """After the README's `extract`, the default `compare` must find every feature in the store (issue 23:
    `extract -f handcrafted` left `size` to be computed from the images again)."""
    import re

    from blastscan.features.base import available_extractors
    from blastscan.pipelines.compare import DEFAULT_FEATURE_SETS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = re.search(r"^blastscan extract DATASET --features (\S+)", readme, re.M)
    assert example, "the README's extract example is gone"
    extracted = set(example[1].replace("+", ",").split(","))
    # the default compare reads DEFAULT_FEATURE_SETS (the deep ones when their weights are found)
    needed = {name for fs in DEFAULT_FEATURE_SETS for name in fs.split("+")} & set(available_extractors())
    assert needed and needed <= extracted, (needed, extracted)


def test_a_family_alone_and_within_its_shared_context_group_stores_the_same_rows(tmp_path):
    """One extraction path: a family computed alone (a group of one) and with the other families of its
    context (one segmentation for all) give the same table, on real cells, in-process and in workers."""
    from blastscan.dataset import build_manifest

    sample = Path(__file__).resolve().parents[1] / "blastscan" / "sample"
    paths = [str(sample / p) for p in pd.read_csv(sample / "manifest.csv")["path"][:10]]
    man = build_manifest(paths, jobs=1, progress=False).df
    alone = ex.extract(man, ["shape"], tmp_path / "alone", jobs=1, progress=False).runs[0]
    grouped = ex.extract(man, ["shape", "color"], tmp_path / "grouped", jobs=2, progress=False).runs[0]
    assert alone.identity == grouped.identity and alone.computed == grouped.computed == len(man)
    a = ex.load_features(man, "shape", tmp_path / "alone")
    g = ex.load_features(man, "shape", tmp_path / "grouped")
    assert a.feature_names == g.feature_names and list(a.rows) == list(g.rows)
    np.testing.assert_array_equal(a.X, g.X)
