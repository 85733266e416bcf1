"""blastscan._io: atomic writes publish whole files only, with the usual mode; file hashing; SIGTERM as Ctrl+C."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

import pytest

from blastscan._io import atomic_path, atomic_write_bytes, file_sha256


def test_atomic_path_publishes_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"


def test_published_files_get_the_usual_mode_not_mkstemp_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "x.bin", b"data")
    finally:
        os.umask(old)
    # mkstemp creates 0600; other users of a shared store must be able to read what was published
    assert (tmp_path / "x.bin").stat().st_mode & 0o777 in (0o644, 0o666 & ~old)


def test_file_sha256_is_the_hash_of_the_bytes(tmp_path):
    f = tmp_path / "blob.bin"
    data = os.urandom(3 << 20)  # several read blocks
    f.write_bytes(data)
    assert file_sha256(f) == hashlib.sha256(data).hexdigest()


_SIGTERM_CHILD = """
import os, signal, threading, time
from blastscan._io import sigterm_as_interrupt
off_main = []
worker = threading.Thread(target=lambda: off_main.append(sigterm_as_interrupt()))
worker.start(); worker.join()
print("off-main", off_main == [None] and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
sigterm_as_interrupt()
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
except KeyboardInterrupt:
    print("unwound", signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, flush=True)
os.kill(os.getpid(), signal.SIGTERM)  # the second one kills at once
time.sleep(5)
print("still alive", flush=True)
"""


def test_sigterm_unwinds_as_ctrl_c_once_and_only_in_the_main_thread():
    # in a fresh process: a real SIGTERM to the test process itself would reach the native threads of every
    # library the suite has loaded
    run = subprocess.run([sys.executable, "-c", _SIGTERM_CHILD], capture_output=True, text=True, timeout=60)
    assert run.stdout.split("\n")[:2] == ["off-main True", "unwound True"], run.stdout + run.stderr
    assert "still alive" not in run.stdout
    assert run.returncode == -signal.SIGTERM
