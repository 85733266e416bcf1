"""How the deep backbones run: their arithmetic (float32, or bfloat16 where the CPU runs it natively) and
their engine (ONNX Runtime, OpenVINO or TensorFlow), chosen by a fixed rule from the CPU's flags.

The rule (measured with ``benchmarks/bench_deep.py``; figures in the README):

* ``--precision auto`` (the command line's default) is ``bf16`` where the CPU has native bfloat16
  (x86 ``avx512_bf16`` or ``amx_bf16``, aarch64 ``bf16``) and OpenVINO is installed: there OpenVINO's
  bf16 ran InceptionV3 2.7-3x and VGG16 2.2-7x faster than float32. Elsewhere ``float32``: emulated
  bfloat16 is slower than float32.
* ``--engine auto``: bf16 runs on OpenVINO (TensorFlow's ``mixed_bfloat16`` is the reference, slower);
  float32 runs on OpenVINO where the CPU has AVX-512 (measured 1.0-1.2x ONNX Runtime on two AVX-512
  CPUs), else on ONNX Runtime (the float32 engine before OpenVINO, kept where OpenVINO was not measured),
  else on TensorFlow.

The CPU is read from ``/proc/cpuinfo`` by :func:`read_cpu`; every function here takes a :class:`Cpu`
(``cpu=``), so a caller (or a test) can decide for another CPU.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from blastscan.errors import BlastscanError
from blastscan.features.engines import REGISTRY as ENGINE_REGISTRY

__all__ = ["PRECISIONS", "PRECISION_CHOICES", "ENGINES", "ENGINE_ENV", "BF16_EMULATED_ENV", "Cpu", "read_cpu",
           "bf16_support", "check_engine", "check_precision", "resolve_precision", "choose_engine",
           "engine_installed"]

PRECISIONS = ("float32", "bf16")
PRECISION_CHOICES = ("auto",) + PRECISIONS
#: ``--engine``'s choices: ``auto`` and the registered engines (:mod:`blastscan.features.engines`).
ENGINES = ("auto", *ENGINE_REGISTRY.names())
ENGINE_ENV = "BLASTSCAN_ENGINE"
# Set to 1 to run bf16 on a CPU without bfloat16 instructions (TensorFlow emulates it, slower than
# float32): for tests and for checking the embeddings on any machine, never for speed.
BF16_EMULATED_ENV = "BLASTSCAN_BF16_EMULATED"
_NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16")


@dataclass(frozen=True)
class Cpu:
    """What decides precision and engine: the CPU's model name and its instruction-set flags."""

    model: str = ""
    flags: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, cpuinfo: str) -> "Cpu":
        """From the text of ``/proc/cpuinfo`` (x86 ``flags``, aarch64 ``Features``)."""
        flags: set[str] = set()
        model = ""
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("flags", "features"):
                flags.update(value.split())
            elif key in ("model name", "cpu model") and not model:
                model = value.strip()
        return cls(model, frozenset(flags))

    @property
    def native_bf16(self) -> list[str]:
        return sorted(self.flags & set(_NATIVE_BF16))

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    def describe(self) -> str:
        """``"AMD EPYC (avx512_bf16, avx512f)"``: the model and the flags the rule reads."""
        shown = sorted(self.flags & {*_NATIVE_BF16, "avx512f", "amx_tile", "amx_int8", "avx512_vnni", "avx2"})
        return f"{self.model or 'unknown CPU'} ({', '.join(shown) or 'none of avx2/avx512/bf16/amx'})"


def read_cpu(path: str | os.PathLike = "/proc/cpuinfo") -> Cpu:
    """This machine's :class:`Cpu` (no flags when ``path`` cannot be read: float32 then)."""
    try:
        return Cpu.parse(Path(path).read_text(errors="replace"))
    except OSError:
        return Cpu()


def engine_installed(engine: str, find_spec: Callable = importlib.util.find_spec) -> tuple[bool, str]:
    """``(True, "")`` when the modules ``engine`` needs are installed (looked up, not imported: importing them
    costs seconds), else ``(False, why)``."""
    missing = [m for m in ENGINE_REGISTRY.get(engine).requires if find_spec(m) is None]
    if missing:
        return False, f"{' and '.join(missing)} not installed; pip install {' '.join(missing)}"
    return True, ""


