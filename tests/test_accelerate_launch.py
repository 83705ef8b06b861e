"""`accelerate launch` runs what it was asked for, or Strata refuses in one line.

The real launcher (accelerate 1.15's `accelerate launch`, as `python -m accelerate.commands.launch`) starts
train.py: `--cpu --num_processes 2` starts one process (its simple launcher), which Strata names; `--multi_gpu
--num_processes 2` with `--device cpu` starts two gloo workers, which must train the weights one process trains
with the same global batch; a config file with `distributed_type: FSDP` is refused instead of running DDP.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from helpers import FAST, final_weights, max_weight_diff, metrics, only_run, run_strata

from strata.config import parse_run_config
from strata.errors import StrataError
from strata.training.launch import check_launcher_environment

pytest.importorskip("accelerate.commands.launch")

COMMON = ["--model", "llama-tiny", "--max_length", "64", "--max_steps", "3", "--eval_steps", "0",
          "--max_eval_examples", "4", "--precision", "fp32", "--warmup_steps", "0", "--seed", "5",
          "--device", "cpu"]
LAUNCH_ENV = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "MASTER_ADDR",
              "MASTER_PORT")
ACCELERATE_ENV = ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED",
                  "ACCELERATE_USE_CPU", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
FSDP_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_reshard_after_forward: true
  fsdp_offload_params: false
  fsdp_cpu_ram_efficient_loading: false
  fsdp_activation_checkpointing: false
mixed_precision: 'no'
num_machines: 1
num_processes: 2
machine_rank: 0
use_cpu: false
"""


@pytest.fixture(autouse=True)
def plain_process(monkeypatch):
    for name in (*LAUNCH_ENV, *ACCELERATE_ENV):
        monkeypatch.delenv(name, raising=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accelerate(tmp_path, *launch_args: str, train_args: list[str]) -> subprocess.CompletedProcess:
    """accelerate launch ... train.py ..., with no default accelerate config of this machine (HF_HOME empty)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
           "PYTHONWARNINGS": "error::FutureWarning",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args, str(REPO_ROOT / "train.py"),
               *train_args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def test_cpu_num_processes_2_runs_one_process_and_is_refused(tmp_path):
    done = _accelerate(tmp_path, "--cpu", "--num_processes", "2", train_args=[*COMMON, "--runs_dir",
                                                                            str(tmp_path / "runs")])
    assert done.returncode != 0
    lines = _error_lines(done.stderr)
    assert len(lines) == 1, done.stderr[-3000:]  # one process, one line
    assert lines[0].startswith("error: accelerate launch started 1 process, not the 2 asked for"), lines
    assert "--multi_gpu --num_processes N train.py --device cpu" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                    reason="gloo backend unavailable")
def test_multi_gpu_num_processes_2_on_cpu_trains_like_one_process(tmp_path):
    # What the refusal above recommends: accelerate's torchrun path, 2 gloo workers on CPU.
    done = _accelerate(tmp_path, "--multi_gpu", "--num_processes", "2", "--main_process_port", str(_free_port()),
                       train_args=[*COMMON, "--per_device_train_batch_size", "2", "--runs_dir",
                                   str(tmp_path / "accelerate")])
    assert done.returncode == 0, done.stderr[-3000:]
    run = only_run(tmp_path / "accelerate")
    assert run.name.endswith("_ws2"), run.name
    recorded = metrics(run)["run"]
    assert (recorded["world_size"], recorded["process_group_backend"]) == (2, "gloo")
    assert run_strata("train", *COMMON, "--per_device_train_batch_size", "4", "--runs_dir", tmp_path / "one") == 0
    diff = max_weight_diff(final_weights(run), final_weights(only_run(tmp_path / "one")))
    assert diff <= 1e-5, diff


def test_an_fsdp_config_file_is_refused_not_run_as_ddp(tmp_path):
    config = tmp_path / "fsdp.yaml"
    config.write_text(FSDP_CONFIG)
    done = _accelerate(tmp_path, "--config_file", str(config), "--main_process_port", str(_free_port()),
                       train_args=[*COMMON, "--runs_dir", str(tmp_path / "runs")])
    assert done.returncode != 0
    lines = _error_lines(done.stderr)
    assert lines and all(line == lines[0] for line in lines), done.stderr[-3000:]  # the same line from each worker
    assert "distributed_type: FSDP" in lines[0] and "--parallelism fsdp" in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_accelerate_mixed_precision_against_precision_is_refused(tmp_path, monkeypatch, capsys):
    # accelerate exports its config's mixed_precision; TrainingArguments would take it when --precision is fp32.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert run_strata("train", *FAST, "--max_steps", "1", "--runs_dir", tmp_path / "runs") == 2
    err = capsys.readouterr().err
    assert "mixed_precision bf16" in err and "pass --precision bf16" in err, err
    assert not (tmp_path / "runs").exists()


def test_what_is_not_from_accelerate_launch_passes(monkeypatch):
    bf16 = [a if a != "fp32" else "bf16" for a in FAST]
    config = parse_run_config([*bf16, "--device", "cpu"])
    check_launcher_environment(config)  # nothing set
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what an in-process Accelerator given an FSDP plugin sets
    check_launcher_environment(config)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # now a worker of accelerate launch
    with pytest.raises(StrataError, match="distributed_type: FSDP"):
        check_launcher_environment(config)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    check_launcher_environment(config)  # bf16 asked of both: they agree


def test_mpirun_without_torchrun_variables_is_refused(monkeypatch):
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    with pytest.raises(StrataError, match="mpirun"):
        check_launcher_environment(parse_run_config(FAST))
