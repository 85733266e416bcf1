"""The typed options: the deep option group parsed once into a frozen DeepOptions, a misspelt key refused,
the feature-set string parsed once into a FeatureSetSpec, store identities unchanged by the new path, and
--engine / --precision reaching the extractors from every command that computes features."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from blastscan.bundle import load_bundle
from blastscan.cli import main
from blastscan.errors import BlastscanError
from blastscan.features import deep
from blastscan.features.base import get_extractor
from blastscan.features.featureset import FeatureSet, FeatureSetSpec
from blastscan.options import DeepOptions
from blastscan.pipelines.extract import extract

SAMPLE = Path(__file__).resolve().parents[1] / "blastscan" / "sample" / "C-NMC_Leukemia" / "training_data"

# Identities of the store tables written before the options were typed (the handcrafted ones and the
# shared weights' ones are those of the dev store computed then): the new path must give the same, or
# every existing store would be computed again.
PINNED = {
    ("size+handcrafted+color_absolute+quality", ()): [
        "size@1-3de09bca21", "shape@2-29b1beb67d", "color@2-b9f3c4e930", "texture@2-22a69062f7",
        "chromatin@1-be958be53e", "color_absolute@2-4a965172df", "quality@1-bda1ad78dc"],
    ("vgg16+vgg16_grey+vgg16_od_tta8+inception_v3_mixed7+inception_v3_grey_mixed3_tta4",
     (("random_weights", True),)): [
        "vgg16@1-7cd3c32f7e", "vgg16_grey@1-af42addb00", "vgg16_od_tta8@1-a5af8b39c0",
        "inception_v3_mixed7@1-13cedaa4ef", "inception_v3_grey_mixed3_tta4@1-d5f94c54a6"],
    ("vgg16+inception_v3", (("random_weights", True), ("input_size", 96))): [
        "vgg16@1-18db2348a8", "inception_v3@1-66182b9c6c"],
    ("vgg16", (("random_weights", True), ("precision", "bf16"), ("engine", "openvino"))): ["vgg16@1-b04e463431"],
    ("vgg16", (("random_weights", True), ("precision", "bf16"), ("engine", "tensorflow"))): ["vgg16@1-7814191db4"],
    ("inception_v3_mixed8_act", (("random_weights", True),)): ["inception_v3_mixed8_act@1-41c90d05e7"],
}
PINNED_WEIGHTS = {  # with ../shared/weights; float32 on any engine and batch size: one table
    (("precision", "float32"), ("engine", "openvino"), ("batch_size", 8)): ["inception_v3@1-6d5954e56f",
                                                                          "vgg16@1-c29768690f"],
    (): ["inception_v3@1-6d5954e56f", "vgg16@1-c29768690f"],
}


@pytest.fixture(autouse=True)
def _no_engine_env(monkeypatch, tmp_path):
    monkeypatch.delenv("BLASTSCAN_ENGINE", raising=False)
    monkeypatch.setenv(deep.BF16_EMULATED_ENV, "1")  # bf16 on TensorFlow on any CPU: for checks of the output only
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# -- one frozen object; a misspelt key is an error --------------------------------------------------------
def test_deep_options_are_frozen_and_declare_what_changes_the_output():
    opts = DeepOptions(random_weights=True, input_size=32)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.batch_size = 8  # type: ignore[misc]
    assert set(DeepOptions.output_fields()) == {"random_weights", "input_size", "precision", "input_mode", "tta",
                                                "layer"}
    base = get_extractor("vgg16", opts).identity
    # the fields declared as not changing the output leave the identity as it is ...
    for change in ({"batch_size": 3}, {"engine": "tensorflow"}, {"engine": "openvino"}, {"weights_dir": "elsewhere"}):
        assert get_extractor("vgg16", opts.replace(**change)).identity == base, change
    # ... and each output field changes it (float32, the default, keeps the identity tables had before bf16)
    assert get_extractor("vgg16", opts.replace(precision="float32")).identity == base
    for change in ({"input_size": 48}, {"precision": "bf16"}, {"input_mode": "grey"}, {"tta": 4}):
        assert get_extractor("vgg16", opts.replace(engine="tensorflow", **change)).identity != base, change
    inception = DeepOptions(random_weights=True)
    assert (get_extractor("inception_v3", inception.replace(layer="mixed7")).identity
            != get_extractor("inception_v3", inception).identity)


@pytest.mark.parametrize("build", [
    lambda: DeepOptions.from_mapping({"weigths_dir": "w"}),
    lambda: DeepOptions().replace(batchsize=8),
    lambda: get_extractor("vgg16", random_weights=True, precison="bf16"),
    lambda: FeatureSet("shape", {"input_sise": 64}),
])
def test_a_misspelt_option_key_is_a_one_line_error(build):
    with pytest.raises(BlastscanError, match=r"unknown option '\w+'; choose from: weights_dir, ") as err:
        build()
    assert "\n" not in str(err.value)


def test_a_misspelt_key_stops_extract_before_any_image_is_read(tmp_path):
    manifest = pd.DataFrame({"path": [str(tmp_path / "never-read.png")], "sha256": ["0" * 64]})
    with pytest.raises(BlastscanError, match="unknown option 'batchsize'"):
        extract(manifest, ["size"], tmp_path / "store", extractor_options={"batchsize": 8}, progress=False)
    assert not (tmp_path / "store").exists()


# -- the feature-set string, parsed once ----------------------------------------------------------------
def test_a_feature_set_spec_expands_unions_and_spells_variants_canonically():
    spec = FeatureSetSpec.parse("size+handcrafted+inception_v3_rgb_tta1+vgg16_tta8_grey")
    assert spec.parts == ("size", "handcrafted", "inception_v3_rgb_tta1", "vgg16_tta8_grey")
    assert spec.names == ("size", "shape", "color", "texture", "chromatin", "inception_v3", "vgg16_grey_tta8")
    specs = FeatureSetSpec.parse_list(" size, handcrafted+vgg16 ,size,")
    assert [s.text for s in specs] == ["size", "handcrafted+vgg16"]
    assert FeatureSetSpec.union(specs).names == ("size", "shape", "color", "texture", "chromatin", "vgg16")
    assert all(a is b for a, b in zip(FeatureSetSpec.parse_list(specs), specs))  # parsed ones are kept as they are
    with pytest.raises(BlastscanError, match="vgg16_gray': unknown option 'gray' of vgg16"):
        FeatureSetSpec.parse_list("size,vgg16_gray")
    with pytest.raises(BlastscanError, match="--features: no feature set given"):
        FeatureSetSpec.parse_list(" , ")


def test_a_misspelt_feature_set_fails_before_the_dataset_is_read(tmp_path):
    res = CliRunner().invoke(main, ["extract", str(tmp_path), "-f", "size,handcraftd", "--store", str(tmp_path / "s")])
    assert res.exit_code == 2 and "unknown part 'handcraftd'" in res.output
    assert not (tmp_path / "s").exists()


# -- store identities unchanged ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, options", list(PINNED))
def test_identities_built_through_the_options_are_those_of_existing_stores(text, options):
    fs = FeatureSet(FeatureSetSpec.parse(text), DeepOptions(**dict(options)))
    assert [e.identity for e in fs.extractors] == PINNED[(text, options)]


@pytest.mark.parametrize("options", list(PINNED_WEIGHTS))
def test_identities_with_the_real_weights_are_those_of_existing_stores(weights_dir, options):
    fs = FeatureSet(FeatureSetSpec.parse("inception_v3+vgg16"), DeepOptions(weights_dir=weights_dir, **dict(options)))
    assert [e.identity for e in fs.extractors] == PINNED_WEIGHTS[options]


def _cells(n_per_class: int = 6) -> list[Path]:
    cells = []
    for label in ("all", "hem"):
        found = sorted(SAMPLE.glob(f"fold_*/{label}/*.bmp")) + sorted(SAMPLE.glob(f"fold_*/{label}/*.png"))
        by_subject: dict[str, list[Path]] = {}
        for p in found:
            by_subject.setdefault(p.name.split("_")[1], []).append(p)
        picked = [p for ps in by_subject.values() for p in ps[:2]]
        cells += picked[:n_per_class]
    return cells


def _table_identities(store: Path) -> list[str]:
    return sorted(json.loads(m.read_text())["extractor"]["identity"] for m in store.glob("*/meta.json"))


@pytest.fixture(scope="module")
def cells_csv(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cells")
    rows = [{"path": str(p), "label": p.parent.name} for p in _cells()]
    pd.DataFrame(rows).to_csv(folder / "cells.csv", index=False)
    return folder / "cells.csv"


def _invoke(args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


def test_a_real_extract_records_the_pinned_identities(cells_csv, tmp_path):
    store = tmp_path / "store"
    _invoke(["extract", cells_csv, "-f", "size,handcrafted", "--store", store, "--jobs", "1", "-q"])
    pinned = PINNED[("size+handcrafted+color_absolute+quality", ())][:5]
    assert _table_identities(store) == sorted(pinned)


# -- --engine and --precision reach the extractors, from every command that computes features ---------------
def test_demo_takes_the_deep_option_group_too():
    res = CliRunner().invoke(main, ["demo", "--help"])
    assert res.exit_code == 0
    for option in ("--weights-dir", "--precision", "--engine", "--batch-size"):
        assert option in res.output, option
    assert "--random-weights" not in res.output
DEEP = ["-f", "vgg16", "--random-weights", "--input-size", "32", "--engine", "tensorflow", "--precision", "bf16"]


@pytest.mark.slow
def test_extract_passes_engine_and_precision_to_the_extractor(cells_csv, tmp_path):
    out = _invoke(["extract", cells_csv, *DEEP, "--store", tmp_path / "store", "--jobs", "1", "-q"])
    assert re.search(r"vgg16 +vgg16@1-\S+ \[bf16\]: 12 images: computed 12.*, tensorflow ", out), out
    # TensorFlow's bf16 table at 32 px, with the identity the code before typed options gave it
    assert _table_identities(tmp_path / "store") == ["vgg16@1-39fbb5539d"]


@pytest.mark.slow
def test_compare_passes_engine_and_precision_to_the_extractor(cells_csv, tmp_path):
    _invoke(["compare", cells_csv, *DEEP, "-c", "logreg", "--folds", "2", "--bootstrap", "10", "--store",
             tmp_path / "store", "--out", tmp_path / "run", "--jobs", "1", "-q"])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    made = run["feature_sets"]["vgg16"]["extractors"][0]
    assert (made["precision"], made["engine"], made["identity"]) == ("bf16", "tensorflow", "vgg16@1-39fbb5539d")
    assert run["extractor_options"]["engine"] == "tensorflow" and run["extractor_options"]["precision"] == "bf16"


@pytest.mark.slow
def test_train_and_score_pass_engine_and_precision_to_the_extractor(cells_csv, tmp_path):
    bundle = tmp_path / "model.joblib"
    _invoke(["train", cells_csv, *DEEP, "-c", "logreg", "--folds", "2", "--inner-folds", "2", "--bootstrap", "10",
             "--store", tmp_path / "store", "--out", bundle, "--jobs", "1", "-q"])
    made = load_bundle(bundle).metadata["extractors"][0]
    assert (made["precision"], made["engine"], made["identity"]) == ("bf16", "tensorflow", "vgg16@1-39fbb5539d")
    cells = [str(p) for p in _cells(2)]
    # score follows the bundle's precision, and --precision / --engine when given
    followed = _invoke(["score", bundle, *cells, "-o", tmp_path / "a.csv", "--jobs", "1", "-q"])
    assert "deep features: vgg16 bf16 on tensorflow" in followed, followed
    asked = _invoke(["score", bundle, *cells, "-o", tmp_path / "b.csv", "--precision", "float32", "--engine",
                     "tensorflow", "--batch-size", "2", "--jobs", "1", "-q"])
    assert "deep features: vgg16 float32 on tensorflow" in asked, asked
