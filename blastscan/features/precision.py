"""How the deep backbones run: their arithmetic (float32, or bfloat16 where the CPU runs it natively,
checked from /proc/cpuinfo; elsewhere TensorFlow emulates it, slower than float32, so it is refused) and
their engine (ONNX Runtime or TensorFlow for float32; bf16 runs on TensorFlow)."""

from __future__ import annotations

from pathlib import Path

from blastscan.errors import BlastscanError

__all__ = ["PRECISIONS", "ENGINES", "ENGINE_ENV", "BF16_EMULATED_ENV", "bf16_support", "check_engine",
           "check_precision"]

PRECISIONS = ("float32", "bf16")
# auto: ONNX Runtime for float32 where it is installed and the network exports, else TensorFlow
ENGINES = ("auto", "onnxruntime", "tensorflow")
ENGINE_ENV = "BLASTSCAN_ENGINE"
# Set to 1 to run bf16 on a CPU without bfloat16 instructions (emulated, slower than float32): for tests
# and for checking the embeddings on any machine, never for speed.
BF16_EMULATED_ENV = "BLASTSCAN_BF16_EMULATED"


def _cpu_flags(cpuinfo: str) -> tuple[set[str], str]:
    flags: set[str] = set()
    model = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):  # x86 / aarch64
            flags.update(value.split())
        elif key in ("model name", "cpu model") and not model:
            model = value.strip()
    return flags, model


def bf16_support(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU runs bfloat16 natively: ``(ok, why)``.

    Native means x86 ``avx512_bf16`` or ``amx_bf16`` (oneDNN's bf16 kernels), or aarch64 ``bf16``,
    read from ``/proc/cpuinfo`` (``cpuinfo`` overrides it, for tests). Elsewhere TensorFlow emulates
    bfloat16, which is slower than float32: there is no point in it.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return False, "cannot read /proc/cpuinfo to check for bfloat16 instructions"
    flags, model = _cpu_flags(cpuinfo)
    native = sorted(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    if native:
        return True, f"{model or 'this CPU'} has {', '.join(native)}"
    return False, (f"{model or 'this CPU'} has no bfloat16 instructions (avx512_bf16, amx_bf16 or bf16): "
                   "bf16 would be emulated and slower than float32")


def check_precision(precision: str | None) -> str:
    p = "float32" if precision is None else str(precision).lower()
    p = {"fp32": "float32", "bfloat16": "bf16"}.get(p, p)
    if p not in PRECISIONS:
        raise BlastscanError("--precision", f"'{precision}' is not one of {', '.join(PRECISIONS)}")
    return p


def check_engine(engine: str | None, precision: str) -> str:
    """The engine asked for (``engine``, else ``$BLASTSCAN_ENGINE``, else ``"auto"``), checked against
    ``precision``: ONNX Runtime runs float32 only."""
    import os

    e = str(engine or os.environ.get(ENGINE_ENV) or "auto").lower()
    e = {"onnx": "onnxruntime", "ort": "onnxruntime", "tf": "tensorflow"}.get(e, e)
    if e not in ENGINES:
        where = "--engine" if engine else f"${ENGINE_ENV}"
        raise BlastscanError(where, f"'{engine or os.environ.get(ENGINE_ENV)}' is not one of {', '.join(ENGINES)}")
    if e == "onnxruntime" and precision != "float32":
        raise BlastscanError("--engine onnxruntime", f"runs float32 only; {precision} runs on --engine tensorflow")
    return e
