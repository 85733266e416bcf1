"""Atomic file writes and file hashing, shared by the dataset layer, the feature store and the pipelines.

A file is written under a temporary name in its target's folder and renamed into place, so a reader
never sees half a file and a crash leaves the previous version (or nothing) behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "file_sha256"]


def _current_umask() -> int:
    # os.umask can only be read by setting it; read once, at import, before any threads start
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    Parameters
    ----------
    target : path
        The file to publish. Its folder is created when missing.
    suffix : str
        Added before ``.tmp`` in the temporary name, for writers that choose a format by suffix
        (``.parquet``, ``.csv``).

    Yields
    ------
    Path
        The temporary file (already created, empty). On an exception it is removed and ``target`` is
        left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # same folder as the target: os.replace is atomic only within one file system
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; published files get the usual mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically (temp file in the same folder, then rename).

    Parameters
    ----------
    target : path
        The file to write (replaced when it exists).
    data : bytes
        Its whole content, flushed to disk before the rename.
    """
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, as a hex string, read in 1 MiB blocks.

    Parameters
    ----------
    path : path
        The file to hash.

    Returns
    -------
    str
        64 lower-case hex digits.
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
