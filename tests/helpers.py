"""Shared helpers for end-to-end tests: run `strata` in-process and read run folders."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

from strata.cli import main

# Small, fast defaults: a 2x64 Llama on the synthetic corpus, short rows, a tiny eval set.
FAST = ["--model", "llama-tiny", "--max_length", "96", "--per_device_train_batch_size", "4",
        "--max_eval_examples", "12", "--eval_steps", "0", "--warmup_steps", "0", "--precision", "fp32",
        "--learning_rate", "3e-3"]


def run_strata(*args: str) -> int:
    return main([str(a) for a in args])


def only_run(runs_dir: Path) -> Path:
    folders = [p for p in runs_dir.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def final_weights(run: Path, name: str = "final") -> dict[str, torch.Tensor]:
    return load_file(str(run / name / "model.safetensors"))


def max_weight_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def grpo_args(output_dir, **fields):
    """A finished StrataGRPOConfig for build_grpo_trainer tests: CPU, fp32, no reporting, log every step."""
    from strata.training.arguments import StrataGRPOConfig

    defaults = dict(output_dir=str(output_dir), use_cpu=True, bf16=False, report_to=[], logging_steps=1,
                    save_strategy="no", max_steps=1)
    return StrataGRPOConfig(**{**defaults, **fields})


def run_events(run: Path):
    """The run's TensorBoard events as tensorboard itself reads them (every scalar and tensor kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_train(*args: str, processes: int = 2, future_warnings_fail: bool = True) -> subprocess.CompletedProcess:
    """train.py under torchrun with `processes` CPU workers (gloo), one thread each; output captured.
    ``future_warnings_fail``: a FutureWarning is an error (off where a library's own deprecation fires)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if future_warnings_fail:
        env["PYTHONWARNINGS"] = "error::FutureWarning"
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               f"--master_port={free_port()}", str(REPO_ROOT / "train.py"), *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True)
