"""Feature sets: a named union of extractors (``"handcrafted+inception_v3"``), parsed once into a
:class:`FeatureSetSpec`, that ensures its features are in the store (computing only what is missing) and
reads them back as one matrix with a recorded column order. Every command that needs features goes through
:meth:`FeatureSet.ensure` and :meth:`FeatureSet.read`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from blastscan.errors import BlastscanError
from blastscan.features.base import Extractor, get_extractor, parse_feature_set
from blastscan.features.compute import ExtractorRun, compute_missing
from blastscan.features.store import FeatureStore
from blastscan.options import DeepOptions, resolve_jobs, split_list

__all__ = ["FeatureSetSpec", "FeatureSet", "FeatureMatrix", "ExtractSummary", "build_extractor",
           "clear_extractor_cache"]


@dataclass(frozen=True)
class FeatureSetSpec:
    """A feature set as written (``"handcrafted+inception_v3_grey"``), parsed once: ``parts`` as written
    between the ``+``, ``names`` the extractors they stand for (a named union such as ``handcrafted``
    expanded to its families, a variant name spelled canonically), each checked to exist.

    Build it with :meth:`parse` (one set), :meth:`parse_list` (``-f "a,b+c"``: several) or :meth:`union`.

    Examples
    --------
    >>> FeatureSetSpec.parse("size+handcrafted").names
    ('size', 'shape', 'color', 'texture', 'chromatin')
    >>> [s.text for s in FeatureSetSpec.parse_list("size, handcrafted+vgg16")]
    ['size', 'handcrafted+vgg16']
    """

    text: str
    parts: tuple[str, ...]
    names: tuple[str, ...]

    @classmethod
    def parse(cls, text: "str | FeatureSetSpec") -> "FeatureSetSpec":
        """One feature set; an unknown or repeated part raises :class:`BlastscanError` naming it."""
        if isinstance(text, cls):
            return text
        text = str(text).strip()
        names = tuple(parse_feature_set(text))
        return cls(text, tuple(p.strip() for p in text.split("+") if p.strip()), names)

    @classmethod
    def parse_list(cls, text: "str | FeatureSetSpec | Sequence[str | FeatureSetSpec]") -> "tuple[FeatureSetSpec, ...]":
        """Feature sets separated by commas (``"size,handcrafted+inception_v3"``), or a list of them, each
        once and in order; an empty list raises :class:`BlastscanError`."""
        items = [text] if isinstance(text, cls) else split_list(text) if isinstance(text, str) else list(text)
        specs: list[FeatureSetSpec] = []
        for item in items:
            if not isinstance(item, cls) and not str(item).strip():
                continue
            spec = cls.parse(item)  # a FeatureSetSpec is kept as it is
            if spec.text not in [s.text for s in specs]:
                specs.append(spec)
        if not specs:
            raise BlastscanError("--features", "no feature set given")
        return tuple(specs)

    @classmethod
    def union(cls, specs: "str | FeatureSetSpec | Sequence[str | FeatureSetSpec]") -> "FeatureSetSpec":
        """One feature set with every extractor of ``specs`` (see :meth:`parse_list`) once, in order."""
        names: list[str] = []
        for spec in cls.parse_list(specs):
            names += [n for n in spec.names if n not in names]
        return cls("+".join(names), tuple(names), tuple(names))  # checked names: no second parse

    def __str__(self) -> str:
        return self.text


# -- extractor instances are reused across calls: a deep model is built once per process -------------
_EXTRACTOR_CACHE: dict[tuple, Extractor] = {}


def build_extractor(name: str, options: DeepOptions | Mapping[str, Any] | None = None) -> Extractor:
    """The extractor ``name`` built with ``options`` (a dict is read as :class:`DeepOptions`), reused when
    built before."""
    options = DeepOptions.from_mapping(options)
    graphs = tuple(sorted((k, g.sha256) for k, g in (options.embedded_backbones or {}).items()))
    key = (name, options.replace(embedded_backbones=None), graphs)
    if key not in _EXTRACTOR_CACHE:
        ext = get_extractor(name, options)  # cheap: networks are built on first use
        # Options spelled differently (e.g. a default input size given explicitly when scoring a bundle)
        # can describe the same extractor: reuse the instance whose network may already be built.
        same = (e for e in _EXTRACTOR_CACHE.values()
                if e.name == ext.name and e.identity == ext.identity and e.run_key() == ext.run_key())
        _EXTRACTOR_CACHE[key] = next(same, ext)
    return _EXTRACTOR_CACHE[key]


def clear_extractor_cache() -> None:
    """Forget built extractors (tests that re-register an extractor name need this)."""
    _EXTRACTOR_CACHE.clear()


@dataclass
class ExtractSummary:
    """What :meth:`FeatureSet.ensure` did: one :class:`ExtractorRun` per extractor."""

    runs: list[ExtractorRun]
    store: Path

    def format(self, max_failures: int = 20) -> str:
        """One line per extractor, then one line per image that failed (whatever the number of extractors
        it failed in: a cell that cannot be segmented fails every handcrafted family for one reason)."""
        lines = [f"feature store: {self.store}"]
        failed: dict[str, dict[str, list[str]]] = {}  # path -> reason -> extractors
        for r in self.runs:
            rate = f", {r.rate:.1f} images/s" if r.computed else ""
            rate += f", {r.engine}" if r.computed and r.engine else ""
            made = f" [{r.precision}]" if r.precision else ""
            lines.append(f"{r.name:<14} {r.identity}{made}: {r.n_images} images: computed {r.computed}, "
                         f"reused {r.reused}, failed {r.failed} ({r.seconds:.1f} s{rate})")
            if r.note:
                lines.append(f"  {r.note}")
            for path, reason in r.failures:
                failed.setdefault(path, {}).setdefault(reason, []).append(r.name)
        for path, reasons in list(failed.items())[:max_failures]:
            why = "; ".join(reason if len(reasons) == 1 else f"{', '.join(names)}: {reason}"
                            for reason, names in reasons.items())
            names = sorted({n for ns in reasons.values() for n in ns})
            where = f" ({', '.join(names)})" if len(reasons) == 1 and len(self.runs) > 1 else ""
            lines.append(f"  failed: {path}: {why}{where}")
        if len(failed) > max_failures:
            more = len(failed) - max_failures
            lines.append(f"  ... and {more} more image{'s' if more != 1 else ''} failed")
        return "\n".join(lines)

    @property
    def n_failed(self) -> int:
        return sum(r.failed for r in self.runs)


@dataclass
class FeatureMatrix:
    """Features for the manifest rows that have them, in manifest order.

    Attributes
    ----------
    X : ndarray of shape (n, d), float32
    feature_names : list of str
        Column order of ``X`` (recorded in every model).
    rows : DataFrame
        The manifest rows behind ``X`` (same order).
    dropped : DataFrame
        Manifest rows without features, with a ``reason`` column.
    extractors : list of dict
        :meth:`FeatureSet.specs` of the feature set.
    feature_set : str
    """

    X: np.ndarray
    feature_names: list[str]
    rows: pd.DataFrame
    dropped: pd.DataFrame
    extractors: list[dict]
    feature_set: str = ""


@dataclass
class FeatureSet:
    """A union of extractors, parsed once from ``"a+b"`` and built with ``options``.

    Parameters
    ----------
    spec : FeatureSetSpec or str
        E.g. ``"handcrafted"`` or ``"handcrafted+inception_v3"`` (a string is parsed).
    options : DeepOptions or dict, optional
        The extractors' options (:class:`~blastscan.options.DeepOptions`; a dict is read with
        :meth:`~blastscan.options.DeepOptions.from_mapping`, so a misspelt key is an error).
    extractors : list of Extractor, optional
        Extractors already built for ``spec`` (:meth:`from_specs`); by default built from ``options``.

    Examples
    --------
    >>> fs = FeatureSet("handcrafted")
    >>> fs.ensure(manifest_df, "blastscan-store")  # doctest: +SKIP
    >>> fm = fs.read(manifest_df, "blastscan-store")  # doctest: +SKIP
    """

    spec: FeatureSetSpec | str
    options: DeepOptions | Mapping[str, Any] = field(default_factory=DeepOptions)
    extractors: list[Extractor] = field(default_factory=list)

    def __post_init__(self):
        self.spec = FeatureSetSpec.parse(self.spec)
        self.options = DeepOptions.from_mapping(self.options)
        if not self.extractors:
            # built now: a missing weight file (or bf16 on a CPU without it) stops a command before any image is read
            self.extractors = [build_extractor(n, self.options) for n in self.names]
        for ext in self.extractors:  # e.g. --precision bf16 on a CPU without bfloat16: one line now, not after an hour
            ext.check_runtime()

    @property
    def names(self) -> tuple[str, ...]:
        """The extractors' names (the spec's, unions expanded)."""
        return self.spec.names

    @property
    def text(self) -> str:
        """The feature set as written (its name in results, records and bundles)."""
        return self.spec.text

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def union(cls, specs, options: DeepOptions | Mapping[str, Any] | None = None) -> "FeatureSet":
        """One feature set with every extractor named by ``specs`` (``["a", "a+b"]`` or ``"a,a+b"``) once."""
        return cls(FeatureSetSpec.union(specs), DeepOptions.from_mapping(options))

    @classmethod
    def from_specs(cls, spec: FeatureSetSpec | str, records: Sequence[Mapping[str, Any]],
                   options: DeepOptions | Mapping[str, Any] | None = None, *, what: str = "bundle") -> "FeatureSet":
        """Rebuild a recorded feature set (:meth:`specs`) exactly: each extractor gets its recorded build
        options over ``options`` (where things are now, e.g. ``weights_dir``).

        The recorded precision is followed unless ``options`` name one (``"float32"`` or ``"bf16"``; not
        ``"auto"``): then deep features are computed at that precision (a bf16 model scored where the CPU
        has no bfloat16), which differs from training by bf16 rounding only (cosine >= 0.999).

        Raises ``BlastscanError`` when an extractor built now has another identity than recorded (other
        weights, version or settings): its features would not be those a model learned from.
        """
        runtime = DeepOptions.from_mapping(options)
        asked = None if runtime.precision in (None, "auto") else runtime.precision
        runtime = runtime.replace(precision=None)
        built = []
        for rec in records:
            opts = runtime.replace(**{k: v for k, v in dict(rec.get("options") or {}).items() if v is not None})
            other = asked is not None and opts.precision is not None and opts.precision != asked
            if other:  # the engine recorded with bf16 belongs to that precision
                opts = opts.replace(precision=asked, engine=runtime.engine)
            ext = build_extractor(rec["name"], opts)
            if not (_same_but_precision(rec, ext.describe()) if other else ext.identity == rec["identity"]):
                raise BlastscanError(what, _identity_mismatch(rec, ext.describe()))
            built.append(ext)
        text = str(spec)
        names = tuple(r["name"] for r in records)  # as recorded: the extractors built above, in their order
        return cls(FeatureSetSpec(text, tuple(p.strip() for p in text.split("+")), names), runtime, built)

    def specs(self) -> list[dict[str, Any]]:
        """Serialisable descriptions that rebuild these extractors exactly (see :meth:`from_specs`); deep
        extractors add what runs them (``precision``, ``engine``: recorded in run.json and bundles)."""
        out = []
        for ext in self.extractors:
            spec = {**ext.describe(), "kind": ext.kind, "options": ext.build_options()}
            if ext.precision:
                spec["precision"], spec["engine"] = ext.precision, ext.engine_choice
            out.append(spec)
        return out

    def settle_precision(self, manifest_df: pd.DataFrame, store: str | os.PathLike) -> list[str]:
        """Reuse float32 tables instead of computing bf16 ones: a deep extractor whose precision was
        ``auto`` (resolved to bf16 on this CPU) is replaced by its float32 twin when the store's float32
        table already holds every image of ``manifest_df`` (rows or recorded failures). A partial float32
        table is not mixed with bf16 rows: bf16 then computes them all. Returns one note per replacement.

        A pure function of the store's content, so ``ensure`` and a later ``read`` settle alike.
        """
        fstore = FeatureStore(store)
        shas = set(manifest_df["sha256"])
        notes = []
        for i, ext in enumerate(self.extractors):
            if ext.precision_asked != "auto" or ext.precision == "float32":
                continue
            twin = build_extractor(self.names[i], self.options.replace(precision="float32"))
            if fstore.meta(twin.identity) is None or not shas <= fstore.known_shas(twin.identity):
                continue
            self.extractors[i] = twin
            notes.append(f"{self.names[i]}: float32 table {twin.identity} reused (it holds all {len(shas):,} "
                         f"images); {ext.precision} not computed (--precision {ext.precision} computes it)")
        return notes

    # -- the two operations -----------------------------------------------------------------------
    def ensure(self, manifest_df: pd.DataFrame, store: str | os.PathLike, *, jobs: int | None = None,
               progress: bool = True, retry_failed: bool = False) -> ExtractSummary:
        """Compute the features of every image in ``manifest_df`` that the store lacks (see
        :func:`blastscan.pipelines.extract.extract`)."""
        if len(manifest_df) == 0:
            raise BlastscanError("manifest", "no images to extract features from")
        notes = self.settle_precision(manifest_df, store)
        fstore = FeatureStore(store)
        unique = manifest_df.drop_duplicates("sha256")[["path", "sha256"]]
        runs = compute_missing(self.extractors, unique, fstore, jobs=resolve_jobs(jobs), progress=progress,
                               retry_failed=retry_failed)
        for name, run in zip(self.names, runs):
            run.name = name
            run.note = next((n for n in notes if n.startswith(f"{name}: ")), "")
        return ExtractSummary(runs=runs, store=Path(store))

    def read(self, manifest_df: pd.DataFrame, store: str | os.PathLike, *,
             dataset_hint: str = "DATASET") -> FeatureMatrix:
        """Join manifest rows to the store's rows, in manifest order.

        Rows whose image an extractor could not featurise are dropped (listed in ``dropped`` with the
        reason); rows never computed are an error that names the command computing them.
        """
        self.settle_precision(manifest_df, store)
        fstore = FeatureStore(store)
        shas = manifest_df["sha256"].tolist()
        blocks, all_names = [], []
        bad: dict[str, str] = {}
        for name, ext in zip(self.names, self.extractors):
            df, failures = self._read_one(fstore, name, ext, shas, store, dataset_hint)
            for s in set(shas):
                if s in failures and s not in bad:
                    bad[s] = f"{name}: {failures[s]}"
            blocks.append(df)
            all_names.extend(fstore.meta(ext.identity)["feature_names"])
        keep = ~manifest_df["sha256"].isin(bad)
        rows = manifest_df[keep].reset_index(drop=True)
        dropped = manifest_df[~keep].copy()
        dropped["reason"] = dropped["sha256"].map(bad)
        mats = [b.loc[rows["sha256"]].to_numpy(dtype=np.float32) for b in blocks]
        X = np.hstack(mats) if mats else np.zeros((len(rows), 0), np.float32)
        return FeatureMatrix(X=X, feature_names=all_names, rows=rows, dropped=dropped.reset_index(drop=True),
                             extractors=self.specs(), feature_set=self.text)

    @staticmethod
    def _read_one(fstore: FeatureStore, name: str, ext: Extractor, shas: list[str], store, hint: str):
        identity = ext.identity
        missing_hint = (f"run: blastscan extract {hint} --features {name} --store {store}"
                        + (" (with the same --weights-dir / --input-size)" if ext.kind == "batch" else ""))
        if fstore.meta(identity) is None:
            raise BlastscanError(str(store), f"no '{name}' features ({identity}) for these images; {missing_hint}")
        df = fstore.read(identity, shas)
        failures = fstore.failures(identity)
        have = set(df.index)
        missing = [s for s in set(shas) if s not in have and s not in failures]
        if missing:
            raise BlastscanError(str(store),
                                 f"no '{name}' features for {len(missing)} of {len(set(shas))} images; {missing_hint}")
        return df, failures

    def ensure_and_read(self, manifest_df: pd.DataFrame, store: str | os.PathLike, *, jobs: int | None = None,
                        progress: bool = True, dataset_hint: str = "DATASET") -> tuple[ExtractSummary, FeatureMatrix]:
        """:meth:`ensure`, then :meth:`read`."""
        summary = self.ensure(manifest_df, store, jobs=jobs, progress=progress)
        return summary, self.read(manifest_df, store, dataset_hint=dataset_hint)


_PRECISION_KEYS = ("precision", "engine")


def _same_but_precision(recorded: Mapping, now: Mapping) -> bool:
    """Same extractor, version and config, except for the precision (and the engine recorded with it)."""
    def strip(cfg):
        return {k: v for k, v in dict(cfg or {}).items() if k not in _PRECISION_KEYS}

    return (recorded["name"] == now["name"] and str(recorded.get("version")) == str(now.get("version"))
            and strip(recorded.get("config")) == strip(now.get("config")))


def _identity_mismatch(recorded: Mapping, now: Mapping) -> str:
    diffs = []
    if str(recorded.get("version")) != str(now.get("version")):
        diffs.append(f"version {recorded.get('version')} at training, {now.get('version')} now")
    rc, nc = dict(recorded.get("config") or {}), dict(now.get("config") or {})
    for key in sorted(set(rc) | set(nc)):
        if rc.get(key) != nc.get(key):
            diffs.append(f"{key}: {rc.get(key)!r} at training, {nc.get(key)!r} now")
    detail = "; ".join(diffs) or "different configuration"
    hint = ("give the weight files used in training (--weights-dir)" if any("weight" in d for d in diffs)
            else "use the blastscan version and settings the bundle was made with")
    return (f"its '{recorded['name']}' features cannot be recomputed as in training ({recorded['identity']} then, "
            f"{now['identity']} now: {detail}); {hint}")
