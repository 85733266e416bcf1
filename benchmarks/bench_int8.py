"""int8 for the deep backbones, measured as a benchmark only (issue 26 item 3): is static int8 worth an opt-in
precision on this CPU?

Usage::

    .venv/bin/python benchmarks/bench_int8.py --weights-dir DIR [--data DIR] [--backbones inception_v3,vgg16]
        [--cells 64] [--calib 64] [--rounds 3] [--batch-size 32] [--accuracy BACKBONES --store COPY]

Needs ``nncf`` (the ``bench-int8`` extra: ``pip install "blastscan[bench-int8]"``; it does not pull PyTorch),
which the package itself does not use.

For each backbone, the project's own cached float32 ONNX graph (uint8 input, ``preprocess_input`` inside,
``DeepExtractor.onnx_graph()``) is quantised statically to int8 by NNCF (default preset, symmetric
activations) for OpenVINO, **calibrated on a fixed set of cells that ships with the package**: the first
``--calib`` cells of ``blastscan/sample/manifest.csv`` in file order (so the quantised network, were it
kept, would not depend on the user's data). Then, over the same ``--cells`` real cells of ``--data``
(C-NMC dev; both classes interleaved, as ``bench_deep.py``), decoded and resized once, the bare forwards
run in interleaved rounds (medians printed, with every round):

* ONNX Runtime float32 (the project's float32 default before OpenVINO),
* OpenVINO float32 and bf16 (the project's runner, ``OpenVinoRunner``: LATENCY hint, all cores),
* OpenVINO int8, the layers NNCF leaves unquantised in float32 (``int8+f32``) and, where the CPU has
  bfloat16, in bf16 (``int8+bf16``), compiled with the same configuration.

Printed: images/s, the ratio to ONNX Runtime float32 and to OpenVINO bf16, and the min/median cosine of
each path's embeddings to ONNX Runtime float32 on those cells. The issue's bar for keeping int8: >= 1.3x
bf16, cosine >= 0.99 to float32 and unchanged subject-disjoint accuracy: ``--accuracy BACKBONES --store COPY``
embeds every ``--data`` cell in int8 and compares pooled out-of-fold ROC-AUC (logreg, svm_pca) with the
store's float32 table on the same subject-disjoint folds, with a paired subject-bootstrap interval of the
difference.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def cpu_flags() -> str:
    model, flags = "?", set()
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ["avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni"]
    return f"{model}, {len(os.sched_getaffinity(0))} cores; " + " ".join(
        f"{f}={'yes' if f in flags else 'no'}" for f in wanted)


def sample_calibration_paths(n: int) -> list[str]:
    """The first ``n`` cells of the package's sample, in manifest order: a fixed set that ships with it."""
    sample = ROOT / "blastscan" / "sample"
    rows = list(csv.DictReader(open(sample / "manifest.csv")))
    if len(rows) < n:
        raise SystemExit(f"the package sample has {len(rows)} cells, asked for {n}")
    return [str(sample / r["path"]) for r in rows[:n]]


