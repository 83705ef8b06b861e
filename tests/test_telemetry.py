"""Device telemetry (memory, tokens/s per device and in total), `strata env`, and --auto_find_batch_size."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from helpers import FAST, metrics, only_run, run_events, run_strata

from strata.training.telemetry import DeviceTelemetry, memory_snapshot


def _proc_status_mib(field: str) -> float:
    """A /proc/self/status line (kB) in MiB: the kernel's own accounting, read independently of psutil."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(field)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_cpu_memory_is_the_process_rss_and_its_peak():
    ballast = torch.ones(64 * 2**20 // 4)  # 64 MiB touched: RSS must move with it
    snap = memory_snapshot("cpu")
    vm_rss, vm_hwm = _proc_status_mib("VmRSS"), _proc_status_mib("VmHWM")
    assert snap["memory_allocated_mb"] == pytest.approx(vm_rss, abs=8)
    assert snap["peak_mb"] >= snap["memory_allocated_mb"]
    assert snap["peak_mb"] == pytest.approx(max(vm_hwm, snap["memory_allocated_mb"]), abs=8)
    del ballast
    telemetry = DeviceTelemetry("cpu")
    logs = telemetry.log_entries(1000, 2.0, None)
    assert logs["device0/tokens_per_second"] == 500 and logs["tokens_per_second_total"] == 500
    assert {"device0/memory_allocated_mb", "device0/memory_reserved_mb", "device0/peak_mb"} <= set(logs)


def test_two_ranks_sum_their_own_tokens():
    """The total is the sum of unequal per-rank counts over rank 0's seconds (a fake gather of 2 ranks)."""
    def gather(values):
        return [values, [300.0, 4.0, 10.0, 10.0, 20.0]]

    logs = DeviceTelemetry("cpu", 2).log_entries(1000.0, 2.0, gather)
    assert logs["device1/tokens_per_second"] == 75.0 and logs["device0/tokens_per_second"] == 500.0
    assert logs["tokens_per_second_total"] == (1000 + 300) / 2.0
    summary = DeviceTelemetry("cpu", 2).summary(1000.0, 2.0, gather, 4)
    assert summary["tokens_total"] == 1300 and [d["rank"] for d in summary["devices"]] == [0, 1]
    assert summary["per_device_train_batch_size_used"] == 4


def _tokens_per_rank(run: Path, argv: list[str], world_size: int, batch: int, steps: int) -> list[int]:
    """Each rank's real tokens by hand: the run's training rows rebuilt (same flags, its saved tokenizer), dealt
    as accelerate deals a sequential sampler's batches (batch k to rank k mod world size); a padded batch's
    real tokens are its rows' lengths."""
    from transformers import AutoTokenizer

    from strata.config import parse_run_config
    from strata.data.pipeline import load_examples, tokenize_examples

    config = parse_run_config(argv)
    seed = config.train.data_order_seed()
    examples = load_examples(config.data, "sft", seed)
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    rows = tokenize_examples(examples, tokenizer, "causal", config.data, "sft", seed,
                             rows_needed=steps * batch * world_size).train
    lengths = [len(ids) for ids in rows["input_ids"]]
    return [sum(sum(lengths[(world_size * step + rank) * batch:(world_size * step + rank + 1) * batch])
                for step in range(steps)) for rank in range(world_size)]


def test_train_writes_telemetry_to_tensorboard_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("STRATA_CACHE", str(tmp_path / "cache"))
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "4", "--logging_steps", "2", "--runs_dir", runs) == 0
    run = only_run(runs)
    events = run_events(run)
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/device0/memory_allocated_mb", "train/device0/memory_reserved_mb", "train/device0/peak_mb",
                "train/device0/tokens_per_second", "train/tokens_per_second_total"):
        assert tag in scalars, (tag, sorted(scalars))
    totals = [e.value for e in events.Scalars("train/tokens_per_second_total")]
    # One process: the total is the meter's tokens_per_second and device 0's rate, log by log.
    assert totals == pytest.approx([e.value for e in events.Scalars("train/tokens_per_second")], rel=1e-6)
    assert totals == pytest.approx([e.value for e in events.Scalars("train/device0/tokens_per_second")], rel=1e-6)
    peaks = [e.value for e in events.Scalars("train/device0/peak_mb")]
    rss = [e.value for e in events.Scalars("train/device0/memory_allocated_mb")]
    assert all(p >= r > 50 for p, r in zip(peaks, rss, strict=True))  # a torch process holds > 50 MiB
    result = metrics(run)
    telemetry = result["run"]["telemetry"]
    assert telemetry["device_type"] == "cpu" and telemetry["world_size"] == 1
    (device,) = telemetry["devices"]
    # Trainer's own independent count (include_num_input_tokens_seen) of the tokens this run read.
    assert device["tokens"] == telemetry["tokens_total"] == result["train"]["num_input_tokens_seen"]
    argv = [*FAST, "--max_steps", "4", "--logging_steps", "2", "--runs_dir", str(runs)]
    assert [device["tokens"]] == _tokens_per_rank(run, argv, 1, 4, 4)
    assert device["peak_mb"] >= device["memory_allocated_mb"] > 50
    assert telemetry["per_device_train_batch_size_used"] == 4


