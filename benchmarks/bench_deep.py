"""Deep extraction, side by side: the seeds' loop, the bare forwards, blastscan float32 and bf16 end to end.

Usage::

    .venv/bin/python benchmarks/bench_deep.py --cells 64 --weights-dir DIR     # the engines only, minutes
    .venv/bin/python benchmarks/bench_deep.py [--backbones inception_v3,vgg16] [--n 128] [--rounds 3]
        [--user-n 384] [--batch-size 32] [--data DIR] [--weights-dir DIR] [--emulated-bf16]

For each backbone, in one process, the paths below run **interleaved** (seeds, bare, float32, bf16, seeds,
...) for ``--rounds`` rounds over the same ``n`` real cells, and the median images/s of each is printed
with its ratio to bare and to the seeds' loop (the machine may be shared: ratios within one run are the
figures to quote, absolute rates are not):

* ``seeds``: what the seed projects did: per batch, load + PIL resize + float32 + ``preprocess_input`` +
  ``model.predict`` on a plain Keras model;
* ``bare``: blastscan's forward alone (uint8 -> preprocess_input -> network) over preloaded, decoded
  and resized batches, on each engine: onnxruntime (the float32 default) and TensorFlow's compiled graph;
* ``float32`` / ``float32 --engine tensorflow`` / ``bf16``: ``blastscan.pipelines.extract.extract`` into
  a fresh store (read, decode, resize, forward, write the store), each compared with its own engine's
  bare forward. bf16 runs only on CPUs with bfloat16 instructions, unless ``--emulated-bf16`` (then its
  speed means nothing, but its cosine to float32 is real).

``--cells N`` runs the engines only (``bench_engines``): the bare forward of ONNX Runtime float32,
OpenVINO float32 and bf16 (bf16 where the CPU has it), TensorFlow float32, and ``extract`` as a user runs
it (``--precision auto``) against ``--engine onnxruntime --precision float32``, interleaved; the CPU's
model and its bfloat16/AMX flags are printed with the load average.

Then: the cosine between the engines' embeddings (and of bf16 to float32), the peak resident memory of
float32 extract over ``n`` and ``2n`` images (flat: batches are streamed, the store written in chunks),
and "as a user sees it": ``blastscan extract`` as a fresh process on ``--user-n`` cells, imports and
build included, with the ONNX graph not yet cached and then cached, against the seeds' loop as a fresh
process, all timed from start to end.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def peak_rss(result: dict):
    """Sample this process's resident memory while the block runs; ``result['peak_mb']`` = the maximum."""
    stop = threading.Event()
    result["start_mb"] = result["peak_mb"] = _rss_mb()

    def sample():
        while not stop.is_set():
            result["peak_mb"] = max(result["peak_mb"], _rss_mb())
            stop.wait(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield result
    finally:
        stop.set()
        t.join()
        result["peak_mb"] = max(result["peak_mb"], _rss_mb())


def cell_paths(data: Path, n: int) -> list[str]:
    """``n`` distinct real cells from the dataset's manifest.csv (both classes interleaved)."""
    rows = list(csv.DictReader(open(data / "manifest.csv")))
    rows = [r for r in rows if (data / r["path"]).is_file()]
    by_label = {lab: [r for r in rows if r["label"] == lab] for lab in sorted({r["label"] for r in rows})}
    mixed = [r for group in zip(*by_label.values()) for r in group]
    if len(mixed) < n:
        raise SystemExit(f"only {len(mixed)} cells available in {data}, asked for {n}")
    return [str(data / r["path"]) for r in mixed[:n]]


def seeds_model(name: str, weights_dir: str):
    """The seeds' setup: a plain Keras model and the backbone's ``preprocess_input``."""
    import importlib

    from blastscan._tf import import_keras
    from blastscan.features.deep import BACKBONES, find_weights

    keras = import_keras()
    b = BACKBONES[name]
    model = getattr(keras.applications, b.constructor)(weights=None, include_top=False, pooling="avg",
                                                       input_shape=(b.input_size, b.input_size, 3))
    model.load_weights(str(find_weights(b, weights_dir).path))
    pre = importlib.import_module(f"keras.applications.{b.preprocess_module}").preprocess_input
    return model, pre, b.input_size


def seeds_loop(model, pre, size: int, paths: list[str], bs: int = 32):
    """Per batch: load + resize + float32 + preprocess_input + model.predict (no overlap at all)."""
    import numpy as np
    from PIL import Image

    from blastscan.dataset import load_image

    out = []
    for lo in range(0, len(paths), bs):
        imgs = [np.asarray(Image.fromarray(load_image(p)).resize((size, size), Image.Resampling.BILINEAR))
                for p in paths[lo:lo + bs]]
        x = pre(np.stack(imgs).astype(np.float32))
        out.append(model.predict(x, batch_size=bs, verbose=0))
    return np.vstack(out)


def bench_backbone(name: str, paths: list[str], args) -> dict:
    import numpy as np

    from blastscan.dataset import build_manifest, load_image
    from blastscan.features.deep import bf16_support
    from blastscan.features.featureset import build_extractor as _extractor
    from blastscan.pipelines.extract import extract, load_features

    n = args.n
    manifest = build_manifest(paths[:2 * n], progress=False).df
    first = manifest.iloc[:n]
    opts = {"weights_dir": args.weights_dir, "batch_size": args.batch_size}
    opts = {k: v for k, v in opts.items() if v is not None}
    engines = {"onnxruntime": dict(opts, engine="onnxruntime"), "tensorflow": dict(opts, engine="tensorflow")}
    bf16_opts = dict(opts, precision="bf16")
    ort, tf = (_extractor(name, o) for o in engines.values())  # the instances extract() uses
    bs = ort.batch_size
    ok, why = bf16_support()
    run_bf16 = ok or args.emulated_bf16
    if args.emulated_bf16:
        os.environ["BLASTSCAN_BF16_EMULATED"] = "1"

    images = [ort.resize(load_image(p)) for p in first["path"]]
    batches = [np.stack(images[i:i + bs]) for i in range(0, n, bs)]
    warm = {}
    for label, ext in (("onnxruntime", ort), ("tensorflow", tf)):
        t0 = time.perf_counter()
        ext.forward(batches[0])  # build, load weights, trace (TensorFlow) or load the cached graph (ORT)
        warm[label] = time.perf_counter() - t0
    if run_bf16:
        _extractor(name, bf16_opts).forward(batches[0])
    model, pre, size = seeds_model(name, args.weights_dir)
    seeds_loop(model, pre, size, list(first["path"][:bs]), bs)  # predict's own warm-up

    stores = {}

    def run_extract(label, options):
        store = tempfile.mkdtemp(prefix=f"bench-deep-{label}-")
        summary = extract(first, [name], store, extractor_options=options, progress=False)
        assert summary.runs[0].computed == n, summary.format()
        stores[label] = store

    def bare(ext):
        def run():
            for b in batches:
                ext.forward(b)
        return run

    paths_n = list(first["path"])
    fns = {"seeds": lambda: seeds_loop(model, pre, size, paths_n, bs), "bare_ort": bare(ort), "bare_tf": bare(tf),
           "float32": lambda: run_extract("float32", opts),
           "float32_tf": lambda: run_extract("float32_tf", engines["tensorflow"])}
    if run_bf16:
        fns["bf16"] = lambda: run_extract("bf16", bf16_opts)
    rates = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            rates[k].append(n / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}

    # memory: float32 extract (the default engine) of n and of 2n images
    peaks = {}
    for label, df in (("n", first), ("2n", manifest)):
        with tempfile.TemporaryDirectory(prefix="bench-deep-mem-") as store, peak_rss({}) as mem:
            extract(df, [name], store, extractor_options=opts, progress=False)
        peaks[label] = mem["peak_mb"]

    print(f"\n{name} (input {ort.input_size}, batch {bs}); {n} real cells, {args.rounds} interleaved rounds, "
          f"medians; first forward (build/load/trace): onnxruntime {warm['onnxruntime']:.1f} s, "
          f"tensorflow {warm['tensorflow']:.1f} s")
    print(f"  {'path':<44} {'images/s':>9} {'vs its bare':>11} {'vs seeds':>9}   rounds")
    rows = [("seeds", "seeds' loop (model.predict per batch)", None),
            ("bare_ort", "bare forward, onnxruntime (blastscan's)", None),
            ("bare_tf", "bare forward, tensorflow (compiled graph)", None),
            ("float32", f"blastscan extract float32 ({ort.engine_used})", "bare_ort"),
            ("float32_tf", "blastscan extract float32 --engine tensorflow", "bare_tf"),
            ("bf16", "blastscan extract bf16 (tensorflow)", "bare_tf")]
    for k, label, base in rows:
        if k not in med:
            continue
        vs = f"{100 * med[k] / med[base]:10.0f}%" if base else f"{'':>11}"
        print(f"  {label:<44} {med[k]:9.1f} {vs} {med[k] / med['seeds']:8.2f}x"
              f"   {' '.join(f'{r:.1f}' for r in rates[k])}")
    print(f"  onnxruntime / tensorflow, bare forward: {med['bare_ort'] / med['bare_tf']:.2f}x")
    cmd = [sys.executable, __file__, "--clean-process", name, "--n", str(n), "--rounds", str(args.rounds),
           "--weights-dir", args.weights_dir, "--data", str(args.data)] + (
        ["--batch-size", str(args.batch_size)] if args.batch_size else [])
    res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("CLEAN ")), None)
    if line is None:
        print(f"  clean process failed: {res.stderr[-1000:]}")
    else:
        import json

        c = json.loads(line[6:])
        print(f"  in a fresh process without TensorFlow (as extract runs with the graph cached; "
              f"TensorFlow imported: {c['tensorflow_imported']}): bare {c['bare']:.1f}, extract {c['extract']:.1f} "
              f"images/s = {100 * c['extract'] / c['bare']:.0f}% of bare; rounds "
              f"{' '.join(f'{r:.1f}' for r in c['rounds']['extract'])} vs {' '.join(f'{r:.1f}' for r in c['rounds']['bare'])}")
    a = load_features(first, name, stores["float32"], extractor_options=opts).X
    b = load_features(first, name, stores["float32_tf"], extractor_options=engines["tensorflow"]).X
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"  cosine onnxruntime vs tensorflow on {n} cells: min {cos.min():.7f}; max |diff| {np.abs(a - b).max():.2e}")
    if run_bf16:
        print(f"  bf16 / float32 (tensorflow) end to end: {med['bf16'] / med['float32_tf']:.2f}x, / float32 "
              f"default {med['bf16'] / med['float32']:.2f}x"
              + ("  (EMULATED bf16: this CPU lacks it, the speed means nothing)" if not ok else ""))
        c = load_features(first, name, stores["bf16"], extractor_options=bf16_opts).X
        cos = (b * c).sum(1) / np.linalg.norm(b, axis=1) / np.linalg.norm(c, axis=1)
        print(f"  cosine bf16 vs float32 on {n} cells: min {cos.min():.5f}, median {np.median(cos):.5f}")
    else:
        print(f"  bf16: not run ({why})")
    print(f"  peak RSS during float32 extract: {peaks['n']:.0f} MB for {n} images, {peaks['2n']:.0f} MB for "
          f"{2 * n} ({peaks['2n'] - peaks['n']:+.0f} MB)")
    sys.stdout.flush()
    return med


