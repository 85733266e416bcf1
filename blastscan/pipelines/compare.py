"""The comparison grid: feature sets x classifiers, evaluated subject-disjoint, written as a run folder.

For every configuration: a subject-disjoint CV (thresholds chosen inside each training part), the
dataset's official phase (train folds -> preliminary test) when present, and a per-image split that is
kept only to show how much it inflates results (labelled leaky everywhere). All configurations share the
same folds, so they are compared on the same cells and subjects. :func:`compare` is a short sequence of
named steps: prepare the data, plan the splits, run the grid, assemble each configuration, write.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pandas as pd

from blastscan import provenance as prov
from blastscan._io import check_writable_dir
from blastscan.classifiers import available_classifiers, classifier_inputs, get_classifier
from blastscan.classifiers import default_classifiers as registered_defaults
from blastscan.classifiers.finetune import share_weights_dir
from blastscan.dataset.subjects import mixed_subjects, require_subjects
from blastscan.errors import BlastscanError
from blastscan.evaluation import EvalSettings
from blastscan.evaluation.screening import feature_screening
from blastscan.features.deep import BACKBONES, find_weights  # importing deep registers the backbones
from blastscan.features.featureset import FeatureSetSpec
from blastscan.options import DeepOptions, parse_params, resolve_jobs, split_list
from blastscan.pipelines.assemble import assemble_grid
from blastscan.pipelines.extract import features_for
from blastscan.pipelines.grid import ConfigSpec, add_votes, plan_splits, prepare_data, run_grid, vote_spec
from blastscan.report.results import CompareResult
from blastscan.pipelines.runrecord import (check_replaceable, default_run_dir, run_dir_lock, run_record, used_manifest,
                                          write_outputs)

__all__ = ["DEFAULT_ENSEMBLES", "DEFAULT_FEATURE_SETS", "default_feature_sets", "default_classifiers",
           "default_ensembles", "parse_ensembles", "collapse_equivalent", "compare"]

#: The feature sets ``compare`` runs when none are named; the deep ones only where their weights are found.
DEFAULT_FEATURE_SETS = ("size", "handcrafted", "inception_v3", "vgg16")


def default_feature_sets(extractor_options: DeepOptions | Mapping[str, Any] | None = None
                         ) -> tuple[list[str], list[str]]:
    """:data:`DEFAULT_FEATURE_SETS` whose deep backbones' weights are found (``--weights-dir``,
    ``$BLASTSCAN_WEIGHTS_DIR`` or the Keras cache), and one line per set left out saying why."""
    opts = DeepOptions.from_mapping(extractor_options)
    chosen, left_out = [], []
    for fs in DEFAULT_FEATURE_SETS:
        if fs in BACKBONES and not opts.random_weights:
            found = find_weights(fs, opts.weights_dir)
            if found.path is None:
                left_out.append(f"{fs}: left out of the default feature sets, no weights found "
                                f"(looked in {'; '.join(found.searched)}; give --weights-dir)")
                continue
        chosen.append(fs)
    return chosen, left_out

#: Soft votes compare ranks by default (see benchmarks/bench_accuracy.py): the embedding's model and the
#: size model, which hold different evidence (texture of the whole cell; how large the cell is).
DEFAULT_ENSEMBLES = ("inception_v3/svm_pca+size/logreg", "inception_v3/svm_pca+vgg16/svm_pca+size/logreg")


def default_classifiers() -> list[str]:
    """The classifiers ``compare`` runs when none are named (from the classifier registry)."""
    return list(registered_defaults())


def default_ensembles(feature_sets: Sequence[str] | str) -> list[str]:
    """The :data:`DEFAULT_ENSEMBLES` whose members' feature sets are all among ``feature_sets``."""
    chosen = set(split_list(feature_sets))
    return [e for e in DEFAULT_ENSEMBLES if all(fs in chosen for fs, _ in parse_ensembles(e)[0])]


