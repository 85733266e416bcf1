"""First-score time of a data-only bundle (.bsb) against the joblib bundle of the same model, as a user sees it:
fresh processes, imports and loading included, interleaved rounds; and the largest difference in P(ALL).

    python benchmarks/bench_bundle.py --bsb m.bsb --joblib m.joblib --cells cells.csv --weights-dir ../shared/weights \\
        [--python-without-tf venv-notf/bin/python] [--rounds 2]

Paths per round:
  joblib, graph not cached   the weights given, an empty user cache: TensorFlow is imported and the backbone's
                             ONNX graph written (a colleague's first score with a joblib deep bundle)
  joblib, graph cached       the weights given, the user cache as it is
  bsb, no TensorFlow         no weights, empty home and cache; TensorFlow blocked on import (or absent, with
                             --python-without-tf: a venv where it is not installed)
Only ratios within one run mean anything on a shared machine; the load average is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RUN = "import sys; from blastscan.cli import main; sys.argv[0] = 'blastscan'; main()"


def _run(python: str, args: list[str], env: dict) -> tuple[float, int]:
    """Wall seconds and peak RSS (MB) of one fresh process."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, "-c", RUN, *args], env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, rusage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"failed: {' '.join(args)}\n{err.read().decode()[-2000:]}")
    return wall, rusage.ru_maxrss // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bsb", required=True)
    ap.add_argument("--joblib", required=True)
    ap.add_argument("--cells", required=True, help="images, a folder or a CSV with a path column")
    ap.add_argument("--weights-dir", required=True)
    ap.add_argument("--python-without-tf", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-bundle-") as tmp:
        tmp = Path(tmp)
        blocker, empty = tmp / "blocker", tmp / "empty"
        blocker.mkdir()
        empty.mkdir()
        for mod in ("tensorflow", "keras"):
            (blocker / f"{mod}.py").write_text(f"raise ImportError('{mod} blocked by bench_bundle')\n")
        base = {**os.environ, "PYTHONPATH": str(ROOT)}
        no_tf = {**base, "HOME": str(empty), "XDG_CACHE_HOME": str(empty), "KERAS_HOME": str(empty),
                 "BLASTSCAN_WEIGHTS_DIR": str(empty)}
        if not a.python_without_tf:
            no_tf["PYTHONPATH"] = os.pathsep.join([str(blocker), str(ROOT)])
        common = ["-q", "-j", "1"]
        paths = {
            "joblib, graph not cached": (sys.executable, ["score", a.joblib, a.cells, "--weights-dir", a.weights_dir],
                                         None),
            "joblib, graph cached": (sys.executable, ["score", a.joblib, a.cells, "--weights-dir", a.weights_dir], base),
            "bsb, no TensorFlow, no weights": (a.python_without_tf or sys.executable, ["score", a.bsb, a.cells], no_tf),
        }
        times: dict[str, list] = {k: [] for k in paths}
        outputs = {}
        for r in range(a.rounds):
            for name, (python, args, env) in paths.items():
                if env is None:  # a fresh, empty user cache every round
                    cache = tmp / f"cache-{r}"
                    cache.mkdir()
                    env = {**base, "XDG_CACHE_HOME": str(cache)}
                out = tmp / f"{len(outputs)}.csv"
                times[name].append(_run(python, [*args, "-o", str(out), *common], env))
                outputs[name] = out
            print(f"round {r + 1} done; load average {os.getloadavg()[0]:.1f}", flush=True)
        ref = pd.read_csv(outputs["joblib, graph cached"]).set_index("path")
        print(f"\n{'path':32s} {'wall s (rounds)':>24s} {'peak MB':>8s}  max |P(ALL) - joblib|")
        for name, runs in times.items():
            got = pd.read_csv(outputs[name]).set_index("path").loc[ref.index]
            diff = float(np.nanmax(np.abs(got["p_all"].to_numpy() - ref["p_all"].to_numpy())))
            walls = " / ".join(f"{w:.1f}" for w, _ in runs)
            print(f"{name:32s} {walls:>24s} {max(m for _, m in runs):8d}  {diff:.1e}")
        print(f"\n{len(ref)} cells; load average now {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
