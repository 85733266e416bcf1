"""What `blastscan view` refuses before any work: batch paths outside the ``--allow`` folders,
devices and pipes, images over the pixel budget; a refused request's status; and a server that stays
quiet when a client hangs up. The token itself is checked by the request handler in :mod:`blastscan.view.server`."""

from __future__ import annotations

import io
import os
import stat
import sys
from http import HTTPStatus
from http.server import ThreadingHTTPServer
from typing import Sequence

from PIL import Image

from blastscan.dataset.images import over_pixel_budget
from blastscan.errors import BlastscanError

__all__ = ["ApiError", "QuietServer", "batch_error", "check_batch_path", "too_many_pixels"]


class ApiError(Exception):
    """A refused request: answered with ``status`` and a JSON ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_batch_path(path: str, allow: Sequence[str]) -> str:
    """The real path of a batch input, or :class:`ApiError`: it must exist under one of the ``allow``
    folders (real paths; symlinks are resolved first) and be a folder or a regular file."""
    if not path:
        raise ApiError(HTTPStatus.BAD_REQUEST, "give a folder, image or CSV path")
    if not allow:
        raise ApiError(HTTPStatus.FORBIDDEN, "server-side paths are off; start blastscan view with --allow DIR "
                                             "to score files under DIR (or drop the cells here)")
    real = os.path.realpath(os.path.expanduser(path))
    if not any(os.path.commonpath([real, a]) == a for a in allow):
        raise ApiError(HTTPStatus.FORBIDDEN, f"{path}: not under a folder given with --allow")
    try:
        mode = os.stat(real).st_mode
    except OSError:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{path}: no such file or folder on the server's machine") from None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{path}: not a regular file or folder; not opened")
    return real


def batch_error(path: str, exc: Exception) -> str:
    """The page's message for a failed batch: never a word of a CSV's content (it may not be a list)."""
    if path.lower().endswith(".csv"):
        return f"{path}: cannot be used as a list of images (a CSV with a path column, one image per row)"
    if isinstance(exc, BlastscanError):
        return str(exc)
    return f"internal error ({type(exc).__name__}); please report it"


def too_many_pixels(data: bytes) -> str:
    """The refusal for an image over the pixel budget ``score`` applies too (read from its header)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:  # not an image at all: the scoring engine says so in its own words
        return ""
    return over_pixel_budget(w, h) or ""


class QuietServer(ThreadingHTTPServer):
    """The threaded server, quiet when a client goes away mid-answer (a closed tab is not an error)."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        print(f"blastscan view: internal error answering {client_address[0]} ({sys.exc_info()[0].__name__}); "
              "please report it", file=sys.stderr)