def bench_engines(name: str, paths: list[str], args) -> dict:
    """The engines side by side on ``args.cells`` real cells, interleaved rounds: each engine's bare forward
    over preloaded resized batches (ONNX Runtime, OpenVINO float32 and bf16, TensorFlow's compiled graph),
    then ``extract`` end to end as a user runs it (``--precision auto --engine auto``) against
    ``--engine onnxruntime --precision float32`` (the float32 default before OpenVINO), into fresh stores."""
    import numpy as np

    from blastscan.dataset import build_manifest, load_image
    from blastscan.features.featureset import build_extractor
    from blastscan.features.precision import bf16_support
    from blastscan.pipelines.extract import extract, load_features

    n = args.cells
    df = build_manifest(paths[:n], progress=False).df
    base = {k: v for k, v in {"weights_dir": args.weights_dir, "batch_size": args.batch_size}.items() if v}
    ok, why = bf16_support()
    setups = {"onnxruntime f32": dict(engine="onnxruntime", precision="float32"),
              "openvino f32": dict(engine="openvino", precision="float32")}
    if ok:
        setups["openvino bf16"] = dict(engine="openvino", precision="bf16")
    if not args.no_tensorflow:
        setups["tensorflow f32"] = dict(engine="tensorflow", precision="float32")
    exts = {k: build_extractor(name, {**base, **o}) for k, o in setups.items()}
    first = next(iter(exts.values()))
    images = [first.resize(load_image(p)) for p in df["path"]]
    batches = [np.stack(images[i:i + first.batch_size]) for i in range(0, n, first.batch_size)]
    warm, out = {}, {}
    for k, ext in exts.items():
        t0 = time.perf_counter()
        out[k] = np.vstack([ext.forward(b) for b in batches])  # build (graph cached after the first), and check
        warm[k] = time.perf_counter() - t0
    user = {"auto (as a user runs it)": dict(base, precision="auto"),
            "onnxruntime float32": dict(base, engine="onnxruntime", precision="float32")}
    user_ext = {k: build_extractor(name, o) for k, o in user.items()}
    stores = {}

    def bare(ext):
        def run():
            for b in batches:
                ext.forward(b)
        return run

    def run_extract(label, options):
        def run():
            store = tempfile.mkdtemp(prefix="bench-deep-engines-")
            summary = extract(df, [name], store, extractor_options=options, progress=False)
            assert summary.runs[0].computed == n, summary.format()
            stores[label] = store
        return run

    fns = {**{f"bare {k}": bare(e) for k, e in exts.items()},
           **{f"extract {k}": run_extract(k, o) for k, o in user.items()}}
    rates = {k: [] for k in fns}
    for _ in range(args.rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            rates[k].append(n / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ref = med["bare onnxruntime f32"]
    print(f"\n{name} (input {first.input_size}, batch {first.batch_size}); {n} real cells, {args.rounds} "
          f"interleaved rounds, medians; load average now {os.getloadavg()[0]:.1f}")
    print(f"  {'path':<44} {'images/s':>9} {'vs ORT f32':>10}   rounds")
    for k in fns:
        if k.startswith("extract"):
            continue
        print(f"  {k:<44} {med[k]:9.1f} {med[k] / ref:9.2f}x   {' '.join(f'{r:.1f}' for r in rates[k])}"
              f"   (first batch {warm[k.split(' ', 1)[1]]:.1f} s)")
    e_auto, e_ort = (f"extract {k}" for k in user)
    auto_ext = user_ext["auto (as a user runs it)"]
    for k in (e_auto, e_ort):
        print(f"  {k:<44} {med[k]:9.1f} {med[k] / med[e_ort]:9.2f}x   {' '.join(f'{r:.1f}' for r in rates[k])}")
    print(f"  as a user runs it: {auto_ext.precision} on {auto_ext.engine_choice} = "
          f"{med[e_auto] / med[e_ort]:.2f}x extract --engine onnxruntime --precision float32")
    f32 = out["onnxruntime f32"]
    for k, x in out.items():
        if k == "onnxruntime f32":
            continue
        cos = (x * f32).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(f32, axis=1)
        print(f"  cosine {k} vs onnxruntime f32: min {cos.min():.7f}")
    if not ok:
        print(f"  openvino bf16: not run ({why})")
    a = load_features(df, name, stores["onnxruntime float32"], extractor_options=user["onnxruntime float32"]).X
    assert a.shape[0] == n
    sys.stdout.flush()
    return med


def clean_process(name: str, paths: list[str], args) -> dict:
    """Run in a fresh process without TensorFlow (as ``extract`` runs once the ONNX graph is cached):
    the bare onnxruntime forward and ``extract`` into a fresh store, interleaved; medians in images/s."""
    import json

    import numpy as np

    from blastscan.dataset import build_manifest, load_image
    from blastscan.features.featureset import build_extractor
    from blastscan.pipelines.extract import extract

    df = build_manifest(paths, progress=False).df
    opts = {k: v for k, v in {"weights_dir": args.weights_dir, "batch_size": args.batch_size}.items() if v}
    ext = build_extractor(name, opts)
    images = [ext.resize(load_image(p)) for p in df["path"]]
    batches = [np.stack(images[i:i + ext.batch_size]) for i in range(0, len(images), ext.batch_size)]
    ext.forward(batches[0])
    rates = {"bare": [], "extract": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for b in batches:
            ext.forward(b)
        rates["bare"].append(len(df) / (time.perf_counter() - t0))
        with tempfile.TemporaryDirectory(prefix="bench-deep-clean-") as store:
            t0 = time.perf_counter()
            extract(df, [name], store, extractor_options=opts, progress=False)
            rates["extract"].append(len(df) / (time.perf_counter() - t0))
    out = {k: statistics.median(v) for k, v in rates.items()}
    out.update(rounds=rates, engine=ext.engine_used, tensorflow_imported="tensorflow" in sys.modules)
    print("CLEAN " + json.dumps(out))
    return out


def user_view(name: str, data: Path, m: int, args) -> None:
    """Fresh processes on ``m`` cells, from start to end (imports, build and trace included): the seeds'
    loop, then ``blastscan extract`` with an empty user cache (the ONNX graph is written) and again with
    the graph cached (each into a new store, so every cell is computed)."""
    paths = cell_paths(data, m)
    with tempfile.TemporaryDirectory(prefix="bench-deep-user-") as tmp:
        ds = Path(tmp) / "cells"
        for p in paths:
            label = Path(p).parent.name
            (ds / label).mkdir(parents=True, exist_ok=True)
            (ds / label / Path(p).name).symlink_to(p)
        env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(Path(tmp) / "cache"))
        cmd_seeds = [sys.executable, __file__, "--seeds-only", name, "--weights-dir", args.weights_dir, str(ds)]

        def cmd_ext(store):
            return [sys.executable, "-m", "blastscan.cli", "extract", str(ds), "-f", name, "-q", "--store",
                    str(Path(tmp) / store), "--weights-dir", args.weights_dir]

        walls, lines = {}, {}
        for label, cmd in (("seeds", cmd_seeds), ("cold", cmd_ext("s1")), ("warm", cmd_ext("s2"))):
            t0 = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, env=env)
            walls[label] = time.perf_counter() - t0
            if res.returncode:
                raise SystemExit(f"{label} failed: {res.stderr[-2000:]}")
            lines[label] = next((ln for ln in res.stdout.splitlines() if ln.startswith(name)), "").strip()
    print(f"\nas a user sees it: {name} on {m} cells, fresh processes, imports + build + trace included")
    print(f"  seeds' loop                           {m / walls['seeds']:6.1f} images/s ({walls['seeds']:.1f} s)")
    for label, what in (("cold", "blastscan extract, graph not cached"), ("warm", "blastscan extract, graph cached")):
        print(f"  {what:<37} {m / walls[label]:6.1f} images/s ({walls[label]:.1f} s) = "
              f"{walls['seeds'] / walls[label]:.2f}x the seeds' loop")
        print(f"      its summary: {lines[label]}")


def seeds_only(name: str, weights_dir: str, folder: str) -> None:
    paths = sorted(str(p) for p in Path(folder).rglob("*.png"))
    model, pre, size = seeds_model(name, weights_dir)
    seeds_loop(model, pre, size, paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default="inception_v3,vgg16")
    ap.add_argument("--n", type=int, default=128, help="Cells per timed run (memory is also measured at 2n).")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--user-n", type=int, default=384, help="Cells for 'as a user sees it' (0 skips it).")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/cnmc2019"))
    ap.add_argument("--weights-dir", default=os.environ.get("BLASTSCAN_WEIGHTS_DIR", "/work/shared/weights"))
    ap.add_argument("--cells", type=int, default=0,
                    help="Engines only, on this many cells (a few minutes): ONNX Runtime, OpenVINO f32/bf16, "
                         "TensorFlow bare forwards, and extract as a user runs it vs ONNX Runtime float32.")
    ap.add_argument("--no-tensorflow", action="store_true", help="With --cells: leave TensorFlow out.")
    ap.add_argument("--emulated-bf16", action="store_true",
                    help="Run bf16 even where the CPU lacks it (cosine is real, speed is not).")
    ap.add_argument("--clean-process", nargs=1, metavar="BACKBONE", help=argparse.SUPPRESS)
    ap.add_argument("--seeds-only", nargs=1, metavar="BACKBONE", help=argparse.SUPPRESS)
    ap.add_argument("folder", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.clean_process:
        return clean_process(args.clean_process[0], cell_paths(args.data, 2 * args.n)[:args.n], args)
    if args.seeds_only:
        return seeds_only(args.seeds_only[0], args.weights_dir, args.folder)

    from blastscan.features.precision import read_cpu

    cpu = read_cpu()
    names = [n.strip() for n in args.backbones.split(",")]
    cells = args.cells or args.n
    print(f"{len(os.sched_getaffinity(0))} CPU cores: {cpu.describe()}; load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {cells} real cells from {args.data}")
    if args.cells:
        paths = cell_paths(args.data, args.cells)
        for name in names:
            bench_engines(name, paths, args)
        print(f"\nload average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        return
    paths = cell_paths(args.data, 2 * args.n)
    for name in names:
        bench_backbone(name, paths, args)
    if args.user_n:
        user_view(names[0], args.data, args.user_n, args)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
