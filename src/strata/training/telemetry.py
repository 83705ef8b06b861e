"""Device telemetry: memory per device and tokens/s per device and in total, at every training log.

Each process samples its own device (one device per process under torchrun/DDP): CUDA's caching allocator
(``memory_allocated`` / ``memory_reserved`` / ``max_memory_allocated``), MPS's ``current_allocated_memory`` /
``driver_allocated_memory`` (no peak counter exists there), on a CPU the process's resident set (psutil, as
accelerate itself uses) and its high-water mark (``resource.getrusage``; the kernel keeps it, so no sampling
misses a peak). The samples and every rank's own token count and training seconds are gathered to all ranks in
one collective (``accelerator.gather``), so rank 0 logs device ``r`` for every ``r``.

The total is the sum of the ranks' own counts, not rank 0's count x world size: rows differ in length, so the
ranks see different numbers of real tokens (a padded or packed batch of the same row count is not the same
token count). ``tokens_per_second_total`` is that sum over rank 0's training seconds, i.e. exactly the
``tokens_per_second`` the throughput meter already logged (it sums with an all_reduce); the per-device rates
are each rank's tokens over its own seconds.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from typing import Any

import torch

MB = 2**20
# One row per rank in the gathered tensor: tokens, seconds, then the memory fields in this order.
MEMORY_FIELDS = ("memory_allocated_mb", "memory_reserved_mb", "peak_mb")


def memory_snapshot(device: torch.device | str) -> dict[str, float]:
    """This process's memory on ``device`` in MiB: allocated, reserved, peak (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return {"memory_allocated_mb": torch.cuda.memory_allocated(device) / MB,
                "memory_reserved_mb": torch.cuda.memory_reserved(device) / MB,
                "peak_mb": torch.cuda.max_memory_allocated(device) / MB}
    mps = getattr(torch, "mps", None)
    if device.type == "mps" and mps is not None and hasattr(mps, "current_allocated_memory"):
        allocated = mps.current_allocated_memory() / MB
        reserved = mps.driver_allocated_memory() / MB if hasattr(mps, "driver_allocated_memory") else allocated
        return {"memory_allocated_mb": allocated, "memory_reserved_mb": reserved,
                "peak_mb": float("nan")}  # MPS keeps no high-water mark
    rss = rss_bytes() / MB
    return {"memory_allocated_mb": rss, "memory_reserved_mb": rss, "peak_mb": max(peak_rss_bytes() / MB, rss)}


def rss_bytes() -> int:
    """Resident set size of this process (psutil: /proc/self/statm on Linux)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """The process's peak resident set size: ``ru_maxrss`` is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def memory_kind(device: torch.device | str) -> str:
    """What the memory numbers measure on this device, for metrics.json and the docs."""
    kind = torch.device(device).type
    if kind == "cuda":
        return "torch.cuda caching allocator: allocated, reserved, max_memory_allocated"
    if kind == "mps":
        return "torch.mps: current_allocated_memory, driver_allocated_memory (no peak)"
    return "process resident set (psutil) as allocated and reserved; peak = getrusage ru_maxrss"


Gather = Callable[[list[float]], list[list[float]]]


class DeviceTelemetry:
    """Gathers each rank's tokens, seconds and memory at a training log and names them per device."""

    def __init__(self, device: torch.device | str, world_size: int = 1) -> None:
        self.device = torch.device(device)
        self.world_size = world_size
        self.last: list[dict[str, float]] = []

    def rows(self, tokens: float, seconds: float, gather: Gather | None) -> list[dict[str, float]]:
        """Every rank's tokens, seconds and memory (all ranks must call: it is one collective)."""
        memory = memory_snapshot(self.device)
        local = [float(tokens), float(seconds), *(memory[name] for name in MEMORY_FIELDS)]
        table = gather(local) if gather is not None else [local]
        self.last = [{"tokens": row[0], "seconds": row[1], **dict(zip(MEMORY_FIELDS, row[2:], strict=True))}
                     for row in table]
        return self.last

    def log_entries(self, tokens: float, seconds: float, gather: Gather | None) -> dict[str, float]:
        """``device{r}/...`` for every rank r and ``tokens_per_second_total`` for a training log."""
        rows = self.rows(tokens, seconds, gather)
        logs: dict[str, float] = {}
        for rank, row in enumerate(rows):
            for name in MEMORY_FIELDS:
                logs[f"device{rank}/{name}"] = row[name]
            if row["seconds"] > 0:
                logs[f"device{rank}/tokens_per_second"] = row["tokens"] / row["seconds"]
        if rows[0]["seconds"] > 0:
            logs["tokens_per_second_total"] = sum(row["tokens"] for row in rows) / rows[0]["seconds"]
        return logs

    def summary(self, tokens: float, seconds: float, gather: Gather | None,
                train_batch_size: int | None = None) -> dict[str, Any]:
        """metrics.json ``run.telemetry``: each device's run tokens, tokens/s and memory at the end; the total."""
        rows = self.rows(tokens, seconds, gather)
        devices = []
        for rank, row in enumerate(rows):
            entry: dict[str, Any] = {"rank": rank, "tokens": row["tokens"], "train_seconds_measured": row["seconds"],
                                     **{name: row[name] for name in MEMORY_FIELDS}}
            if row["seconds"] > 0:
                entry["tokens_per_second"] = row["tokens"] / row["seconds"]
            devices.append(entry)
        out: dict[str, Any] = {"device_type": self.device.type, "memory": memory_kind(self.device),
                               "world_size": len(rows), "devices": devices,
                               "tokens_total": sum(row["tokens"] for row in rows)}
        if rows[0]["seconds"] > 0:
            out["tokens_per_second_total"] = out["tokens_total"] / rows[0]["seconds"]
        if train_batch_size is not None:  # what ran: --auto_find_batch_size may have lowered the request
            out["per_device_train_batch_size_used"] = train_batch_size
        return out