def parse_ensembles(specs: Sequence[str] | str | None) -> list[list[tuple[str, str]]]:
    """``"a/svm+b/logreg"`` (one vote of two members; several separated by ``;`` or given as a list) ->
    ``[[("a", "svm"), ("b", "logreg")]]``."""
    if specs is None:
        return []
    items = [x for x in specs.split(";")] if isinstance(specs, str) else list(specs)
    out = []
    for item in (str(i).strip() for i in items):
        if not item:
            continue
        members = []
        for part in item.split("+"):
            fs, slash, clf = part.strip().rpartition("/")
            if not slash or not fs or not clf:
                raise BlastscanError(f"--ensemble {item}", "expected FEATURE_SET/CLASSIFIER+FEATURE_SET/CLASSIFIER..., "
                                                           "e.g. inception_v3/svm_pca+size/logreg")
            members.append((fs, clf))
        if len(members) < 2:
            raise BlastscanError(f"--ensemble {item}", "a vote needs at least two members")
        out.append(members)
    return out


def _plan_configs(feature_sets: list[str], classifiers: list[str], votes: list[list[tuple[str, str]]],
                  params: Mapping[str, Mapping[str, Any]], tune: bool = False) -> tuple[list[ConfigSpec], list[str]]:
    """The grid's configurations (feature sets x classifiers, plus each vote's members) and every
    feature set they need."""
    pairs = [(fs, c) for fs in feature_sets for c in classifiers]
    pairs += [m for v in votes for m in v if m not in pairs]
    # a family that reads another table (finetune: cached activations) names it; None: not for this set
    inputs = {(fs, c): classifier_inputs(c, fs) for fs, c in pairs}
    sets = list(dict.fromkeys([fs for fs, _ in pairs] + [s for s in inputs.values() if s]))
    return [ConfigSpec(f"{fs}/{c}", fs, c, dict(params.get(c, {})), tune=tune,
                       inputs="" if inputs[fs, c] in (fs, None) else inputs[fs, c]) for fs, c in pairs
            if inputs[fs, c] is not None], sets


def _not_applicable(feature_sets: list[str], classifiers: list[str]) -> list[dict]:
    """Skipped entries for the pairs a family cannot run on (``finetune`` needs ``inception_v3``)."""
    return [{"name": f"{fs}/{c}", "feature_set": fs, "classifier": c,
             "reason": f"{c} does not run on the '{fs}' features"}
            for fs in feature_sets for c in classifiers if classifier_inputs(c, fs) is None]


def collapse_equivalent(configs: list[ConfigSpec], widths: Mapping[str, int],
                        n_rows: int) -> tuple[list[ConfigSpec], list[str]]:
    """Drop configurations that are the same model as another in the grid, keeping one row for both.

    ``svm_pca`` on a feature set no wider than its PCA width keeps every component: the PCA only rotates
    the standardised features, which an RBF kernel (and its ``gamma="scale"``, the total variance) does not
    see, so it is ``svm`` with the same parameters. The kept configuration lists the dropped one in
    ``aliases``; one note per collapse says so.
    """
    by_name = {c.name: c for c in configs}
    drop, aliases, notes = set(), {}, []
    default_k = None
    for c in configs:
        if c.classifier != "svm_pca" or c.tune or c.members or c.feature_set not in widths:
            continue
        params = dict(c.params)
        if default_k is None:
            est = get_classifier("svm_pca")
            default_k = int((est.steps[-1][1] if hasattr(est, "steps") else est).n_components)
        k = int(params.pop("n_components", default_k))
        width = int(widths[c.feature_set])
        twin = by_name.get(f"{c.feature_set}/svm")
        if width > k or width >= n_rows // 2 or twin is None or twin.tune or dict(twin.params) != params:
            continue
        drop.add(c.name)
        aliases.setdefault(twin.name, []).append(c.name)
        notes.append(f"{c.name} is the same model as {twin.name} ({width} features <= {k} PCA components: the PCA "
                     f"only rotates them, which the RBF SVM does not see); run once, shown as {twin.name}")
    out = [ConfigSpec(c.name, c.feature_set, c.classifier, c.params, c.members, c.tune,
                      tuple(c.aliases) + tuple(aliases.get(c.name, ())), c.inputs) for c in configs if c.name not in drop]
    return out, notes


#: Feature sets up to this width get a feature-screening table in the report (handcrafted families).
SCREEN_MAX_FEATURES = 400


