"""The compare grid and its run folder: files, run.json, report numbers that match metrics.csv, leaky
labelling, skipped configurations, provenance. Uses synthetic features and small scikit-learn models
(no image work), so it checks the plumbing, not the real classifiers."""

from __future__ import annotations

import contextlib
import json
import re
from numbers import Real

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB

from blastscan import options
from blastscan import provenance as prov
from blastscan.classifiers.base import CLASSIFIERS, Interval, register_classifier
from blastscan.errors import BlastscanError
from blastscan.evaluation import EvalSettings
from blastscan.features.featureset import FeatureMatrix, FeatureSetSpec
from blastscan.pipelines import compare as cmp
from blastscan.report.results import LEAKY_NOTE
from blastscan.report.document import fmt


class Broken(LogisticRegression):
    """A classifier whose fit fails the expected way (as a model whose backend is missing would)."""

    def fit(self, X, y, sample_weight=None):
        raise BlastscanError("classifier 'broken'", "its backend is not installed")


def _nb(random_state=0, var_smoothing=1e-9):
    return GaussianNB(var_smoothing=var_smoothing)


def _broken(random_state=0):
    return Broken()


def synthetic_manifest(seed=0):
    """12 ALL subjects, 3 HEM subjects (so 5 folds must shrink to 3), two subjects in a 'prelim' phase."""
    rng = np.random.default_rng(seed)
    rows = []
    subjects = [(str(i), "all") for i in range(12)] + [("H1", "hem"), ("H2", "hem"), ("H3", "hem"), ("H4", "hem")]
    for s, (subj, label) in enumerate(subjects):
        split = "prelim" if subj in ("11", "H4") else f"fold_{s % 3}"
        for k in range(int(rng.integers(4, 30))):
            rows.append({"path": f"/data/{subj}/{k}.png", "sha256": f"{s:04d}{k:060d}", "label": label,
                         "subject": subj, "group": subj, "source_split": split, "width": 450, "height": 450,
                         "dup_group": -1})
    rows.append({"path": "/data/unlabelled.png", "sha256": "f" * 64, "label": None, "subject": None,
                 "group": "img:ffff", "source_split": "final", "width": 450, "height": 450, "dup_group": -1})
    df = pd.DataFrame(rows)
    # H3 holds one class only in the test folds it lands in; H4 exists only in prelim, so the CV has 3 HEM groups
    df = df[~((df["subject"] == "H3") & (df["source_split"] != "fold_0"))]
    return df.reset_index(drop=True)


def _features(df, seed=0):
    rng = np.random.default_rng(seed)
    subj_shift = {s: rng.normal(0, 0.6, 4) for s in df["subject"].dropna().unique()}
    out = {}
    for r in df.itertuples():
        base = subj_shift.get(r.subject, np.zeros(4)) + (1.0 if r.label == "all" else 0.0)
        out[r.sha256] = (base + rng.normal(0, 1, 4)).astype(np.float32)
    return out


def fake_features_for(df):
    """Feature loading for compare's ``features_for`` parameter (the real function's signature)."""
    feats = _features(df)

    def features_for(manifest_df, feature_set, store, *, extractor_options=None, jobs=None, progress=True,
                     dataset_hint="DATASET"):
        if feature_set == "missing":
            raise BlastscanError(str(store), f"no 'missing' features for {len(manifest_df)} images; "
                                             f"run: blastscan extract {dataset_hint} --features missing")
        X = np.stack([feats[s] for s in manifest_df["sha256"]])
        if feature_set == "half":
            X = X[:, :2]
        return None, FeatureMatrix(X=X, feature_names=[f"f{i}" for i in range(X.shape[1])],
                                   rows=manifest_df.reset_index(drop=True),
                                   dropped=manifest_df.iloc[:0].assign(reason=pd.Series(dtype=str)),
                                   extractors=[{"name": feature_set, "identity": f"{feature_set}@1"}],
                                   feature_set=feature_set)

    return features_for


@contextlib.contextmanager
def fake_families():
    """Two extra classifier families, registered as any family is (and forgotten afterwards): a small
    scikit-learn model and one whose fit fails the expected way."""
    with CLASSIFIERS.restored():
        register_classifier("nb", "Gaussian naive Bayes (test)",
                            params={"var_smoothing": [Interval(Real, 0, None, closed="left")]}, default=False)(_nb)
        register_classifier("broken", "fails to fit (test)", params={}, default=False)(_broken)
        yield


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    df = synthetic_manifest()
    out = tmp_path_factory.mktemp("run")
    with fake_families():
        result = cmp.compare(df, "full,half", "logreg,nb,broken", tmp_path_factory.mktemp("store"), out,
                             features_for=fake_features_for(df),
                             settings=EvalSettings(folds=5, seed=0, n_boot=200), jobs=1, progress=False,
                             dataset="synthetic",
                             params=["logreg.C=0.5"])
    return df, result


