"""Where a run computes and in what: the device, the precision, and how to name what actually runs.

Decided from the flags and the machine alone, before any model is built (a wrong request fails in a second).
"""

from __future__ import annotations

from pathlib import Path

import torch

from strata.errors import StrataError

__all__ = ["cpu_has_amx", "describe_precision", "resolve_device", "resolve_precision"]


def resolve_device(requested: str) -> str:
    """auto picks cuda, then mps, then cpu; an explicitly requested unavailable device is an error."""
    has_cuda = torch.cuda.is_available()
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        return "cuda" if has_cuda else "mps" if has_mps else "cpu"
    if requested == "cuda" and not has_cuda:
        raise StrataError("--device cuda was requested but no CUDA GPU is visible; use --device cpu (or auto)")
    if requested == "mps" and not has_mps:
        raise StrataError("--device mps was requested but Apple MPS is not available; use --device cpu (or auto)")
    return requested


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """True on x86 CPUs with AMX tiles for bf16 (Sapphire Rapids and later), read from /proc/cpuinfo's flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in cpuinfo.splitlines())


def resolve_precision(requested: str, device: str) -> str:
    """auto: bf16 (or fp16) on CUDA; on a CPU bf16 only with AMX, where bf16 matmuls are several times faster.

    AVX512-BF16 alone is not enough (oneDNN calls such a CPU bf16-capable): on a 2-core AVX512-BF16 EPYC
    without AMX (2026-12-01) the default job took 65-68 s in bf16 autocast against 52-61 s in fp32 over 3
    seeds, and reached accuracy 0.64/0.98/0.98 against 0.94/0.99/0.88. On AVX2-only CPUs a bf16 step
    takes minutes. `--precision bf16` still asks for it anywhere.
    """
    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device == "cpu":
            return "bf16" if cpu_has_amx() else "fp32"
        return "fp32"
    if requested == "fp16" and device != "cuda":
        raise StrataError(f"--precision fp16 needs CUDA (device is {device}); use --precision bf16 or fp32")
    if requested == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise StrataError("this GPU does not support bf16; use --precision fp16 or fp32")
    return requested


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.uint8: "4-bit",
                torch.int8: "int8"}


def describe_precision(precision: str, model: torch.nn.Module) -> str:
    """Name what Trainer will do with ``precision`` and what the weights are stored in.

    Trainer's ``bf16=True``/``fp16=True`` is autocast: matmuls run in half precision while the weights
    (and optimizer state) stay in the dtype they were loaded in, so "bf16" alone would overstate it.
    """
    dtypes: dict[str, int] = {}
    for param in model.parameters():
        name = _DTYPE_NAMES.get(param.dtype, str(param.dtype).removeprefix("torch."))
        dtypes[name] = dtypes.get(name, 0) + param.numel()
    weights = "+".join(sorted(dtypes, key=lambda n: -dtypes[n])) or "no"
    if precision == "fp32":
        return f"fp32 compute, {weights} weights"
    scaling = " with loss scaling" if precision == "fp16" else ""
    return f"{precision} autocast{scaling}, {weights} weights"