def bf16_support(cpuinfo: str | None = None, cpu: Cpu | None = None) -> tuple[bool, str]:
    """Whether this CPU runs bfloat16 natively: ``(ok, why)``.

    Native means x86 ``avx512_bf16`` or ``amx_bf16`` (oneDNN's bf16 kernels), or aarch64 ``bf16``.
    ``cpu`` (or the text ``cpuinfo``) describes the CPU; by default this machine's ``/proc/cpuinfo``.
    """
    cpu = cpu or (Cpu.parse(cpuinfo) if cpuinfo is not None else read_cpu())
    if cpu.native_bf16:
        return True, f"{cpu.model or 'this CPU'} has {', '.join(cpu.native_bf16)}"
    return False, (f"{cpu.model or 'this CPU'} has no bfloat16 instructions (avx512_bf16, amx_bf16 or bf16): "
                   "bf16 would be emulated and slower than float32")


def check_precision(precision: str | None) -> str:
    """``precision`` spelled canonically: ``"auto"``, ``"float32"`` or ``"bf16"`` (None: ``"float32"``)."""
    p = "float32" if precision is None else str(precision).lower()
    p = {"fp32": "float32", "f32": "float32", "bfloat16": "bf16"}.get(p, p)
    if p not in PRECISION_CHOICES:
        raise BlastscanError("--precision", f"'{precision}' is not one of {', '.join(PRECISION_CHOICES)}")
    return p


def resolve_precision(precision: str | None, engine: str = "auto", cpu: Cpu | None = None,
                      installed: Callable[[str], tuple[bool, str]] = engine_installed) -> str:
    """``"float32"`` or ``"bf16"`` for the asked ``precision``: ``auto`` is bf16 where ``cpu`` (default:
    this machine) has native bfloat16 and OpenVINO runs it (``engine`` auto or openvino, installed),
    float32 elsewhere."""
    p = check_precision(precision)
    if p != "auto":
        return p
    e = _engine_name(engine)
    cpu = cpu or read_cpu()
    if cpu.native_bf16 and e in ("auto", "openvino") and installed("openvino")[0]:
        return "bf16"
    return "float32"


def _engine_name(engine: str | None) -> str:
    e = str(engine or os.environ.get(ENGINE_ENV) or "auto").lower()
    e = {"onnx": "onnxruntime", "ort": "onnxruntime", "tf": "tensorflow", "ov": "openvino"}.get(e, e)
    if e not in ENGINES:
        where = "--engine" if engine else f"${ENGINE_ENV}"
        raise BlastscanError(where, f"'{engine or os.environ.get(ENGINE_ENV)}' is not one of {', '.join(ENGINES)}")
    return e


def check_engine(engine: str | None, precision: str) -> str:
    """The engine asked for (``engine``, else ``$BLASTSCAN_ENGINE``, else ``"auto"``), checked against
    ``precision`` (``"float32"`` or ``"bf16"``): an engine runs the precisions it declares (ONNX Runtime
    float32 only)."""
    e = _engine_name(engine)
    runs = ENGINE_REGISTRY.get(e).precisions if e != "auto" else PRECISIONS
    if precision not in runs:
        others = [name for name, eng in ENGINE_REGISTRY.items() if precision in eng.precisions]
        raise BlastscanError(f"--engine {e}", f"runs {' and '.join(runs)} only; {precision} runs on --engine "
                                              f"{' or '.join(others)}")
    return e


def choose_engine(engine: str | None, precision: str, cpu: Cpu | None = None,
                  installed: Callable[[str], tuple[bool, str]] = engine_installed) -> str:
    """The engine that runs ``precision``: the one asked for, or for ``auto`` the rule of this module's
    docstring (bf16: OpenVINO; float32: OpenVINO on AVX-512 CPUs, else ONNX Runtime; TensorFlow when
    neither is installed). Whether the network can be written as a graph is checked when it is built."""
    e = check_engine(engine, precision)
    if e != "auto":
        return e
    if precision == "bf16":
        return "openvino" if installed("openvino")[0] else "tensorflow"
    cpu = cpu or read_cpu()
    order = ("openvino", "onnxruntime") if cpu.avx512 else ("onnxruntime", "openvino")
    return next((x for x in order if installed(x)[0]), "tensorflow")
