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

from strata.training.throughput import ThroughputMeter, batch_counts

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


class MeteredTraining:
    """Tokens/s and device telemetry for the Trainer subclasses that are not ``StrataTrainer`` (TRL's GRPO trainer,
    the vision recipe's Trainer): the same log entries and metrics.json blocks, from the same meter.

    Mix in before the Trainer class. Tokens are counted from each training micro-batch *after*
    ``_prepare_inputs``: GRPO generates its completions there, so only then do its token ids exist. No MFU: the
    FLOP convention of throughput.py describes a forward + backward over the counted tokens, which neither
    generation (forward only, token by token) nor a vision tower is.
    """

    throughput: ThroughputMeter | None = None
    telemetry: DeviceTelemetry | None = None
    mfu_not_reported = "MFU is not reported on this path: generation and vision towers are not the FLOPs counted"

    def step_tokens(self, inputs: dict[str, Any]) -> tuple[int, int] | None:
        """(real tokens, loss-bearing tokens) of one prepared training micro-batch; the text recipe's count."""
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)  # a processor's own
        counts = batch_counts(inputs, getattr(tokenizer, "pad_token_id", None), False)
        return None if counts is None else (counts[0], counts[1])

    def _prepare_inputs(self, inputs):
        prepared = super()._prepare_inputs(inputs)
        if self.throughput is not None and self.model.training:  # training_step calls model.train() first
            counts = self.step_tokens(prepared)
            if counts is not None:
                self.throughput.observe(counts[0], counts[1], "all", 0.0)
        return prepared

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self.throughput is not None:  # a training log, as in StrataTrainer.log
            logs.update(self.throughput.close_window(self._sum_over_processes))
            logs.update(self.telemetry.log_entries(*self.throughput.last_local, self._gather_rows))
        super().log(logs, start_time)

    def train(self, *args, **kwargs):
        if self.throughput is None:  # before Trainer's on_train_begin, which starts the meter's clock
            self.throughput = ThroughputMeter(None, None, self.mfu_not_reported, self.accelerator.num_processes)
            self.add_callback(self.throughput)
            self.telemetry = DeviceTelemetry(self.args.device, self.accelerator.num_processes)
        return super().train(*args, **kwargs)

    def _sum_over_processes(self, values: list[float]) -> list[float]:
        return sum_over_processes(self.accelerator, self.args.device, values)

    def _gather_rows(self, values: list[float]) -> list[list[float]]:
        return gather_rows(self.accelerator, self.args.device, values)

    def throughput_summary(self) -> dict[str, Any]:
        """metrics.json ``run.throughput``: tokens, loss tokens and their rates over the run (all ranks call)."""
        return self.throughput.summary(self._sum_over_processes) if self.throughput is not None else {}

    def telemetry_summary(self) -> dict[str, Any]:
        """metrics.json ``run.telemetry`` (all ranks call, after :meth:`throughput_summary`)."""
        if self.telemetry is None or self.throughput is None:
            return {}
        ran = self.state.train_batch_size  # what the loop ran, per process (x the GPUs one process drives)
        per_device = ran // max(1, self.args.n_gpu) if ran is not None else None
        return self.telemetry.summary(*self.throughput.run_local, self._gather_rows, per_device)


def sum_over_processes(accelerator: Any, device: torch.device, values: list[float]) -> list[float]:
    """``values`` summed over every process (one all_reduce; itself with one process)."""
    if accelerator.num_processes == 1:
        return values
    total = accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=device), reduction="sum")
    return [float(v) for v in total]


def gather_rows(accelerator: Any, device: torch.device, values: list[float]) -> list[list[float]]:
    """Every process's ``values``, in rank order (one all_gather)."""
    local = torch.tensor([values], dtype=torch.float64, device=device)
    if accelerator.num_processes == 1:
        return local.tolist()
    return accelerator.gather(local).cpu().tolist()
