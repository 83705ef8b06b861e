"""Throughput and MFU: model FLOPs per token, a measured matmul peak, and the meter the trainer logs from.

Convention (PaLM, Chowdhery et al. 2022, appendix B), training FLOPs of one token:

* **Parameter term**: 2 FLOPs per weight in the forward pass, 2 for the gradient w.r.t. the layer's input and
  2 for the gradient w.r.t. the weight: 6 per trainable weight, 4 per frozen one (LoRA's base still passes
  input gradients back, but computes no weight gradients). Embedding lookups (every ``nn.Embedding``) are
  not matmuls and are not counted.
* **LM head**: the output projection (V x d, tied or not) is counted separately, at the positions where it
  actually runs: every token (``lm_head_positions="all"``) or only loss-bearing tokens (``"loss"``, when
  the trainer projects only positions whose shifted label is not -100). Softmax/cross-entropy is not counted.
* **Attention term**: ``12 * n_layers * n_heads * head_dim * seq_len`` per token (QK^T and AV, 2 FLOPs per
  multiply-add, x3 for forward + backward). ``seq_len`` is the row length the kernel computed over (a
  padded batch's width, a packed row's width; for flattened flash-attention batches, the length-weighted
  mean example length). Causal masking is not halved: SDPA/eager compute the full score matrix.
* TTT models: the parameter term only (their inner loop is not softmax attention and is not counted, so
  MFU is understated). Stratified models: the Llama-style attention term plus 6N over all paths (soft
  routing runs every path; ``top1``/``moe`` stratification overstates by the unused paths).
* Not counted (so MFU is "model FLOPs", not hardware FLOPs): padding, activation recomputation under
  gradient checkpointing, the optimizer step, norms and activations beyond their weights.

MFU = model FLOPs per second / (peak x processes). The peak is measured once per machine by a short dense
matmul in the run's precision and cached (:func:`measure_peak_flops`): it is what this device achieves, not
a datasheet number. MFU is not reported for 4/8-bit weights, encoder-decoders and sparse MoE models, where
the FLOPs above are not the work done (:func:`mfu_unavailable_reason`).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

ATTENTION_FREE_MODEL_TYPES = frozenset({"ttt"})
PROBE_BUDGET_SECONDS = 0.6  # timed part of the probe, all sizes; set-up and warm-up come on top


# ---------------------------------------------------------------------------- FLOPs per token
@dataclass(frozen=True)
class FlopCounter:
    """Training FLOPs of a model, from its parameters and config (see the module docstring)."""

    trainable_params: int  # matmul weights outside embeddings and the LM head
    frozen_params: int
    head_params: int  # the output projection, V x d
    head_trainable: bool
    n_layers: int
    attention_width: int  # n_heads * head_dim; 0 where the model has no softmax attention

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> FlopCounter:
        base = _unwrap(model)
        config = base.config
        embedding_ids = {id(p) for m in base.modules() if isinstance(m, torch.nn.Embedding)
                         for p in m.parameters(recurse=False)}
        head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
        head_weight = getattr(head, "weight", None)
        head_id = id(head_weight) if head_weight is not None else None
        trainable = frozen = 0
        for param in model.parameters():  # the wrapped model: LoRA's adapters are trainable weights too
            if id(param) in embedding_ids or id(param) == head_id:
                continue
            if param.requires_grad:
                trainable += param.numel()
            else:
                frozen += param.numel()
        n_layers = int(getattr(config, "num_hidden_layers", 0) or 0)
        heads = int(getattr(config, "num_attention_heads", 0) or 0)
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
        width = 0 if config.model_type in ATTENTION_FREE_MODEL_TYPES else heads * int(head_dim)
        return cls(trainable_params=trainable, frozen_params=frozen,
                   head_params=head_weight.numel() if head_weight is not None else 0,
                   head_trainable=bool(head_weight is not None and head_weight.requires_grad),
                   n_layers=n_layers, attention_width=width)

    def flops(self, non_pad_tokens: int, loss_tokens: int, lm_head_positions: str, seq_len: float) -> float:
        """Training FLOPs of a batch: ``non_pad_tokens`` real tokens in rows of ``seq_len``; the LM head runs
        at every token (``"all"``) or only at the ``loss_tokens`` loss-bearing ones (``"loss"``)."""
        if lm_head_positions not in ("all", "loss"):
            raise ValueError(f"lm_head_positions must be 'all' or 'loss', not {lm_head_positions!r}")
        head_positions = non_pad_tokens if lm_head_positions == "all" else loss_tokens
        head = (6 if self.head_trainable else 4) * self.head_params * head_positions
        body = (6 * self.trainable_params + 4 * self.frozen_params) * non_pad_tokens
        attention = 12 * self.n_layers * self.attention_width * seq_len * non_pad_tokens
        return float(body + head + attention)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (its config and heads), else the model itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def mfu_unavailable_reason(model: torch.nn.Module) -> str | None:
    """Why MFU would be meaningless for this model, or None when it is reported."""
    base = _unwrap(model)
    config = base.config
    if getattr(base, "hf_quantizer", None) is not None or getattr(base, "is_loaded_in_4bit", False) \
            or getattr(base, "is_loaded_in_8bit", False):
        return ("MFU is not reported under 4/8-bit loading: the quantized matmuls dequantize weights on the fly, "
                "so neither 6N nor a dense matmul peak describes the work done (tokens/s still are)")
    if getattr(config, "is_encoder_decoder", False):
        return ("MFU is not reported for encoder-decoder models: encoder and decoder see different tokens, "
                "so FLOPs per token do not apply (tokens/s still are)")
    top_k = getattr(config, "num_experts_per_tok", None)
    experts = getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None)
    if config.model_type != "stratified" and top_k and experts and int(experts) > int(top_k):
        return (f"MFU is not reported for sparse MoE models: each token runs {top_k} of {experts} experts, "
                "so 6N over all parameters would overstate it (tokens/s still are)")
    return None


# ---------------------------------------------------------------------------- measured peak
@dataclass(frozen=True)
class PeakFlops:
    flops_per_second: float
    key: str
    how: str  # e.g. "1024x1024 fp32 matmul on cpu, measured 2026-12-02T01:00:00Z (cached)"


def cache_file() -> Path:
    """$STRATA_CACHE/peak_flops.json, else $XDG_CACHE_HOME/strata/, else ~/.cache/strata/."""
    root = os.environ.get("STRATA_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(xdg) / "strata")
    return Path(root) / "peak_flops.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor() or platform.machine() or "cpu"
    return f"{device.type} {platform.machine()}"


def peak_key(device: torch.device, dtype: torch.dtype) -> str:
    """The cache key: the same chip, torch build, dtype and thread count measure the same peak."""
    threads = torch.get_num_threads() if device.type == "cpu" else 0
    return (f"{device.type}:{device_name(device)}|torch {torch.__version__}|{str(dtype).removeprefix('torch.')}"
            f"|threads {threads}")


def measure_peak_flops(device: torch.device | str, dtype: torch.dtype, path: Path | None = None) -> PeakFlops:
    """Dense matmul FLOPs/s of this device in ``dtype``, read from the cache or measured (< ~2 s) and stored."""
    device = torch.device(device)
    path = path or cache_file()
    key = peak_key(device, dtype)
    cache = _read_cache(path)
    if key in cache:
        entry = cache[key]
        return PeakFlops(float(entry["flops_per_second"]), key, f"{entry['how']} (cached in {path})")
    flops_per_second, size = _probe(device, dtype)
    how = (f"{size}x{size} {str(dtype).removeprefix('torch.')} matmul on {device_name(device)}, "
           f"measured {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}{_load_note()}")
    cache = _read_cache(path)  # another process may have written meanwhile: keep its entries
    cache[key] = {"flops_per_second": flops_per_second, "how": how}
    _write_cache(path, cache)
    return PeakFlops(flops_per_second, key, f"{how} (now; cached in {path})")


def _probe(device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """Best FLOPs/s of square matmuls at a few sizes (CPU: 1024 and 512, CUDA: 8192), within the budget."""
    sizes = (8192,) if device.type == "cuda" else (1024, 512)
    results = [_probe_size(device, dtype, size, PROBE_BUDGET_SECONDS / len(sizes)) for size in sizes]
    return max(results)


def _probe_size(device: torch.device, dtype: torch.dtype, size: int, budget: float) -> tuple[float, int]:
    while True:  # operands made on the device: 8192^2 randoms built on a CPU would take longer than the probe
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        _time_matmul(a, b, device)  # warm-up: library initialisation (cuBLAS handles, oneDNN kernels)
        seconds = _time_matmul(a, b, device)
        if seconds < budget / 3 or size <= 256:
            break
        size //= 2
    # The best of many: on a shared machine most multiplies are slowed by other processes; the fastest one
    # is what the device itself can do (a low peak would inflate MFU).
    best, deadline, repeats = seconds, time.perf_counter() + budget, 0
    while repeats < 3 or (time.perf_counter() < deadline and repeats < 500):
        best = min(best, _time_matmul(a, b, device))
        repeats += 1
    return 2.0 * size**3 / best, size


def _load_note() -> str:
    """The machine's load when measured: a busy CPU measures a low peak (and so inflates MFU)."""
    try:
        return f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    except (AttributeError, OSError):
        return ""