def test_auto_find_batch_size_lowers_the_batch_as_accelerate_does(tmp_path, monkeypatch):
    """A CUDA-style OOM in the first step: Trainer retries through accelerate's find_executable_batch_size,
    with the batch accelerate itself picks after one failure (its reduce_batch_size_fn: x0.9, int)."""
    from accelerate.utils import find_executable_batch_size

    from strata.training.trainer import StrataTrainer

    oom = "CUDA out of memory. Tried to allocate 2.00 GiB"
    tried: list[int] = []

    @find_executable_batch_size(starting_batch_size=4)
    def reference(batch_size):
        tried.append(batch_size)
        if len(tried) == 1:
            raise RuntimeError(oom)
        return batch_size

    expected = reference()
    assert tried == [4, expected] and expected < 4
    original, seen, calls = StrataTrainer.training_step, [], {"n": 0}

    def training_step(self, model, inputs, num_items_in_batch=None):
        calls["n"] += 1
        assert self.args.auto_find_batch_size  # the flag reached Trainer's arguments
        if calls["n"] == 1:
            raise RuntimeError(oom)
        seen.append(int(inputs["input_ids"].shape[0]))
        return original(self, model, inputs, num_items_in_batch)

    monkeypatch.setattr(StrataTrainer, "training_step", training_step)
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "3", "--auto_find_batch_size", "--runs_dir", runs) == 0
    assert seen == [expected] * 3
    result = metrics(only_run(runs))
    assert result["run"]["telemetry"]["per_device_train_batch_size_used"] == expected
    assert result["train"]["num_input_tokens_seen"] == result["run"]["telemetry"]["tokens_total"]


def test_env_prints_versions_devices_and_amx(capsys):
    from strata.models.device import cpu_has_amx

    assert run_strata("env") == 0
    out = capsys.readouterr().out
    for name in ("torch", "transformers", "accelerate", "trl", "peft", "datasets", "bitsandbytes"):
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        assert f"  {name} {version}" in out.splitlines(), name
    assert f"cpu AMX (amx_bf16): {'yes' if cpu_has_amx() else 'no'}" in out.splitlines()
    assert f"{os.cpu_count()} logical cores" in out
    if not torch.cuda.is_available():
        assert "interconnect: n/a" in out


def test_env_parallelism_line_and_refusals(capsys):
    assert run_strata("env", "--model", "llama-tiny", "--devices", "2", "--device_type", "cpu") == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("parallelism auto for llama-tiny") and ": ddp (" in line, line  # CPU processes: DDP
    # gpt2-124m: 124,439,808 parameters x 16 bytes (fp32 weights, grads, two AdamW moments) = 1.85 GiB, against
    # 60% of one device: 80 GiB -> 48 GiB, DDP; 2 GiB -> 1.2 GiB, it does not fit: FSDP
    for memory, expected in (("80", ": ddp ("), ("2", ": fsdp (")):
        assert run_strata("env", "--model", "gpt2-124m", "--devices", "8", "--device_type", "cuda",
                          "--device_memory", memory) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert "124,439,808 parameters" in line and expected in line, line
    assert run_strata("env", "--help") == 0
    assert "--device_memory GIB" in capsys.readouterr().out
    for argv, message in ((["--devices", "2"], "add --model M --devices N"), (["--model", "llama-tiny"],
                          "--model needs --devices"), (["--bogus"], "unknown argument")):
        assert run_strata("env", *argv) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="gloo backend unavailable")
def test_two_process_total_is_the_sum_of_each_ranks_tokens(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "error::FutureWarning",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    for name in ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "MASTER_PORT"):
        env.pop(name, None)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                str(REPO_ROOT / "train.py")]
    # Rows of up to 256 tokens are not cut to one length: the ranks read different numbers of real tokens.
    args = ["--model", "llama-tiny", "--max_length", "256", "--max_steps", "3", "--eval_steps", "0",
            "--max_eval_examples", "4", "--precision", "fp32", "--warmup_steps", "0", "--device", "cpu",
            "--per_device_train_batch_size", "2", "--logging_steps", "1", "--runs_dir", str(tmp_path)]
    done = subprocess.run([*torchrun, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(tmp_path)
    result = metrics(run)
    telemetry = result["run"]["telemetry"]
    assert telemetry["world_size"] == 2 and [d["rank"] for d in telemetry["devices"]] == [0, 1]
    per_rank = [d["tokens"] for d in telemetry["devices"]]
    assert per_rank == _tokens_per_rank(run, args, 2, 2, 3)  # each rank's own count, by hand
    assert per_rank[0] != per_rank[1]  # so rank 0's count x 2 would not be the total
    # Trainer gathers its own count across ranks (num_input_tokens_seen); the meter's all_reduce is a third path.
    assert sum(per_rank) == telemetry["tokens_total"] == result["train"]["num_input_tokens_seen"]
    assert telemetry["tokens_total"] == result["run"]["throughput"]["tokens"]
    events = run_events(run)
    scalars = set(events.Tags()["scalars"])
    for rank in (0, 1):
        for name in ("memory_allocated_mb", "peak_mb", "tokens_per_second"):
            assert f"train/device{rank}/{name}" in scalars, (rank, name, sorted(scalars))
    totals = [e.value for e in events.Scalars("train/tokens_per_second_total")]
    assert totals == pytest.approx([e.value for e in events.Scalars("train/tokens_per_second")], rel=1e-6)