def compile_ov(model, hint: str, threads: int):
    import openvino as ov

    return ov.Core().compile_model(model, "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint})


def bench(name: str, paths: list[str], calib: list[str], args) -> None:
    import numpy as np
    import nncf
    import openvino as ov

    from blastscan.dataset import load_image
    from blastscan.features.engines.openvino import OpenVinoRunner
    from blastscan.features.featureset import build_extractor
    from blastscan.features.precision import bf16_support

    opts = {"weights_dir": args.weights_dir, "engine": "onnxruntime", "precision": "float32"}
    if args.batch_size:
        opts["batch_size"] = args.batch_size
    ext = build_extractor(name, opts)
    graph = ext.onnx_graph()
    threads = len(os.sched_getaffinity(0))
    bs = ext.batch_size
    images = [ext.resize(load_image(p)) for p in paths]
    batches = [np.stack(images[i:i + bs]) for i in range(0, len(images), bs)]
    calib_items = [ext.resize(load_image(p))[None] for p in calib]  # one cell per item, uint8 (1, s, s, 3)

    t0 = time.perf_counter()
    core = ov.Core()
    fp_model = core.read_model(bytes(graph), ov.Tensor(type=ov.Type.u8, shape=[0]))
    ignored = None
    if args.first_conv_float:  # the first convolution sees the raw, preprocessed pixels
        first = next(op.get_friendly_name() for op in fp_model.get_ordered_ops() if op.get_type_name() == "Convolution")
        ignored = nncf.IgnoredScope(names=[first])
    q_model = nncf.quantize(fp_model, nncf.Dataset(calib_items), subset_size=len(calib_items), ignored_scope=ignored,
                            preset=nncf.QuantizationPreset[args.preset.upper()],
                            fast_bias_correction=not args.full_bias_correction)
    t_quant = time.perf_counter() - t0

    ok, _ = bf16_support()
    runs = {"onnxruntime f32": ext.forward,
            "openvino f32": OpenVinoRunner(graph, "float32", threads),
            }
    if ok:
        runs["openvino bf16"] = OpenVinoRunner(graph, "bf16", threads)
    for label, hint in (("openvino int8+f32", "f32"), ("openvino int8+bf16", "bf16")):
        if hint == "bf16" and not ok:
            continue
        req = compile_ov(q_model, hint, threads).create_infer_request()
        runs[label] = (lambda r: lambda b: np.array(r.infer({0: b})[0], dtype=np.float32, copy=True))(req)

    out = {k: np.vstack([f(b) for b in batches]) for k, f in runs.items()}  # warm-up and the embeddings
    rates = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, f in runs.items():
            t0 = time.perf_counter()
            for b in batches:
                f(b)
            rates[k].append(len(paths) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ref, bf = med["onnxruntime f32"], med.get("openvino bf16")
    f32 = out["onnxruntime f32"].astype(np.float64)
    print(f"\n{name} (input {ext.input_size}, batch {bs}): {len(paths)} real cells, {args.rounds} interleaved "
          f"rounds, medians; int8 calibrated on {len(calib)} package-sample cells (NNCF quantize "
          f"{t_quant:.0f} s, preset {args.preset}, {'full' if args.full_bias_correction else 'fast'} bias "
          f"correction{', first conv float' if args.first_conv_float else ''}); load average now {os.getloadavg()[0]:.1f}")
    print(f"  {'path':<22} {'images/s':>9} {'vs ORT f32':>10} {'vs OV bf16':>10} {'cos min':>10} "
          f"{'cos median':>10}   rounds")
    for k in runs:
        x = out[k].astype(np.float64)
        cos = (x * f32).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(f32, axis=1)
        vs_bf = f"{med[k] / bf:9.2f}x" if bf else f"{'-':>10}"
        print(f"  {k:<22} {med[k]:9.1f} {med[k] / ref:9.2f}x {vs_bf} {cos.min():10.5f} "
              f"{np.median(cos):10.5f}   {' '.join(f'{r:.1f}' for r in rates[k])}")
    if name in args.accuracy:
        accuracy(name, ext, compile_ov(q_model, "f32", threads), args)


def accuracy(name: str, ext, compiled, args) -> None:
    """Subject-disjoint out-of-fold ROC-AUC of int8 embeddings of every ``--data`` cell against the float32
    table of ``--store`` (a copy of the dev store), on the same folds (``subject_folds``, 5, seed 0)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from blastscan.classifiers import fit_classifier, get_classifier
    from blastscan.dataset import build_manifest, load_image
    from blastscan.evaluation.splits import subject_folds
    from blastscan.pipelines.extract import load_features

    t0 = time.perf_counter()
    df = build_manifest(str(args.data)).df
    fm = load_features(df, name, args.store, extractor_options={"weights_dir": args.weights_dir,
                                                                 "precision": "float32"})
    req = compiled.create_infer_request()
    paths, bs, q = list(fm.rows["path"]), ext.batch_size, []
    for i in range(0, len(paths), bs):
        b = np.stack([ext.resize(load_image(p)) for p in paths[i:i + bs]])
        q.append(np.array(req.infer({0: b})[0], dtype=np.float32, copy=True))
    Xq, Xf = np.vstack(q), fm.X
    y = (fm.rows["label"].astype(str).str.lower() == "all").to_numpy().astype(int)
    groups = fm.rows["subject"].astype(str).to_numpy()
    cos = (Xq.astype(np.float64) * Xf).sum(1) / np.linalg.norm(Xq, axis=1) / np.linalg.norm(Xf, axis=1)
    folds = subject_folds(groups, y, 5, 0)
    print(f"  accuracy, {len(y)} dev cells of {len(set(groups))} subjects, 5 subject-disjoint folds (seed 0), "
          f"pooled out-of-fold ROC-AUC; int8 cosine to the store's float32: min {cos.min():.5f} median "
          f"{np.median(cos):.5f}")
    subjects = np.unique(groups)
    rows_of = {g: np.flatnonzero(groups == g) for g in subjects}
    rng = np.random.default_rng(0)
    draws = [np.concatenate([rows_of[g] for g in rng.choice(subjects, len(subjects))]) for _ in range(500)]
    for clf in args.classifiers.split(","):
        oof = {}
        for label, X in (("float32", Xf), ("int8", Xq)):
            oof[label] = np.zeros(len(y))
            for tr, te in folds:
                est = fit_classifier(get_classifier(clf, random_state=0), X[tr], y[tr], groups[tr])
                oof[label][te] = est.predict_proba(X[te])[:, 1]
        auc = {k: roc_auc_score(y, v) for k, v in oof.items()}
        diffs = [roc_auc_score(y[d], oof["int8"][d]) - roc_auc_score(y[d], oof["float32"][d])
                 for d in draws if 0 < y[d].sum() < len(d)]
        lo, hi = np.percentile(diffs, [2.5, 97.5])
        print(f"    {name}/{clf}: float32 {auc['float32']:.4f}, int8 {auc['int8']:.4f}; int8 - float32 "
              f"{auc['int8'] - auc['float32']:+.4f}, 95% subject-bootstrap interval [{lo:+.4f}, {hi:+.4f}] "
              f"(500 draws of the {len(subjects)} subjects, seed 0)")
    print(f"  (accuracy check {time.perf_counter() - t0:.0f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="inception_v3,vgg16")
    p.add_argument("--data", default="/work/shared/data/cnmc2019")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--cells", type=int, default=64)
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--preset", choices=["performance", "mixed"], default="performance",
                   help="NNCF preset: symmetric activations (performance) or asymmetric (mixed)")
    p.add_argument("--full-bias-correction", action="store_true",
                   help="NNCF's full bias correction instead of the fast one (slower to quantise)")
    p.add_argument("--first-conv-float", action="store_true", help="leave the first convolution unquantised")
    p.add_argument("--accuracy", default="", help="backbones to check for accuracy: int8 embeddings of every "
                   "--data cell against the float32 table of --store (a copy of a store holding it)")
    p.add_argument("--store", default=None)
    p.add_argument("--classifiers", default="logreg,svm_pca")
    args = p.parse_args()
    args.accuracy = [a for a in args.accuracy.split(",") if a]
    from bench_deep import cell_paths

    import nncf
    import openvino as ov

    print(f"CPU: {cpu_flags()}")
    print(f"openvino {ov.__version__.split('-')[0]}, nncf {nncf.__version__}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    paths = cell_paths(Path(args.data), args.cells)
    calib = sample_calibration_paths(args.calib)
    for name in args.backbones.split(","):
        bench(name, paths, calib, args)


if __name__ == "__main__":
    main()