def _screening(data) -> dict:
    """Per feature of each narrow feature set: subject-grouped AUC on cells and on per-subject means."""
    out = {}
    for fs, fm in data.matrices.items():
        if fm.X.shape[1] > SCREEN_MAX_FEATURES:
            continue
        try:
            out[fs] = feature_screening(data.Xs[fs], data.y, data.subjects, fm.feature_names)
        except BlastscanError as exc:  # e.g. a subject with cells of both classes: say so, do not guess
            data.notes.append(f"feature screening of {fs} skipped: {exc.why}")
    return out


# ------------------------------------------------------------------------------------------------
def _check_names(feature_sets, classifiers, params, votes=()) -> tuple[list[str], dict, list[str], dict]:
    # Results are keyed by each set's name as written. The FeatureSetSpecs the CLI parsed travel on as they
    # are, by name, to the store; a name given as text is parsed (checked) when its features are read.
    given = [feature_sets] if isinstance(feature_sets, FeatureSetSpec) else feature_sets
    specs = {} if isinstance(given, str) else {s.text: s for s in given if isinstance(s, FeatureSetSpec)}
    feature_sets, classifiers = split_list(given), split_list(classifiers)
    if not feature_sets:
        raise BlastscanError("--features", "no feature set given")
    used = classifiers + [c for v in votes for _, c in v]
    if not classifiers:
        raise BlastscanError("--classifiers", "no classifier given")
    params = parse_params(params)
    known = list(available_classifiers())
    for c in used:
        if c not in known:
            raise BlastscanError(f"classifier '{c}'", f"unknown; choose from: {', '.join(known)}")
    unused = sorted(set(params) - set(used))
    if unused:
        raise BlastscanError(f"--param {unused[0]}.*", f"'{unused[0]}' is not among the compared classifiers")
    return feature_sets, specs, classifiers, params


def compare(
    manifest_df: pd.DataFrame,
    feature_sets: Sequence[FeatureSetSpec | str] | str,
    classifiers: Sequence[str] | str,
    store: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    settings: EvalSettings | None = None,
    params: Mapping[str, Mapping[str, Any]] | Sequence[str] | None = None,
    ensembles: Sequence[str] | str | None = None,
    tune: bool = False,
    extractor_options: DeepOptions | Mapping[str, Any] | None = None,
    jobs: int | None = None,
    progress: bool = True,
    dataset: str | None = None,
    feature_set_notes: Sequence[str] = (),
    features_for: Callable[..., tuple] = features_for,
) -> CompareResult:
    """Evaluate every feature set x classifier subject-disjoint and write the run folder.

    Parameters
    ----------
    manifest_df : DataFrame
        A manifest (``blastscan.dataset.build_manifest(...).df``); unlabelled rows are ignored.
    feature_sets, classifiers : list of FeatureSetSpec or str (or comma-separated str)
        E.g. ``["handcrafted", "handcrafted+inception_v3"]`` and ``["svm", "xgboost"]``.
    store : path
        Feature store; features it lacks are computed first (as ``blastscan extract`` does).
    out_dir : path, optional
        Run folder (default ``blastscan-runs/<timestamp>``).
    settings : EvalSettings, optional
        Folds, seed, threshold rule and target recall, inner and leaky folds, bootstrap resamples.
    params : dict or list of "clf.name=value"
        Classifier parameters, e.g. ``{"svm": {"C": 10}}``.
    ensembles : list of str, optional
        Soft votes to rank beside the single models, e.g. ``["inception_v3/svm_pca+size/logreg"]``: P(ALL)
        is the mean of the members' (each fitted on its own feature set); members not in the grid are
        added to it.
    tune : bool
        Search each classifier's small grid (:data:`blastscan.evaluation.tuning.GRIDS`) inside every
        training part on subject-grouped inner folds; the chosen values are recorded per outer fold.
        Votes are not built then (their members' values would differ per fold).
    extractor_options : DeepOptions or dict, optional
        The deep backbones' options (as for ``extract``).
    jobs : int, optional
        Parallel fits and feature processes (default all cores); each fit uses one thread when > 1.
    progress : bool
        Progress bars on stderr.
    dataset : str, optional
        How the data was named (recorded; used in hints).
    feature_set_notes : list of str
        Why default feature sets were left out (:func:`default_feature_sets`); in the summary and report.
    features_for : callable
        How a feature set's matrix is had (:func:`blastscan.pipelines.extract.features_for`: computed into
        the store, then read; its signature).

    Returns
    -------
    CompareResult
    """
    t_start, started = time.time(), prov.timestamp()
    settings = settings or EvalSettings()
    extractor_options = DeepOptions.from_mapping(extractor_options)
    votes = [] if tune else parse_ensembles(ensembles)
    feature_sets, specs, classifiers, params = _check_names(feature_sets, classifiers, params, votes)
    configs, needed = _plan_configs(feature_sets, classifiers, votes, params, tune)
    not_run = _not_applicable(feature_sets, classifiers)
    share_weights_dir(classifiers + [c for v in votes for _, c in v], extractor_options)
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir()
    jobs = resolve_jobs(jobs)

    # before any feature is computed: an evaluation is called subject-disjoint only when it is one
    leaky = require_subjects(manifest_df, settings.per_image_split, "compare")
    check_writable_dir(run_dir, "--out")
    check_replaceable(run_dir)
    with run_dir_lock(run_dir):  # a second compare into the same --out fails now, not after its work
        return _compare_locked(manifest_df, run_dir, settings, votes, feature_sets, classifiers, configs, needed,
                               store=store, dataset=dataset, extractor_options=extractor_options, jobs=jobs,
                               progress=progress, leaky=leaky, t_start=t_start, started=started,
                               feature_set_notes=feature_set_notes, not_run=not_run, features_for=features_for,
                               specs=specs)