def test_run_folder_has_every_file(run):
    _, result = run
    for name in ("metrics.csv", "metrics.json", "predictions.csv", "per_subject.csv", "report.md", "report.html",
                 "run.json", "manifest.parquet"):
        assert (result.run_dir / name).is_file(), name
    assert not list(result.run_dir.glob(".*.tmp"))  # atomic writes left no temporaries


def test_run_json_follows_the_contract(run):
    df, result = run
    rec = json.loads((result.run_dir / "run.json").read_text())
    for key in ("dataset", "manifest", "store", "extractor_options", "seed", "n_splits", "threshold", "configs",
                "best", "versions", "data", "started", "finished"):
        assert key in rec, key
    assert rec["threshold"] == {"rule": "recall", "target_recall": 0.9}
    assert {c["name"] for c in rec["configs"]} == {"full/logreg", "full/nb", "half/logreg", "half/nb"}
    assert [c for c in rec["configs"] if c["name"] == "full/logreg"][0]["params"] == {"C": 0.5}
    assert rec["best"] == result.best
    saved = pd.read_parquet(result.run_dir / rec["manifest"])
    assert len(saved) == len(df) and saved["used"].sum() == len(df) - 1  # the unlabelled image is not used
    used = saved[saved["used"]]
    assert rec["data"]["manifest_sha256"] == prov.manifest_hash(used)
    assert rec["data"]["n_images"] == len(used)
    assert rec["n_splits"] == 3 and rec["n_splits_requested"] == 5


def test_best_is_the_top_pooled_roc_auc_and_the_report_shows_its_numbers(run):
    # issue 23: the ranking is threshold-free (ROC-AUC first), so threshold luck cannot crown a configuration
    _, result = run
    m = pd.read_csv(result.run_dir / "metrics.csv")
    pooled = m[(m["split"] == "subject_cv_pooled") & m["headline"]]
    key = pooled["roc_auc_within_folds"].where(pooled["roc_auc_within_folds"].notna(), pooled["roc_auc"])
    top = pooled.assign(_key=key).sort_values(["_key", "weighted_f1"], ascending=False).iloc[0]
    assert top["config"] == result.best
    auc, lo, hi = fmt(top["roc_auc"]), fmt(top["roc_auc_ci_low"]), fmt(top["roc_auc_ci_high"])
    wf1 = fmt(top["weighted_f1"])
    assert float(lo) <= float(auc) <= float(hi)
    md = (result.run_dir / "report.md").read_text()
    head = md.split("\n## ")[0]  # before the first section: the top of the report
    assert result.best in head and f"ROC-AUC **{auc}**" in head and f"{lo}–{hi}" in head
    assert f"weighted F1 {wf1}" in head
    assert f"{int(top['n'])} cells from {int(top['n_subjects'])} subjects" in head
    html = (result.run_dir / "report.html").read_text()
    first_p = re.search(r"<p>(.*?)</p>", html, re.S).group(1)
    assert result.best in first_p and f"<strong>{auc}</strong>" in first_p
    assert result.summary().splitlines()[0].startswith(f"Best configuration by ROC-AUC: {result.best}: ROC-AUC {auc}")
    # metrics.csv lists configurations in the ranking's order, each with its rank
    ranks = m.drop_duplicates("config")[["config", "rank"]]
    assert list(ranks["rank"]) == sorted(ranks["rank"]) and ranks.iloc[0]["config"] == result.best
    # every configuration's pooled ROC-AUC then weighted F1 appears in the table as formatted
    for _, r in pooled.iterrows():
        assert (f"| {r['config']} | {fmt(r['roc_auc_within_folds'])} | {fmt(r['roc_auc'])} [" in md
                and f"] | {fmt(r['weighted_f1'])} [" in md)


