"""Issue 24, `blastscan view` against a hostile local user: a token on every request, batch paths only
under --allow, JSON 4xx for bad requests with nothing on the terminal, no CSV content in an error,
devices named as such, a killed server's temp folder removed at the next start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from blastscan.dataset import build_manifest
from blastscan.bundle import save_bundle
from blastscan.evaluation import EvalSettings
from blastscan.pipelines.extract import extract
from blastscan.pipelines.train import train_bundle
from blastscan.view.server import ViewServer

TOKEN = "fault-token-abcdefghijklmnop"


@pytest.fixture(scope="module")
def bundle_path(sample_root, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("viewfaults")
    manifest = build_manifest(sample_root / "C-NMC_Leukemia" / "training_data" / "fold_0").df
    extract(manifest, ["size"], tmp / "store", jobs=1, progress=False)
    bundle = train_bundle(manifest, "size", "logreg", tmp / "store", progress=False,
                          settings=EvalSettings(inner_folds=2))
    return save_bundle(bundle, tmp / "model.joblib")


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("allowed")


@pytest.fixture(scope="module")
def server(bundle_path, allowed):
    srv = ViewServer(bundle_path, "127.0.0.1", 0, jobs=1, token=TOKEN, allow=[allowed, "/dev"]).start()
    yield srv
    srv.close()


def _call(url, body=None, token=TOKEN, headers=None):
    h = {"X-Blastscan": "1", **({"X-Blastscan-Token": token} if token else {}), **(headers or {})}
    req = urllib.request.Request(url, data=body, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.headers.get("Content-Type"), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type"), exc.read()


def _json_error(res, status):
    code, ctype, body = res
    assert code == status and ctype == "application/json", (code, body[:200])
    return json.loads(body)["error"]


def _batch(server, path, **kw):
    return _call(server.url + "api/batch", json.dumps({"path": str(path)}).encode(), **kw)


def _wait(server, job_id):
    for _ in range(300):
        _, _, body = _call(f"{server.url}api/batch/{job_id}")
        job = json.loads(body)
        if job["state"] != "running":
            return job
        time.sleep(0.1)
    raise AssertionError("batch did not finish")


def test_every_request_without_the_token_is_refused(server, allowed):
    for token in (None, "wrong-token"):
        for url in (server.url, server.url + "api/bundle", server.url + "api/batch/abc"):
            assert "token" in _json_error(_call(url, token=token), 403)
        assert "token" in _json_error(_batch(server, allowed, token=token), 403)
    assert _call(server.page_url, token=None)[0] == 200  # the printed URL opens the page
    assert _call(server.url + "api/bundle")[0] == 200


def test_batch_paths_outside_allow_are_refused_and_none_are_allowed_by_default(server, bundle_path, tmp_path):
    secret = tmp_path / "private.png"
    secret.write_bytes(b"x")
    assert "not under a folder given with --allow" in _json_error(_batch(server, secret), 403)
    assert "not under a folder given with --allow" in _json_error(_batch(server, "/etc/passwd"), 403)
    with ViewServer(bundle_path, "127.0.0.1", 0, jobs=1, token=TOKEN) as default:
        assert "--allow DIR" in _json_error(_batch(default, tmp_path), 403)


def test_a_symlink_out_of_an_allowed_folder_is_refused(server, allowed, tmp_path):
    (tmp_path / "outside").mkdir()
    link = allowed / "link"
    link.symlink_to(tmp_path / "outside")
    assert "not under a folder given with --allow" in _json_error(_batch(server, link), 403)


def test_a_device_is_named_as_not_a_regular_file(server):
    assert "not a regular file" in _json_error(_batch(server, "/dev/zero"), 400)


def test_a_csv_s_content_never_appears_in_an_error(server, allowed):
    csv = allowed / "notes.csv"
    csv.write_text("SECRET-FIRST-LINE-42\nmore private words\n")
    code, _, body = _batch(server, csv)
    assert code == 202
    job = _wait(server, json.loads(body)["id"])
    assert job["state"] == "failed" and "SECRET" not in job["error"] and "private" not in job["error"]
    assert "cannot be used as a list of images" in job["error"]


@pytest.mark.parametrize("body", [b"[]", b'"x"', b"5", b"null", b"\xff\xfe", b"{", b'{"rows": "x"}'])
def test_bad_json_bodies_are_json_4xx_with_nothing_on_the_terminal(server, body, capfd):
    for endpoint in ("api/batch", "api/subjects"):
        code, ctype, _ = _call(server.url + endpoint, body, headers={"Content-Type": "application/json"})
        assert (400 <= code < 500 or body.startswith(b'{"rows"') and endpoint == "api/batch") and \
            ctype == "application/json"
    assert "must be a string" in _json_error(_call(server.url + "api/batch", b'{"path": 5}'), 400)
    assert "Traceback" not in capfd.readouterr().err
    bad_rows = json.dumps({"rows": [1, 2]}).encode()
    assert "list of objects" in _json_error(_call(server.url + "api/subjects", bad_rows), 400)


def test_a_client_that_hangs_up_leaves_no_traceback(server, capfd):
    import struct

    for _ in range(5):
        s = socket.create_connection((server.host, server.port))
        body = json.dumps({"rows": [{"subject": "1", "p_all": 0.5, "pred": "all"}] * 2000}).encode()
        s.sendall(b"POST /api/subjects HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Blastscan: 1\r\nX-Blastscan-Token: "
                  + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                  + str(len(body)).encode() + b"\r\n\r\n" + body)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not a polite close
        s.close()
    time.sleep(1.0)
    assert _call(server.url + "api/bundle")[0] == 200  # still serving
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err


def test_a_killed_servers_temp_folder_is_removed_at_the_next_start(bundle_path, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    stale = tmp_path / f"blastscan-view-{dead}-abc123"
    (stale / "uploads").mkdir(parents=True)
    (stale / "uploads" / "cell.png").write_bytes(b"private")
    alive = tmp_path / f"blastscan-view-{os.getppid()}-def456"  # a running server's: kept
    alive.mkdir()
    with ViewServer(bundle_path, "127.0.0.1", 0, jobs=1) as srv:
        assert not stale.exists() and alive.exists()
        assert srv.tmp.parent == tmp_path and srv.tmp.name.startswith(f"blastscan-view-{os.getpid()}-")


def test_an_upload_far_from_a_single_cell_gets_score_s_size_warning(server, sample_root):
    import io

    from PIL import Image

    from blastscan.dataset.images import odd_cell_size

    cell = sorted((sample_root / "C-NMC_Leukemia" / "training_data" / "fold_0" / "all").iterdir())[0]
    buf = io.BytesIO()
    Image.open(cell).convert("RGB").resize((2050, 1000)).save(buf, format="PNG")
    code, _, body = _call(server.url + "api/cell?name=wide.png", buf.getvalue())
    res = json.loads(body)
    assert code == 200 and res["p_all"] is not None
    assert res["status"] == f"ok (warning: {odd_cell_size(2050, 1000)})"
