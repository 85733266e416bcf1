"""blastscan view: the HTTP endpoints on real cells with a real bundle, bad uploads, and the page in Chromium.

The servers here listen on 127.0.0.1 on a free port and are closed by their fixtures.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from blastscan.dataset import build_manifest
from blastscan.bundle import load_bundle, save_bundle
from blastscan.evaluation import EvalSettings
from blastscan.pipelines.train import train_bundle
from blastscan.pipelines.extract import extract
from blastscan.pipelines.score import score
from blastscan.view.server import ViewServer

N_SUBJECTS, MAX_CELLS = 4, 5
# the installed command, as a user runs it (next to this interpreter in the venv)
_EXE = Path(sys.executable).parent / "blastscan"
BLASTSCAN = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "blastscan.cli"]
TOKEN = "test-token-0123456789"  # the fixture's server token; the command makes a random one


@pytest.fixture(scope="module")
def sample_cells(sample_root, tmp_path_factory) -> dict:
    """~40 real cells of the shipped sample (4 ALL and 4 HEM subjects), as a dataset CSV."""
    rows = build_manifest(sample_root).df
    rows = rows[rows["label"].isin(["all", "hem"])]
    by_subject = defaultdict(list)
    for r in rows.itertuples():
        by_subject[(r.label, r.subject)].append(r.path)
    picked = []
    for label in ("all", "hem"):
        subjects = sorted(k for k in by_subject if k[0] == label and len(by_subject[k]) >= 3)[:N_SUBJECTS]
        picked += [(p, k[0], k[1]) for k in subjects for p in sorted(by_subject[k])[:MAX_CELLS]]
    tmp = tmp_path_factory.mktemp("view")
    dataset = tmp / "cells.csv"
    with open(dataset, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "subject"])
        w.writerows(picked)
    return {"dataset": dataset, "paths": [p for p, _, _ in picked], "tmp": tmp}


@pytest.fixture(scope="module")
def bundle_path(sample_cells) -> Path:
    manifest = build_manifest(sample_cells["dataset"]).df
    store = sample_cells["tmp"] / "store"
    extract(manifest, ["handcrafted"], store, jobs=1, progress=False)
    bundle = train_bundle(manifest, "handcrafted", "logreg", store, progress=False, settings=EvalSettings(inner_folds=3))
    return save_bundle(bundle, sample_cells["tmp"] / "model.joblib")


@pytest.fixture(scope="module")
def server(bundle_path, tmp_path_factory):
    srv = ViewServer(bundle_path, "127.0.0.1", 0, max_upload_mb=1.0, jobs=1, token=TOKEN,
                     allow=[tmp_path_factory.getbasetemp()]).start()
    yield srv
    srv.close()
    assert not srv.tmp.exists(), "the server's temporary folder outlived it"


def _request(url: str, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    req = urllib.request.Request(url, data=data, headers={"X-Blastscan": "1", "X-Blastscan-Token": TOKEN,
                                                          **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _upload(server, path: str | Path, name: str | None = None):
    name = name or os.path.basename(path)
    return _request(f"{server.url}api/cell?name={urllib.request.quote(name)}", Path(path).read_bytes())


# -- the training reference ------------------------------------------------------------------------
def test_reference_ranks_the_feature_the_model_uses_and_places_a_cell():
    from sklearn.linear_model import LogisticRegression

    from blastscan.features.handcrafted import feature_dictionary
    from blastscan.bundle import Bundle
    from blastscan.bundle.reference import training_reference
    from blastscan.view.detail import cell_detail

    names = [f.name for f in feature_dictionary()[:4]] + ["inception_v3_0"]
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 5))
    y = (X[:, 2] + 0.1 * rng.normal(size=300) > 0).astype(int)
    model = LogisticRegression().fit(X, y)
    rows = pd.DataFrame({"path": [f"/nonexistent/{i}.png" for i in range(300)],
                         "label": np.where(y == 1, "all", "hem"), "subject": [str(i % 7) for i in range(300)]})
    ref = training_reference(model, X, rows, names)
    hand = ref["handcrafted"]
    assert hand["names"] == names[:4]  # deep columns are no handcrafted feature
    assert int(np.argmax(hand["importance"])) == 2
    assert ref["reference"]["vectors"].shape == (0, 5)  # images that cannot be read are not kept
    bundle = Bundle(model=model, metadata={}, extras={"view": ref})
    cell = np.median(X[y == 0], axis=0)
    got = cell_detail(bundle, cell)
    assert got["features"][0]["name"] == names[2]
    assert got["features"][0]["classes"]["hem"]["percentile"] == pytest.approx(50, abs=5)
    assert got["features"][0]["classes"]["all"]["percentile"] < 10
    assert got["neighbours"] == []


# -- endpoints on real cells -------------------------------------------------------------------------
def test_uploads_get_the_same_probabilities_as_score(server, bundle_path, sample_cells, tmp_path):
    paths = sample_cells["paths"][::4]
    score(bundle_path, paths, tmp_path / "pred.csv", jobs=1, progress=False)
    expected = pd.read_csv(tmp_path / "pred.csv").set_index("path")
    threshold = load_bundle(bundle_path).threshold
    for p in paths:
        status, res = _upload(server, p)
        assert status == 200 and res["status"] == "ok", res
        assert res["p_all"] == pytest.approx(expected.loc[p, "p_all"], rel=1e-12, abs=1e-15)
        assert res["pred"] == expected.loc[p, "pred"] == ("all" if res["p_all"] >= threshold else "hem")
        assert res["subject"] == str(expected.loc[p, "subject"])
        assert res["image"].startswith("data:image/png;base64,") and not res["outline_note"]
    assert not any(server.uploads.iterdir()), "uploads must not stay on disk once scored"


def test_cell_detail_shows_outline_features_and_neighbours(server, sample_cells):
    import base64

    path = sample_cells["paths"][0]
    _, res = _upload(server, path)
    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(res["image"].split(",", 1)[1]))))
    original = np.asarray(Image.open(path).convert("RGB"))
    assert drawn.shape[0] == drawn.shape[1] <= original.shape[0]  # a square crop around the cell
    cell = (drawn == [255, 215, 0]).all(axis=2)
    nucleus = (drawn == [0, 229, 255]).all(axis=2)
    assert 0 < cell.mean() < 0.2 and 0 < nucleus.mean() < 0.2  # outlines, not filled masks
    rows, cols = np.nonzero(cell)
    assert rows.min() > 0 and cols.min() > 0 and rows.max() < drawn.shape[0] - 1  # the whole cell is in view

    feats = res["features"]
    assert 0 < len(feats) <= 8
    imp = [f["importance"] for f in feats]
    assert imp == sorted(imp, reverse=True)
    for f in feats:
        for cls in ("all", "hem"):
            c = f["classes"][cls]
            assert 0 <= c["percentile"] <= 100
            q = [c["q"][k] for k in ("5", "25", "50", "75", "95")]
            assert q == sorted(q)
    nb = res["neighbours"]
    assert len(nb) == 5 and {n["label"] for n in nb} <= {"all", "hem"}
    d = [n["distance"] for n in nb]
    assert d == sorted(d)
    # a training cell (all ~40 are kept as reference cells) is its own nearest neighbour, and is said to be
    assert nb[0]["same_image"] and d[0] < 1e-3 and not any(n["same_image"] for n in nb[1:])
    assert all(n["image"].startswith("data:image/jpeg;base64,") for n in nb)


def test_bundle_endpoint_describes_the_model(server, bundle_path):
    status, info = _request(server.url + "api/bundle")
    meta = load_bundle(bundle_path).metadata
    assert status == 200
    assert info["feature_set"] == meta["feature_set"] and info["threshold"]["value"] == meta["threshold"]["value"]
    assert info["training_metrics"]["split"] == meta["training_metrics"]["split"]
    assert "not a medical device" in info["notice"]
    assert info["has_reference"] and info["n_reference_cells"] > 0


def test_the_page_uses_no_outside_assets(server):
    for page in ("?token=" + TOKEN, "app.js", "style.css"):
        with urllib.request.urlopen(server.url + page, timeout=10) as resp:
            text = resp.read().decode()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "not a medical device" in urllib.request.urlopen(server.page_url, timeout=10).read().decode()


def test_batch_of_a_server_side_folder_matches_score(server, bundle_path, sample_cells, tmp_path):
    folder = tmp_path / "batch"
    folder.mkdir()
    for p in sample_cells["paths"][:6] + sample_cells["paths"][-6:]:
        shutil.copy(p, folder)
    (folder / "notes.txt").write_text("not a cell")
    score(bundle_path, [str(folder)], tmp_path / "pred.csv", jobs=1, progress=False)
    expected = pd.read_csv(tmp_path / "pred.csv", keep_default_na=False).set_index("path")
    expected_subjects = pd.read_csv(tmp_path / "pred_subjects.csv", keep_default_na=False)

    status, job = _request(server.url + "api/batch", json.dumps({"path": str(folder)}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 202
    for _ in range(600):
        _, res = _request(f"{server.url}api/batch/{job['id']}")
        if res["state"] != "running":
            break
        time.sleep(0.1)
    assert res["state"] == "done", res
    got = {r["path"]: r for r in res["rows"]}
    assert set(got) == set(expected.index)
    for path, row in expected.iterrows():
        assert got[path]["status"] == row["status"]
        if row["status"] == "ok":
            assert got[path]["p_all"] == pytest.approx(float(row["p_all"]), rel=1e-12)
    subjects = {s["subject"]: s for s in res["subjects"]}
    assert set(subjects) == set(expected_subjects["subject"].astype(str))
    for s in expected_subjects.itertuples():
        assert subjects[str(s.subject)]["n_pred_all"] == s.n_pred_all and subjects[str(s.subject)]["call"] == s.call
    i = next(i for i, r in enumerate(res["rows"]) if r["status"] == "ok")
    status, cell = _request(f"{server.url}api/batch/{job['id']}/cell/{i}")
    assert status == 200 and cell["image"] and cell["p_all"] == res["rows"][i]["p_all"]
    assert cell["threshold"] == load_bundle(bundle_path).threshold and cell["features"]


def test_batch_of_a_missing_path_is_one_clear_message(server, tmp_path):
    status, res = _request(server.url + "api/batch", json.dumps({"path": str(tmp_path / "nope")}).encode(),
                           {"Content-Type": "application/json"})
    assert status == 400 and "no such file or folder" in res["error"]


def test_subject_summary_of_uploaded_rows(server):
    rows = [{"subject": "7", "p_all": 0.9, "pred": "all"}, {"subject": "7", "p_all": 0.1, "pred": "hem"},
            {"subject": "H3", "p_all": 0.2, "pred": "hem"}, {"subject": "H3", "p_all": None, "pred": ""}]
    status, res = _request(server.url + "api/subjects", json.dumps({"rows": rows}).encode(),
                           {"Content-Type": "application/json"})
    by = {s["subject"]: s for s in res["subjects"]}
    assert status == 200 and by["7"]["fraction_pred_all"] == 0.5 and by["7"]["call"] == "all"
    assert by["H3"]["n_cells"] == 2 and by["H3"]["n_scored"] == 1 and by["H3"]["call"] == "hem"


# -- bad uploads ---------------------------------------------------------------------------------------
def test_bad_uploads_get_score_s_status(server, bundle_path, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a cell")
    fake = tmp_path / "UID_7_1_1_all.bmp"
    fake.write_text("a text file named like a cell")
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(black)
    score(bundle_path, [str(text), str(fake), str(black)], tmp_path / "pred.csv", jobs=1, progress=False)
    expected = dict(pd.read_csv(tmp_path / "pred.csv", keep_default_na=False)[["path", "status"]].values)
    for f in (text, fake, black):
        status, res = _upload(server, f)
        assert status == 200 and res["p_all"] is None and res["pred"] == ""
        assert res["status"] == expected[str(f)] != "ok"
    assert "not an image file" in expected[str(text)] and "not a recognised image" in expected[str(fake)]


def test_an_upload_over_the_size_limit_is_refused_with_the_limit(server):
    big = os.urandom(int(1.5 * 1024 * 1024))  # the fixture's limit is 1 MB
    status, res = _request(f"{server.url}api/cell?name=huge.bmp", big)
    assert status == 413
    assert "over the upload limit of 1.0 MB" in res["error"] and "--max-upload-mb" in res["error"]
    assert _request(server.url + "api/bundle")[0] == 200  # the server carries on


def test_an_image_with_too_many_pixels_is_refused_before_decoding(server):
    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000)).save(buf, format="PNG")  # small file (one colour), 36 megapixels
    assert buf.tell() < 1024 * 1024
    status, res = _request(f"{server.url}api/cell?name=wide.png", buf.getvalue())
    assert status == 200 and res["p_all"] is None
    assert "6000x6000 pixels, over the 4,000,000-pixel limit" in res["status"]  # score's words


def test_requests_from_other_pages_are_refused(server, sample_cells):
    data = Path(sample_cells["paths"][0]).read_bytes()
    req = urllib.request.Request(f"{server.url}api/cell?name=a.png", data=data)  # no X-Blastscan header
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403
    req = urllib.request.Request(server.url + "api/bundle", headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 403


# -- the command ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_command_says_where_it_serves_and_cleans_up(bundle_path, tmp_path):
    import signal

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen([*BLASTSCAN, "view", str(bundle_path), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        line = next(x for x in lines if "serving on" in x)
        assert "http://127.0.0.1:" in line and "only this machine" in line and "not a medical device" in line
        page = line.split("serving on ", 1)[1].split(" ", 1)[0]
        url, token = page.split("?token=")
        assert len(token) >= 32  # a random token, printed once in the page's URL
        req = urllib.request.Request(url + "api/bundle", headers={"X-Blastscan-Token": token})
        assert urllib.request.urlopen(req, timeout=30).status == 200
        assert "not a medical device" in urllib.request.urlopen(page, timeout=30).read().decode()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + "api/bundle", timeout=30)
        assert err.value.code == 403
        assert any(p.name.startswith("blastscan-view-") for p in tmp_path.iterdir())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert not any(p.name.startswith("blastscan-view-") for p in tmp_path.iterdir())
    assert "stopped; temporary files removed" in out


def test_the_command_rejects_a_busy_port_in_one_line(bundle_path, server):
    proc = subprocess.run([*BLASTSCAN, "view", str(bundle_path), "--port", str(server.port)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --host 127.0.0.1 --port") and "Traceback" not in proc.stderr


# -- the page in headless Chromium -----------------------------------------------------------------------
class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3/4): no extra library."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-extensions", "--remote-debugging-pipe"]

    def __init__(self, binary: str, profile: Path, width: int = 1280, height: int = 900):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds():  # in the child: the protocol's pipes on fds 3 and 4, whatever numbers they had here
            import fcntl

            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen([binary, *self.FLAGS, f"--user-data-dir={profile}",
                                      f"--window-size={width},{height}", "about:blank"],
                                     preexec_fn=fds, close_fds=False,  # ours are non-inheritable (PEP 446)
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf, self._id, self.session = b"", 0, None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 30, **params):
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buf:
                raw, self._buf = self._buf.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
            if time.monotonic() > deadline:
                raise TimeoutError(method)
            import select

            ready, _, _ = select.select([self._from_child], [], [], 0.5)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self._buf += chunk

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(expression)

    def pick_files(self, selector: str, files: list[str]) -> None:
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=files)

    def screenshot(self, path: Path) -> None:
        import base64

        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_child, self._from_child):
            os.close(fd)


def chromium_binary() -> str | None:
    return next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)


@pytest.mark.slow
@pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed (Debian: apt-get install chromium)")
def test_picking_a_cell_in_the_page_shows_its_probability_and_outline(server, sample_cells, tmp_path):
    cell = sample_cells["paths"][0]
    _, expected = _upload(server, cell)
    browser = Chromium(chromium_binary(), tmp_path / "profile")
    try:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=server.page_url)
        browser.wait_for("document.querySelector('#bundle-info dl') !== null")
        assert "not a medical device" in browser.evaluate("document.body.innerText")
        browser.pick_files("#files", [cell])
        shown = browser.wait_for("document.querySelector('.cell-card .p-all')?.textContent", timeout=60)
        assert float(shown) == pytest.approx(expected["p_all"], abs=5e-4)
        assert browser.evaluate("document.querySelector('.cell-card .call').textContent") == expected["pred"].upper()
        assert browser.evaluate("document.querySelector('.cell-card .cell-image img').naturalWidth") > 0
        assert browser.evaluate("document.querySelectorAll('.cell-card .ftable tbody tr').length") > 0
        assert browser.evaluate("document.querySelectorAll('.cell-card .nb img').length") == 5
        if os.environ.get("BLASTSCAN_VIEW_SCREENSHOT"):  # for the README: BLASTSCAN_VIEW_SCREENSHOT=docs/view.png
            browser.screenshot(Path(os.environ["BLASTSCAN_VIEW_SCREENSHOT"]))
    finally:
        browser.close()