def test_report_is_self_contained_and_says_how_to_read_it(run):
    _, result = run
    html = (result.run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert "http://" not in html and "https://" not in html
    md = (result.run_dir / "report.md").read_text()
    n = result.run["data"]["n_subjects"]
    assert "How to read this" in md and f"only {n} subjects" in md and "not a medical device" in md


def test_leaky_numbers_are_labelled_leaky_everywhere(run):
    _, result = run
    m = pd.read_csv(result.run_dir / "metrics.csv")
    leaky = m[m["split"] == "leaky_image_cv_pooled"]
    assert len(leaky) == 4 and leaky["note"].str.contains(LEAKY_NOTE, regex=False).all()
    for name in ("report.md", "report.html"):
        text = (result.run_dir / name).read_text()
        section = text[text.index("Leaky per-image split"):]
        assert LEAKY_NOTE[1:] in section and "do not trust" in section


def test_skipped_configurations_and_fold_reduction_are_reported(run):
    _, result = run
    assert {s["name"] for s in result.skipped} == {"full/broken", "half/broken"}
    md = (result.run_dir / "report.md").read_text()
    assert "skipped **full/broken**: its backend is not installed" in md
    assert "using 3 folds" in md
    assert "skipped full/broken" in result.summary()


def test_predictions_are_out_of_fold_and_subject_disjoint(run):
    df, result = run
    pred = pd.read_csv(result.run_dir / "predictions.csv", dtype={"subject": str, "group": str, "fold": str})
    for col in ("path", "sha256", "subject", "group", "label", "fold", "p_all", "config"):
        assert col in pred.columns
    cv = pred[(pred["split"] == "subject_cv") & (pred["config"] == result.best)]
    assert cv["sha256"].is_unique and len(cv) == len(df) - 1
    by_fold = cv.groupby("fold")["group"].apply(set)
    for a in by_fold.index:
        for b in by_fold.index:
            if a != b:
                assert by_fold[a].isdisjoint(by_fold[b])
    official = pred[(pred["split"] == "official") & (pred["config"] == result.best)]
    assert set(official["subject"]) == {"11", "H4"}
    # per-subject accuracy agrees with the predictions it summarises
    ps = pd.read_csv(result.run_dir / "per_subject.csv", dtype={"subject": str})
    ps = ps[ps["config"] == result.best].set_index("subject")
    right = (cv["pred"] == cv["label"]).groupby(cv["subject"]).mean()
    for subj, acc in right.items():
        assert ps.loc[subj, "accuracy"] == pytest.approx(acc)


def test_same_folds_for_every_configuration(run):
    _, result = run
    p = result.predictions[result.predictions["split"] == "subject_cv"]
    folds = p.pivot(index="sha256", columns="config", values="fold")
    assert (folds.nunique(axis=1) == 1).all()


def test_missing_features_error_propagates(tmp_path):
    df = synthetic_manifest()
    with fake_families():
        with pytest.raises(BlastscanError, match=r"run: blastscan extract DATA --features missing"):
            cmp.compare(df, "full,missing", "logreg", tmp_path / "store", tmp_path / "run", progress=False,
                        features_for=fake_features_for(df),
                        dataset="DATA", settings=EvalSettings(n_boot=0), jobs=1)


def test_bad_options_fail_early(tmp_path):
    df = synthetic_manifest()
    with fake_families():
        with pytest.raises(BlastscanError, match="unknown"):
            cmp.compare(df, "full", "nosuch", tmp_path, tmp_path / "r", progress=False)
        with pytest.raises(BlastscanError, match="--threshold"):
            cmp.compare(df, "full", "logreg", tmp_path, tmp_path / "r", settings=EvalSettings(threshold_rule="auc"),
                        progress=False)
        with pytest.raises(BlastscanError, match="not among"):
            cmp.compare(df, "full", "logreg", tmp_path, tmp_path / "r", params=["svm.C=1"], progress=False)


def test_parse_params():
    assert options.parse_params(["svm.C=10", "svm.kernel=rbf", "xgboost.max_depth=3", "fcn.hidden=[64,32]",
                             "logreg.fit_intercept=false", "svm.gamma=0.5"]) == {
        "svm": {"C": 10, "kernel": "rbf", "gamma": 0.5}, "xgboost": {"max_depth": 3},
        "fcn": {"hidden": [64, 32]}, "logreg": {"fit_intercept": False}}
    with pytest.raises(BlastscanError, match="CLASSIFIER.NAME=VALUE"):
        options.parse_params(["C=10"])


def test_manifest_hash_covers_content_not_paths_or_order():
    df = synthetic_manifest()
    h = prov.manifest_hash(df)
    moved = df.assign(path="/elsewhere/" + df["path"].str.slice(6)).sample(frac=1, random_state=1)
    assert prov.manifest_hash(moved) == h
    relabelled = df.copy()
    relabelled.loc[0, "label"] = "hem"
    assert prov.manifest_hash(relabelled) != h
    regrouped = df.copy()
    regrouped.loc[0, "group"] = "other"
    assert prov.manifest_hash(regrouped) != h
    # missing labels hash the same however pandas stores them
    a = pd.DataFrame({"sha256": ["x", "y"], "label": ["all", None], "group": ["1", "2"]})
    b = a.astype({"label": "string"})
    assert prov.manifest_hash(a) == prov.manifest_hash(b)


def test_provenance_records_versions_without_importing_tensorflow():
    import sys

    before = "tensorflow" in sys.modules
    rec = prov.provenance(synthetic_manifest(), config={"seed": 0})
    assert rec["versions"]["numpy"] == np.__version__ and rec["versions"]["python"]
    assert rec["config_sha256"] == prov.config_hash({"seed": 0}) and len(rec["manifest_sha256"]) == 64
    assert rec["created"].endswith("Z")
    assert ("tensorflow" in sys.modules) == before


def test_report_screens_narrow_feature_sets(run):
    _, result = run
    assert set(result.screening) == {"full", "half"}  # both synthetic sets are narrow
    table = result.screening["full"]
    assert {"auc_cells", "auc_subjects", "flag"} <= set(table.columns) and len(table) == 4
    assert (result.run_dir / "screening.csv").is_file()
    assert "## Feature screening" in (result.run_dir / "report.md").read_text()


def test_operating_points_are_measured_on_held_out_subjects_and_tabled(run):
    # issue 23: target ALL recall 0.90 / 0.95 / 0.97, each threshold chosen inside the training part
    _, result = run
    m = pd.read_csv(result.run_dir / "metrics.csv")
    op = m[m["split"] == "subject_cv_operating_point"]
    for config, rows in op.groupby("config"):
        rows = rows.sort_values("target_recall")
        assert list(rows["target_recall"]) == [0.90, 0.95, 0.97]
        # per fold a higher target never raises the threshold: recall cannot fall, specificity cannot rise
        assert (np.diff(rows["recall_all"]) >= -1e-12).all() and (np.diff(rows["specificity"]) <= 1e-12).all()
        head = m[(m["config"] == config) & (m["split"] == "subject_cv_pooled") & m["headline"]].iloc[0]
        same = rows[np.isclose(rows["target_recall"], 0.90)].iloc[0]  # the run's own target: the headline
        assert same["recall_all"] == pytest.approx(head["recall_all"])
        assert same["specificity"] == pytest.approx(head["specificity"])
        assert (rows["recall_all_ci_low"] <= rows["recall_all"]).all()
    md = (result.run_dir / "report.md").read_text()
    assert "## Operating points: target ALL recall 0.90 / 0.95 / 0.97" in md and "0.90 (shipped)" in md
    assert "## Calibration of P(ALL)" in md
    rec = {r["name"]: r for r in result.run["results"]}
    assert all(set(r["target_thresholds"]) == {"0.90", "0.95", "0.97"} for r in rec.values())
    assert "reliability" in cmp_figures(result)


def cmp_figures(result):
    from blastscan.report.figures import make_figures

    return make_figures(result)


def test_export_ships_only_an_operating_point_the_run_measured(run):
    from blastscan.pipelines.export import run_estimate

    _, result = run
    rec = json.loads((result.run_dir / "run.json").read_text())
    est = run_estimate(result.run_dir, rec, result.best, "recall", 0.95)
    m = pd.read_csv(result.run_dir / "metrics.csv")
    row = m[(m["config"] == result.best) & (m["split"] == "subject_cv_operating_point")
            & np.isclose(m["target_recall"], 0.95)].iloc[0]
    assert est["metrics"]["specificity"] == pytest.approx(row["specificity"])
    assert est["ci"]["recall_all"] == pytest.approx([row["recall_all_ci_low"], row["recall_all_ci_high"]])
    assert len(est["fold_thresholds"]) == rec["n_splits"]
    with pytest.raises(BlastscanError, match="did not measure that target.*0.90, 0.95, 0.97"):
        run_estimate(result.run_dir, rec, result.best, "recall", 0.80)


def test_a_feature_set_parsed_at_the_edge_reaches_the_feature_loader_as_it_is(tmp_path):
    """The command line parses -f once; compare hands that object, not its text, to the features' loader."""
    df = synthetic_manifest()
    spec = FeatureSetSpec("full", ("full",), ("full",))
    seen = []
    fake = fake_features_for(df)

    def spy(rows, feature_set, store, **kw):
        seen.append(feature_set)
        return fake(rows, str(feature_set), store, **kw)

    result = cmp.compare(df, [spec, "half"], "logreg", tmp_path / "store", tmp_path / "run", features_for=spy,
                         settings=EvalSettings(n_boot=0), jobs=1, progress=False, dataset="synthetic")
    assert seen[0] is spec and seen[1] == "half"
    assert set(result.metrics["config"]) == {"full/logreg", "half/logreg"}
