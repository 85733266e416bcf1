"""Atomic file writes and file hashing, shared by the dataset layer, the feature store and the pipelines.

A file is written under a temporary name in its target's folder, fsynced, renamed into place and the
folder fsynced (as a database does), so a reader never sees half a file and a crash or power cut leaves
the previous version (or nothing) behind, never an empty file under the final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from blastscan.errors import BlastscanError

__all__ = ["atomic_path", "atomic_write_bytes", "check_writable_dir", "check_writable_file", "file_sha256",
           "fsync_path", "is_write_failure", "WriteError", "WRITE_ERRNOS", "pid_alive", "remove_stale_temp",
           "TEMP_MARK", "sigterm_as_interrupt"]

TEMP_MARK = ".tmp"  # every temporary name ends so (see atomic_path); stale ones are removed by remove_stale_temp


#: errno values that mean "this place cannot take the data" (not a bug, not a missing input).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM})


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a full disk, quota, read-only or I/O error (also as pyarrow words it)."""
    text = str(exc)
    return isinstance(exc, OSError) and (exc.errno in WRITE_ERRNOS or "No space left" in text
                                         or "Disk quota" in text or "Read-only file system" in text)


class WriteError(BlastscanError, OSError):
    """A file could not be written (full disk, quota, read-only place, I/O error): one line naming it.

    Also an :class:`OSError`, so callers that treat a failed write as "no cache" keep doing so."""

    @classmethod
    def of(cls, target, exc: OSError) -> "WriteError":
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc) or "quota" in str(exc)
        reason = ("No space left on device" if full and not exc.strerror else
                  exc.strerror or str(exc).split("\n")[0][:160] or type(exc).__name__)
        hint = "; free some space (or write elsewhere) and run again" if full else ""
        err = cls(str(target), f"cannot write ({reason}){hint}; nothing was left half-written")
        err.errno = errno.ENOSPC if full else exc.errno
        err.strerror, err.filename = reason, str(target)  # callers that re-word an OSError keep one reason
        return err

    def __str__(self) -> str:
        return f"{self.what}: {self.why}"


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
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # same folder as the target: os.replace is atomic only within one file system
        # the writer's pid in the name: a temp file of a process that no longer exists is a crash's leftover
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=suffix + TEMP_MARK,
                                   dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise WriteError.of(target, exc) from None
    try:
        try:
            yield Path(tmp)
        except OSError as exc:  # a full disk while the block wrote the temp file: one line naming the target
            if not is_write_failure(exc) or isinstance(exc, BlastscanError):
                raise
            raise WriteError.of(target, exc) from None
        try:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; published files get the usual mode
            fsync_path(tmp)  # the data on disk before the name points at it
            os.replace(tmp, target)
            fsync_path(target.parent)  # the rename itself on disk
        except OSError as exc:
            raise WriteError.of(target, exc) from None
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


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or a folder by path (a folder's fsync makes a rename in it durable). File systems that
    cannot fsync a folder are ignored (the data's fsync still happened)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if not os.path.isdir(path) or exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


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


def check_writable_dir(folder: str | os.PathLike, what: str) -> None:
    """Raise a one-line :class:`BlastscanError` unless files can be written in ``folder``.

    Checked before expensive work by creating (and removing) a probe file, which is what counts: file
    modes, read-only mounts and capabilities all show. A folder that does not exist yet is not created;
    its nearest existing parent is probed instead (it must let the folder be made).

    Parameters
    ----------
    folder : path
        Where files will be written.
    what : str
        How the user named it (an option such as ``--out``), first in the message.
    """
    folder = Path(os.path.abspath(folder))
    probe_in = folder
    while not probe_in.exists() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise BlastscanError(f"{what} {folder}", f"{probe_in} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".blastscan-probe-", suffix=TEMP_MARK, dir=probe_in)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        where = "" if probe_in == folder else f" (its folder {probe_in} cannot be written)"
        raise BlastscanError(f"{what} {folder}", f"cannot write there ({exc.strerror or exc}){where}") from None


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """:func:`check_writable_dir` for the folder of a file to be written (and the file itself when it exists)."""
    path = Path(os.path.abspath(path))
    if path.is_dir():
        raise BlastscanError(f"{what} {path}", "is a folder; give a file name")
    check_writable_dir(path.parent, what)


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: A temporary name of :func:`atomic_path`: ``.<target>.<pid>.<random chars>[<suffix>].tmp``.
_ATOMIC_TEMP = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+(?:\.[^.]+)?" + re.escape(TEMP_MARK) + "$")


def remove_stale_temp(folder: str | os.PathLike, prefix: str | None = None) -> int:
    """Remove what a crashed writer left in ``folder``: entries named ``<prefix><pid>.<...>`` whose ``pid``
    no longer runs (temp files of :func:`atomic_path`, temp folders named so); with ``prefix`` None, every
    temp file of :func:`atomic_path` there, whatever its target. Returns how many were removed; errors are
    ignored (cleaning is best effort, never a reason to fail)."""
    n = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for e in entries:
        if prefix is None:
            m = _ATOMIC_TEMP.match(e.name)
            if m is None:
                continue
            pid = m.group(1)
        elif e.name.startswith(prefix):
            pid = e.name[len(prefix):].split(".", 1)[0].split("-", 1)[0]
        else:
            continue
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            n += 1
    return n


def sigterm_as_interrupt():
    """Make SIGTERM (``kill``, a scheduler's stop) unwind like Ctrl+C: a ``KeyboardInterrupt`` in the main
    thread, so finished work is published and temporary files are removed; a second SIGTERM kills at once.

    Returns the handler it replaced (to restore it), or None outside the main thread, where nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)