def _time_matmul(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    torch.matmul(a, b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, cache: dict[str, Any]) -> None:
    """Atomic replace, so a concurrent reader never sees half a file; an unwritable cache is not an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
            json.dump(cache, handle, indent=2, sort_keys=True)
        os.replace(handle.name, path)
    except OSError:
        pass


# ---------------------------------------------------------------------------- the meter
def batch_counts(inputs: dict[str, Any], pad_token_id: int | None,
                 encoder_decoder: bool) -> tuple[int, int, float] | None:
    """(non-pad tokens, loss-bearing tokens, attention seq_len) of one micro-batch; None without input_ids."""
    ids = inputs.get("input_ids")
    if not isinstance(ids, torch.Tensor):
        return None
    if "attention_mask" in inputs:
        non_pad = int(inputs["attention_mask"].sum())
    elif pad_token_id is not None:
        non_pad = int((ids != pad_token_id).sum())
    else:
        non_pad = ids.numel()
    labels = inputs.get("labels")
    if labels is None:
        loss = 0
    else:  # a causal LM predicts labels[t+1] at t: the first label of a row never carries loss
        loss = int((labels != -100).sum() if encoder_decoder else (labels[..., 1:] != -100).sum())
    seq_len: float = ids.shape[-1]
    cu = inputs.get("cu_seq_lens_q")
    if cu is not None:  # one flattened row of several examples: each attends within itself
        lengths = cu.diff().double()
        seq_len = float((lengths**2).sum() / lengths.sum().clamp(min=1))
    return non_pad, loss, seq_len


@dataclass
class _Counts:
    tokens: float = 0.0
    loss_tokens: float = 0.0
    flops: float = 0.0
    seconds: float = 0.0

    def add(self, other: _Counts) -> None:
        self.tokens += other.tokens
        self.loss_tokens += other.loss_tokens
        self.flops += other.flops
        self.seconds += other.seconds


@dataclass
class ThroughputMeter(TrainerCallback):
    """Counts tokens and FLOPs per micro-batch and training time between logs, excluding evaluation and
    checkpoint saving (the time from a step's end to the ``on_evaluate``/``on_save`` that follows it)."""

    counter: FlopCounter | None
    peak: PeakFlops | None
    unavailable: str | None = None
    world_size: int = 1
    window: _Counts = field(default_factory=_Counts)
    total: _Counts = field(default_factory=_Counts)
    # This process's own tokens and seconds (before summing over processes), for per-device telemetry:
    # the last closed window's and the run's.
    last_local: tuple[float, float] = (0.0, 0.0)
    total_local: _Counts = field(default_factory=_Counts)
    run_local: tuple[float, float] = (0.0, 0.0)  # set by summary(): the run's own tokens and seconds
    _window_start: float = 0.0
    _paused: float = 0.0
    _mark: float | None = None
    _pending_seconds: float = 0.0

    def observe(self, non_pad: int, loss: int, lm_head_positions: str, seq_len: float) -> None:
        self.window.tokens += non_pad
        self.window.loss_tokens += loss
        if self.counter is not None:
            self.window.flops += self.counter.flops(non_pad, loss, lm_head_positions, seq_len)

    def on_train_begin(self, args, state, control, **kwargs):
        # Trainer calls this again when --auto_find_batch_size retries with a smaller batch: the failed
        # attempt's steps are not this run's.
        self.total, self.total_local = _Counts(), _Counts()
        self._start_window()

    def on_step_begin(self, args, state, control, **kwargs):
        self._mark = None

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self._mark = now
        self._pending_seconds = now - self._window_start - self._paused

    def on_evaluate(self, args, state, control, **kwargs):
        self._pause()

    def on_save(self, args, state, control, **kwargs):
        self._pause()

    def _pause(self) -> None:
        if self._mark is not None:
            now = time.perf_counter()
            self._paused += now - self._mark
            self._mark = now

    def _start_window(self) -> None:
        self.window = _Counts()
        self._window_start, self._paused, self._pending_seconds = time.perf_counter(), 0.0, 0.0

    def close_window(self, reduce=None) -> dict[str, float]:
        """The log entries of the steps since the last log; ``reduce`` sums counts over processes."""
        counts = self.window
        counts.seconds = time.perf_counter() - self._window_start - self._paused
        self.last_local = (counts.tokens, counts.seconds)
        self.total_local.add(_Counts(tokens=counts.tokens, seconds=counts.seconds))
        if reduce is not None:
            counts.tokens, counts.loss_tokens, counts.flops = reduce([counts.tokens, counts.loss_tokens,
                                                                      counts.flops])
        self.total.add(counts)
        self._start_window()
        return self.rates(counts)

    def rates(self, counts: _Counts) -> dict[str, float]:
        if counts.seconds <= 0:
            return {}
        logs = {"tokens_per_second": counts.tokens / counts.seconds,
                "loss_tokens_per_second": counts.loss_tokens / counts.seconds}
        if self.peak is not None and self.counter is not None and self.unavailable is None:
            logs["mfu"] = counts.flops / counts.seconds / (self.peak.flops_per_second * self.world_size)
        return logs

    def summary(self, reduce=None) -> dict[str, Any]:
        """Run totals for metrics.json: the steps after the last log count too (up to the last step's end)."""
        pending = self.window
        pending.seconds = self._pending_seconds
        self.run_local = (self.total_local.tokens + pending.tokens, self.total_local.seconds + pending.seconds)
        if reduce is not None:
            pending.tokens, pending.loss_tokens, pending.flops = reduce([pending.tokens, pending.loss_tokens,
                                                                         pending.flops])
        total = _Counts()
        total.add(self.total)
        total.add(pending)
        out: dict[str, Any] = {"train_seconds_measured": total.seconds, "tokens": total.tokens,
                               "loss_tokens": total.loss_tokens, "world_size": self.world_size}
        for name, value in self.rates(total).items():
            out[name] = value  # time-weighted means over the run (totals / training time)
        if self.unavailable is not None:
            out["mfu_not_reported"] = self.unavailable
        if self.counter is not None and total.tokens > 0 and self.unavailable is None:
            out["flops_per_token"] = total.flops / total.tokens
            out["model_flops"] = total.flops
            out["flops_convention"] = ("PaLM: 6 per trainable / 4 per frozen weight outside embeddings, LM head "
                                       "at the positions it runs, 12*layers*heads*head_dim*seq_len attention; "
                                       "docs/throughput.md")
        if self.peak is not None:
            out["peak_flops_per_second"] = self.peak.flops_per_second
            out["peak_flops_how"] = self.peak.how
        return out
