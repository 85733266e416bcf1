"""A local web page over a bundle (``blastscan view``): drop cells, see P(ALL), the call and why.

The server is the standard library's threaded HTTP server; the page is three static files shipped in
``blastscan/view/static`` (no CDN, no build step). Cells are scored by the engine ``blastscan score`` uses
(:func:`input_manifest` + :func:`blastscan.bundle.scoring.score_manifest`), so probabilities and the
status of bad files are the same. Uploads are size-limited, written only into the server's temporary
folder and deleted once scored; that folder (and the default feature store inside it) is removed when the
server stops, and folders of a killed server (``blastscan-view-<pid>-*`` whose pid is gone) at the next
start. What the page shows beside a cell was computed at training time (:mod:`blastscan.bundle.reference`).

Access: the server makes a random token and prints the page's URL with it (as Jupyter does).
``GET /?token=T`` serves the page, whose script reads the token from its URL and sends it as the
``X-Blastscan-Token`` header on every API call; requests without it get 403. The page's two static assets
(``app.js``, ``style.css``: files shipped with the package, no data) are served without it. Server-side
batch paths are read only under the folders given with ``--allow DIR`` (none by default: dropping cells
needs no server-side path).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd

from blastscan._io import remove_stale_temp, sigterm_as_interrupt
from blastscan.bundle import Bundle, load_bundle
from blastscan.bundle.scoring import COLUMNS, flag_odd_sizes, score_manifest, subject_summary, training_rates
from blastscan.dataset import parse_cnmc_name
from blastscan.options import DeepOptions
from blastscan.dataset.inputs import input_manifest
from blastscan.errors import BlastscanError
from blastscan.provenance import to_jsonable
from blastscan.view.access import ApiError, QuietServer, batch_error, check_batch_path, too_many_pixels
from blastscan.view.detail import cell_detail, data_url, outline_png

__all__ = ["NOTICE", "ViewServer", "serve"]

NOTICE = "Research use only, not a medical device."
MAX_UPLOAD_MB = 16.0
BATCH_CHUNK = 32  # images scored per step of a batch, so the page can show progress
TOKEN_HEADER = "X-Blastscan-Token"
TMP_PREFIX = "blastscan-view-"  # + "<pid>-<random>": a folder whose pid is gone is a killed server's

_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/style.css": ("style.css", "text/css; charset=utf-8")}


def _safe_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/"))
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")[:120]
    return base or "upload"


class ViewServer:
    """The page and its JSON endpoints over one bundle.

    Endpoints: ``GET /`` (the page), ``GET /api/bundle`` (metadata), ``POST /api/cell?name=FILE`` (the
    raw image as the body; returns the cell's score and detail), ``POST /api/batch`` (JSON
    ``{"path": ...}``: a folder, image or CSV on this machine; returns a job), ``GET /api/batch/ID``
    (progress, then per-cell rows and the per-subject summary), ``GET /api/batch/ID/cell/N`` (detail of
    row N), ``POST /api/subjects`` (JSON rows -> per-subject summary).

    Parameters
    ----------
    bundle : Bundle or path
    host, port : str, int
        Where to listen (port 0: any free port).
    store : path, optional
        Feature store to reuse and fill; by default a temporary one, removed on :meth:`close`.
    extractor_options : DeepOptions or dict, optional
        The deep option group: where the weights are, precision, engine, batch size.
    max_upload_mb : float
    jobs : int, optional
        Processes for a batch's per-image features.
    trust : bool
        Load a bundle whose sidecar is missing or does not match.
    allow : list of paths
        Folders whose files a batch may read (``--allow``); none by default.
    token : str, optional
        The access token (default: a random one; :attr:`page_url` carries it).
    """

    def __init__(self, bundle: Bundle | str | os.PathLike, host: str = "127.0.0.1", port: int = 8765, *,
                 store: str | os.PathLike | None = None, extractor_options: Mapping[str, Any] | None = None,
                 max_upload_mb: float = MAX_UPLOAD_MB, jobs: int | None = None, trust: bool = False,
                 allow: Sequence[str | os.PathLike] = (), token: str | None = None):
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, trust=trust)
        self.extractor_options = DeepOptions.from_mapping(extractor_options)
        self.built = self.bundle.features(self.extractor_options)  # wrong weights stop here
        self.max_upload = int(max_upload_mb * 1024 * 1024)
        self.jobs = jobs
        self.token = token or secrets.token_urlsafe(24)
        self.allow = [os.path.realpath(a) for a in allow]
        for a in self.allow:
            if not os.path.isdir(a):
                raise BlastscanError(f"--allow {a}", "not a folder")
        remove_stale_temp(tempfile.gettempdir(), TMP_PREFIX)  # what a killed server left (its pid is gone)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))
        self.uploads = self.tmp / "uploads"
        self.uploads.mkdir()
        self.store = Path(store) if store is not None else self.tmp / "store"
        self.lock = threading.Lock()  # one scoring step at a time: the store and the CPUs are shared
        self.batches: dict[str, dict] = {}
        self.static = Path(__file__).resolve().parent / "static"
        try:
            self.httpd = QuietServer((host, port), _handler(self))
        except OSError as exc:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise BlastscanError(f"--host {host} --port {port}", f"cannot listen there ({exc.strerror or exc})") from None
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    @property
    def page_url(self) -> str:
        """The page's URL with the access token (what the command prints)."""
        return f"{self.url}?token={self.token}"

    def token_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), self.token.encode())

    @property
    def local_only(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> "ViewServer":
        """Serve in a background thread (for tests and notebooks); :meth:`close` stops it."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self.httpd.serve_forever()
        finally:
            self.close()

    def close(self) -> None:
        """Stop serving and delete the temporary folder (uploads, and the store unless one was given)."""
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self.httpd.server_close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # -- work --------------------------------------------------------------------------------------
    def bundle_info(self) -> dict:
        m = self.bundle.metadata
        ref = self.bundle.extras.get("view") or {}
        return to_jsonable({
            "notice": NOTICE, "file": self.bundle.path.name if self.bundle.path else "",
            "feature_set": m.get("feature_set"), "classifier": m.get("classifier"),
            "n_features": m.get("n_features"), "threshold": m.get("threshold"),
            "training_metrics": m.get("training_metrics"), "training_data": m.get("training_data"),
            "created": m.get("created"), "blastscan_version": m.get("blastscan_version"),
            "summary": self.bundle.summary(), "warnings": list(self.bundle.warnings),
            "max_upload_bytes": self.max_upload, "store": str(self.store) if self.store.parent != self.tmp else None,
            "has_reference": bool(ref), "has_handcrafted": bool(ref.get("handcrafted")),
            "n_reference_cells": len((ref.get("reference") or {}).get("labels", [])),
        })

    def _vector(self, sha: str) -> np.ndarray | None:
        try:
            fm = self.built.read(pd.DataFrame({"path": [""], "sha256": [sha]}), self.store)
        except BlastscanError:
            return None
        return fm.X[0].astype(np.float64) if len(fm.rows) else None

    def _score_rows(self, manifest_df: pd.DataFrame) -> pd.DataFrame:
        with self.lock:
            rows = score_manifest(self.bundle, manifest_df, self.store, extractor_options=self.extractor_options,
                                  jobs=self.jobs if len(manifest_df) > 1 else 1, built=self.built)
        if "subject" not in rows:
            rows["subject"] = ""
        return flag_odd_sizes(rows)  # score's size warning, word for word

    def detail(self, path: str, sha: str, status: str) -> dict:
        png, note = outline_png(path) if sha else (None, "")
        out = cell_detail(self.bundle, self._vector(sha) if str(status).startswith("ok") else None, sha256=sha)
        out["image"] = data_url(png, "image/png") if png else None
        out["outline_note"] = note
        return out

    def score_upload(self, name: str, data: bytes) -> dict:
        """Score one uploaded image (its bytes); the file lives in the temporary folder only while scored."""
        folder = self.uploads / uuid.uuid4().hex
        folder.mkdir()
        path = folder / _safe_name(name)
        try:
            path.write_bytes(data)
            too_big = too_many_pixels(data)  # checked before anything decodes the whole image
            if too_big:
                return to_jsonable({"name": path.name, "sha256": hashlib.sha256(data).hexdigest(),
                                  "subject": parse_cnmc_name(path.name)[0] or "", "p_all": None, "pred": "",
                                  "status": too_big, "threshold": self.bundle.threshold, "image": None,
                                  "features": [], "neighbours": [], "outline_note": ""})
            try:
                manifest_df, failed = input_manifest([str(path)])
            except BlastscanError:  # "no (usable) images": the file's own status, as score's CSV row gives it
                manifest_df, failed = pd.DataFrame(columns=["path", "sha256", "subject"]), _refusal(path)
            rows = self._score_rows(manifest_df)
            if len(failed):
                rows = pd.concat([rows, failed], ignore_index=True)
            row = rows.iloc[0]
            result = {"name": path.name, "sha256": str(row.get("sha256") or ""),
                      "subject": "" if pd.isna(row.get("subject")) else str(row.get("subject") or ""),
                      "p_all": float(row["p_all"]) if pd.notna(row.get("p_all")) else None,
                      "pred": str(row.get("pred") or "") if pd.notna(row.get("pred")) else "",
                      "status": str(row["status"]), "threshold": self.bundle.threshold}
            result.update(self.detail(str(path), result["sha256"], result["status"]))
            return to_jsonable(result)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def start_batch(self, path: str) -> str:
        path = check_batch_path(path, self.allow)
        job = {"id": uuid.uuid4().hex[:12], "path": path, "state": "running", "done": 0, "total": None,
               "rows": None, "subjects": None, "error": None, "started": time.time()}
        self.batches[job["id"]] = job
        threading.Thread(target=self._run_batch, args=(job,), daemon=True).start()
        return job["id"]

    def _run_batch(self, job: dict) -> None:
        try:
            manifest_df, failed = input_manifest([job["path"]], store=self.store if self.store.parent != self.tmp
                                                 else None)
            job["total"] = len(manifest_df) + len(failed)
            parts = []
            for start in range(0, len(manifest_df), BATCH_CHUNK):
                parts.append(self._score_rows(manifest_df.iloc[start:start + BATCH_CHUNK]))
                job["done"] = start + len(parts[-1])
            if len(failed):
                parts.append(failed.assign(p_all=np.nan, pred=""))
            rows = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
            if "subject" not in rows:
                rows["subject"] = ""
            rows = rows[COLUMNS].copy()
            rows["subject"] = rows["subject"].fillna("").astype(str)
            job["rows"] = rows
            job["subjects"] = subject_summary(rows, self.bundle.threshold, rates=training_rates(self.bundle))
            job["done"] = job["total"]
            job["state"] = "done"
        except Exception as exc:  # shown on the page, not lost in a thread
            job["error"], job["state"] = batch_error(job["path"], exc), "failed"

    def batch_status(self, job_id: str) -> dict:
        job = self.batches.get(job_id)
        if job is None:
            raise KeyError(job_id)
        out = {k: job[k] for k in ("id", "path", "state", "done", "total", "error")}
        out["threshold"] = self.bundle.threshold
        if job["state"] == "done":
            out["rows"] = job["rows"].to_dict(orient="records")
            out["subjects"] = job["subjects"].to_dict(orient="records")
        return to_jsonable(out)

    def batch_cell(self, job_id: str, index: int) -> dict:
        job = self.batches.get(job_id)
        if job is None or job["rows"] is None or not 0 <= index < len(job["rows"]):
            raise KeyError(job_id)
        row = job["rows"].iloc[index]
        out = {k: row[k] for k in COLUMNS}
        out["name"] = os.path.basename(str(row["path"]))
        out["threshold"] = self.bundle.threshold
        out.update(self.detail(str(row["path"]), str(row["sha256"] or ""), str(row["status"])))
        return to_jsonable(out)

    def subjects(self, rows) -> list[dict]:
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ApiError(HTTPStatus.BAD_REQUEST, "rows must be a list of objects (subject, p_all, pred)")
        df = pd.DataFrame(rows, columns=["subject", "p_all", "pred"])
        df["p_all"] = pd.to_numeric(df["p_all"], errors="coerce")
        df["subject"] = df["subject"].fillna("").astype(str)
        df["pred"] = df["pred"].fillna("").astype(str)
        return to_jsonable(subject_summary(df, self.bundle.threshold, rates=training_rates(self.bundle)).to_dict(orient="records"))


def _refusal(path: Path) -> pd.DataFrame:
    """The failed row ``score`` gives ``path`` when it is the only input and cannot be used."""
    _, failed = input_manifest([str(path)], allow_empty=True)
    if len(failed):
        return failed[["path", "sha256", "subject", "status"]]
    return pd.DataFrame([{"path": str(path), "sha256": "", "subject": "", "status": "no usable image"}])


class _Handler(BaseHTTPRequestHandler):
    """The page's HTTP endpoints; ``app`` is the :class:`ViewServer` they serve (set per server)."""

    app: "ViewServer"
    server_version = "blastscan-view"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep the terminal for the start-up lines and errors
        pass

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        self._send(status, json.dumps(obj, allow_nan=False).encode(), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        # a page elsewhere can point a DNS name at 127.0.0.1 (DNS rebinding); only answer our own names
        if not self.app.local_only:
            return True
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]").lower()
        return host in ("127.0.0.1", "localhost", "::1", self.app.host)

    def _token_ok(self, url) -> bool:
        """The token: from the header (the page's API calls), or the query string (opening the page)."""
        given = self.headers.get(TOKEN_HEADER) or (parse_qs(url.query).get("token") or [None])[0]
        return self.app.token_ok(given)

    def _refuse_token(self) -> None:
        self._error(HTTPStatus.FORBIDDEN, "missing or wrong token: open the URL that blastscan view printed "
                                          "(it ends with ?token=...)")

    def do_GET(self):
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        url = urlsplit(self.path)
        if url.path not in ("/app.js", "/style.css") and not self._token_ok(url):
            return self._refuse_token()  # the two assets are package files; the page and the API need it
        if url.path in _STATIC:
            name, ctype = _STATIC[url.path]
            return self._send(HTTPStatus.OK, (self.app.static / name).read_bytes(), ctype)
        if url.path == "/api/bundle":
            return self._json(HTTPStatus.OK, self.app.bundle_info())
        m = re.fullmatch(r"/api/batch/([0-9a-f]+)(?:/cell/(\d+))?", url.path)
        if m:
            try:
                if m.group(2) is None:
                    return self._json(HTTPStatus.OK, self.app.batch_status(m.group(1)))
                return self._json(HTTPStatus.OK, self.app.batch_cell(m.group(1), int(m.group(2))))
            except KeyError:
                return self._error(HTTPStatus.NOT_FOUND, "no such batch or row (batches end with the server)")
        return self._error(HTTPStatus.NOT_FOUND, f"no page {url.path}")

    def _body(self) -> bytes | None:
        """The request body, or None after answering 413 (the body is drained so the client reads it)."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._error(HTTPStatus.BAD_REQUEST, "a Content-Length header is required")
            return None
        if length > self.app.max_upload:
            left = length
            while left > 0 and left <= 64 * self.app.max_upload:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            if left > 0:
                self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"file of {length / 1048576:.1f} MB is over the upload limit of "
                        f"{self.app.max_upload / 1048576:.1f} MB (blastscan view --max-upload-mb)")
            return None
        return self.rfile.read(length) if length else b""

    def do_POST(self):
        if not self._host_ok():
            return self._error(HTTPStatus.FORBIDDEN, "unexpected Host header")
        # a custom header: another site's page cannot send it without a CORS preflight, which is refused
        if self.headers.get("X-Blastscan") != "1":
            self._body()
            return self._error(HTTPStatus.FORBIDDEN, "requests must come from the blastscan page")
        url = urlsplit(self.path)
        if not self.app.token_ok(self.headers.get(TOKEN_HEADER)):
            self._body()
            return self._refuse_token()
        body = self._body()
        if body is None:
            return
        try:
            if url.path == "/api/cell":
                name = (parse_qs(url.query).get("name") or ["upload"])[0]
                if not body:
                    return self._error(HTTPStatus.BAD_REQUEST, f"{name}: empty upload")
                if name.lower().endswith(".csv"):
                    return self._error(HTTPStatus.BAD_REQUEST, f"{name}: upload images; give a CSV as a "
                                                               "path on the server (batch)")
                return self._json(HTTPStatus.OK, self.app.score_upload(name, body))
            if url.path in ("/api/batch", "/api/subjects"):
                try:
                    payload = json.loads(body or b"{}")
                except (ValueError, UnicodeDecodeError):
                    return self._error(HTTPStatus.BAD_REQUEST, "the request body is not JSON")
                if not isinstance(payload, dict):
                    return self._error(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
                if url.path == "/api/batch":
                    path = payload.get("path", "")
                    if not isinstance(path, str):
                        return self._error(HTTPStatus.BAD_REQUEST, "path must be a string")
                    return self._json(HTTPStatus.ACCEPTED, {"id": self.app.start_batch(path.strip())})
                return self._json(HTTPStatus.OK, {"subjects": self.app.subjects(payload.get("rows", []))})
        except ApiError as exc:
            return self._error(exc.status, str(exc))
        except BlastscanError as exc:
            return self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except (ConnectionError, TimeoutError):  # the client went away: nobody to answer
            self.close_connection = True
            return None
        except Exception as exc:  # a bug: one line on the terminal (no request content), one to the page
            print(f"blastscan view: internal error on POST {url.path} ({type(exc).__name__}); please report it",
                  file=sys.stderr)
            return self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error ({type(exc).__name__}); "
                                                                 "please report it")
        return self._error(HTTPStatus.NOT_FOUND, f"no endpoint {url.path}")


def _handler(app: ViewServer) -> type:
    return type("Handler", (_Handler,), {"app": app})


def serve(bundle_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8765, *,
          store: str | os.PathLike | None = None, extractor_options: Mapping[str, Any] | None = None,
          max_upload_mb: float = MAX_UPLOAD_MB, jobs: int | None = None, trust: bool = False,
          allow: Sequence[str | os.PathLike] = (), echo: Callable[[str], None] = print) -> None:
    """Serve the page until interrupted (Ctrl+C or SIGTERM); the temporary folder goes with it."""
    server = ViewServer(bundle_path, host, port, store=store, extractor_options=extractor_options,
                        max_upload_mb=max_upload_mb, jobs=jobs, trust=trust, allow=allow)
    where = ("only this machine can open it, with the token" if server.local_only
             else "WARNING: other machines can open it, with the token")
    where += (f"; batches may read under {', '.join(server.allow)}" if server.allow
              else "; no server-side paths (--allow DIR)")
    echo(f"blastscan view: {server.bundle.feature_set} / {server.bundle.metadata.get('classifier')} at "
         f"P(ALL) >= {server.bundle.threshold:.4f}")
    echo(f"serving on {server.page_url} ({where}); Ctrl+C stops it. {NOTICE}")
    for w in server.bundle.warnings:
        echo(f"warning: {w}")

    previous = sigterm_as_interrupt()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        echo("stopped; temporary files removed")
    finally:
        server.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    sys.stdout.flush()