def _compare_locked(manifest_df, run_dir, settings, votes, feature_sets, classifiers, configs, needed, *, store,
                    dataset, extractor_options, jobs, progress, leaky, t_start, started,
                    feature_set_notes: Sequence[str] = (), not_run: Sequence[dict] = (),
                    features_for=features_for, specs=None) -> CompareResult:
    data = prepare_data(manifest_df, needed, classifiers, store, extractor_options, jobs, progress, dataset,
                        features_for=features_for, specs=specs)
    splits = plan_splits(data, settings)
    screening = _screening(data)
    configs = [c for c in configs if c.feature_set in data.Xs and (c.inputs or c.feature_set) in data.Xs]
    configs, same_notes = collapse_equivalent(configs, {fs: X.shape[1] for fs, X in data.Xs.items()}, len(data.y))
    by_name = {c.name: c for c in configs}
    alias_of = {a: c.name for c in configs for a in c.aliases}
    votes = [[(fs, c) if f"{fs}/{c}" in by_name else tuple(alias_of.get(f"{fs}/{c}", f"{fs}/{c}").rsplit("/", 1))
              for fs, c in v] for v in votes]
    vote_specs = [vote_spec([by_name[f"{fs}/{c}"] for fs, c in v], data) for v in votes
                  if all(f"{fs}/{c}" in by_name for fs, c in v)]
    grid = run_grid(data, splits, configs, jobs, settings.seed, progress)
    add_votes(grid, vote_specs)
    tables = assemble_grid(data, splits, grid, configs + vote_specs, settings)

    notes = ([leaky] if leaky else []) + [f"{p.path} {p.reason}" for p in mixed_subjects(manifest_df)]
    notes += data.notes + splits.notes + same_notes + list(feature_set_notes)
    skipped = data.skipped + tables.skipped + list(not_run)
    run = run_record(manifest_df, data, splits, tables, settings, store=store, dataset=dataset,
                     extractor_options=extractor_options, classifiers=classifiers, notes=notes, skipped=skipped,
                     seconds={"grid": round(grid.wall_seconds, 1), "total": round(time.time() - t_start, 1)},
                     started=started, jobs=jobs, run_dir=run_dir)
    run["leaky_split"] = leaky
    run["feature_set_notes"] = list(feature_set_notes)
    run["same_as"] = {a: c for a, c in alias_of.items()}
    result = CompareResult(screening=screening, run_dir=run_dir, best=tables.best, metrics=tables.metrics, predictions=tables.predictions,
                           per_subject=tables.per_subject, run=run, skipped=skipped, notes=notes,
                           extracted=data.extracted)
    write_outputs(result, used_manifest(manifest_df, data))
    if tables.best is None:
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:3])
        raise BlastscanError("compare", f"no configuration could be evaluated ({reasons}); see {run_dir}")
    return result
