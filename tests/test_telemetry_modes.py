"""Device telemetry beyond sft/pretrain (issue 13 item 4): `--mode rl` (GRPO) and the vision path write the same
TensorBoard entries and metrics.json `run.telemetry`, and their token counts agree with the libraries' own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from helpers import metrics, only_run, run_events, run_strata
from test_rl_flags import RL_FAST
from test_vision import FIXTURES, SUJET

TAGS = ("train/device0/memory_allocated_mb", "train/device0/memory_reserved_mb", "train/device0/peak_mb",
        "train/device0/tokens_per_second", "train/tokens_per_second_total")
# 2 prompts of their own lengths a step (untruncated: 512) and EOS made likely (the byte tokenizer's id 1), so the
# batches are padded on both sides and a count of every position would differ from TRL's
RL_PADDED = ["--per_device_train_batch_size", "4", "--grpo_group_size", "2", "--max_prompt_length", "512",
             "--generation_kwargs", json.dumps({"sequence_bias": [[[1], 5.0]]}), "--grpo_beta", "0",
             "--logging_steps", "1", "--max_train_examples", "32"]


def _vm_hwm_mib() -> float:
    """This process's resident high-water mark from /proc (the kernel's accounting, not psutil's or getrusage's)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _check_board_and_telemetry(run: Path, steps: int) -> dict:
    """The TensorBoard tags at every log, the one-process identities, and memory inside the kernel's bounds.
    The run ran in this process (run_strata is in-process), so its RSS can never exceed this process's peak."""
    events = run_events(run)
    scalars = set(events.Tags()["scalars"])
    for tag in TAGS:
        assert tag in scalars, (tag, sorted(scalars))
        assert [e.step for e in events.Scalars(tag)] == list(range(1, steps + 1)), tag
    totals = [e.value for e in events.Scalars("train/tokens_per_second_total")]
    assert totals == pytest.approx([e.value for e in events.Scalars("train/device0/tokens_per_second")], rel=1e-6)
    assert totals == pytest.approx([e.value for e in events.Scalars("train/tokens_per_second")], rel=1e-6)
    assert all(t > 0 for t in totals)
    hwm = _vm_hwm_mib()
    rss = [e.value for e in events.Scalars("train/device0/memory_allocated_mb")]
    peaks = [e.value for e in events.Scalars("train/device0/peak_mb")]
    assert all(hwm + 1 >= p >= r > 50 for p, r in zip(peaks, rss, strict=True)), (hwm, peaks, rss)

    telemetry = metrics(run)["run"]["telemetry"]
    assert telemetry["device_type"] == "cpu" and telemetry["world_size"] == 1
    (device,) = telemetry["devices"]
    assert device["rank"] == 0 and sum(d["tokens"] for d in telemetry["devices"]) == telemetry["tokens_total"]
    # rate x the measured seconds gives the count back (the meter's seconds, not a wall-clock assertion)
    assert telemetry["tokens_per_second_total"] * device["train_seconds_measured"] == pytest.approx(
        telemetry["tokens_total"], rel=1e-9)
    assert hwm + 1 >= device["peak_mb"] >= device["memory_allocated_mb"] > 50
    return telemetry


def test_rl_run_logs_telemetry_and_counts_the_tokens_trl_counts(tmp_path, monkeypatch):
    """GRPO: TRL's `num_tokens` (its cumulative, all-process count of prompt + completion ids, taken when it
    generates) is the other path; ours sums the training forward's attention masks per process."""
    monkeypatch.setenv("STRATA_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    steps = 3
    assert run_strata("train", *RL_FAST, *RL_PADDED, "--max_steps", steps, "--runs_dir", runs) == 0
    run = only_run(runs)
    telemetry = _check_board_and_telemetry(run, steps)
    result = metrics(run)
    events = run_events(run)
    shortest = [e.value for e in events.Scalars("train/completions/min_length")]
    longest = [e.value for e in events.Scalars("train/completions/max_length")]
    assert any(s < m for s, m in zip(shortest, longest, strict=True)), (shortest, longest)  # right padding exists
    trl_tokens = [e.value for e in events.Scalars("train/num_tokens")]
    assert len(trl_tokens) == steps and trl_tokens[-1] > trl_tokens[0] > 0
    assert telemetry["tokens_total"] == trl_tokens[-1]
    assert telemetry["tokens_total"] == result["run"]["throughput"]["tokens"]
    # completion tokens, the loss-bearing ones: TRL's mean completion length x 4 completions, step by step
    means = [e.value for e in events.Scalars("train/completions/mean_length")]
    assert result["run"]["throughput"]["loss_tokens"] == pytest.approx(4 * sum(means), abs=1e-6)
    assert "mfu" not in result["run"]["throughput"] and "GRPO" in result["run"]["throughput"]["mfu_not_reported"]
    assert telemetry["per_device_train_batch_size_used"] == 4


def test_vision_run_logs_telemetry_and_counts_the_tokens_trainer_counts(tmp_path, monkeypatch):
    """The vision path: Trainer's own `num_input_tokens_seen` (non-padding, gathered) is the other path."""
    monkeypatch.setenv("STRATA_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    steps = 2
    assert run_strata("train", "--dataset", SUJET, "--model", "llava-tiny", "--max_steps", steps, "--hub_mirror",
                      FIXTURES, "--runs_dir", runs, "--per_device_train_batch_size", "2", "--logging_steps", "1",
                      "--per_device_eval_batch_size", "8", "--eval_steps", "0", "--precision", "fp32") == 0
    run = only_run(runs)
    telemetry = _check_board_and_telemetry(run, steps)
    result = metrics(run)
    assert telemetry["tokens_total"] == result["train"]["num_input_tokens_seen"] > 0
    seen = [e.value for e in run_events(run).Scalars("train/num_input_tokens_seen")]
    assert seen[-1] == telemetry["tokens_total"]
    assert 0 < result["run"]["throughput"]["loss_tokens"] < telemetry["tokens_total"]
    assert telemetry["per_device_train_batch_size_used"] == 2


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="gloo backend unavailable")
def test_two_process_rl_devices_sum_to_trls_gathered_count(tmp_path):
    """Two CPU ranks generate different completions (and draw different prompts): each counts its own tokens, and
    their sum is TRL's `num_tokens`, which TRL gathers over the ranks itself."""
    from test_telemetry import _free_port

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "MASTER_PORT"):
        env.pop(name, None)
    args = [*RL_FAST, *RL_PADDED, "--device", "cpu", "--max_steps", "2", "--runs_dir", str(tmp_path)]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={_free_port()}", str(REPO_ROOT / "train.py"), *map(str, args)],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(tmp_path)
    telemetry = metrics(run)["run"]["telemetry"]
    assert telemetry["world_size"] == 2 and [d["rank"] for d in telemetry["devices"]] == [0, 1]
    per_rank = [d["tokens"] for d in telemetry["devices"]]
    assert all(t > 0 for t in per_rank) and sum(per_rank) == telemetry["tokens_total"]
    assert per_rank[0] != per_rank[1]  # different prompts and completions: rank 0's count x 2 is not the total
    events = run_events(run)
    assert telemetry["tokens_total"] == [e.value for e in events.Scalars("train/num_tokens")][-1]
    scalars = set(events.Tags()["scalars"])
    for rank in (0, 1):
        for name in ("memory_allocated_mb", "peak_mb", "tokens_per_second"):
            assert f"train/device{rank}/{name}" in scalars, (rank, name, sorted(scalars))
