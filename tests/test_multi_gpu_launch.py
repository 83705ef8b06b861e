"""`--multi_gpu` self-launch: 2 gloo CPU workers through torch.distributed.run, checked against an explicit torchrun.

The second code path is torch's own launcher started by hand on train.py; the self-launched run must train
the same weights, in one run folder named `..._multigpu`, with world size 2 and the requested gloo process group
as the workers themselves recorded them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from helpers import final_weights, max_weight_diff, metrics, only_run, run_strata

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="gloo backend unavailable")

COMMON = ["--model", "llama-tiny", "--max_length", "64", "--max_steps", "3", "--eval_steps", "0",
          "--max_eval_examples", "4", "--precision", "fp32", "--warmup_steps", "0", "--seed", "5",
          "--device", "cpu", "--batch_size", "2", "--multi_gpu"]
LAUNCH_ENV = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID", "MASTER_PORT")


@pytest.fixture(autouse=True)
def plain_process(monkeypatch):
    """A plain `python train.py`, whose workers fail on a deprecation like the suite does."""
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONWARNINGS", "error::FutureWarning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_self_launch_equals_an_explicit_torchrun(tmp_path):
    assert run_strata("train", *COMMON, "--nproc_per_node", "2", "--ddp_backend", "gloo",
                      "--runs_dir", tmp_path / "self") == 0
    run = only_run(tmp_path / "self")  # one folder: the parent process made none of its own
    assert run.name.endswith("_ws2_multigpu"), run.name
    assert json.loads((run / "args.json").read_text())["world_size"] == 2
    recorded = metrics(run)["run"]
    assert recorded["world_size"] == 2
    assert recorded["process_group_backend"] == "gloo"  # torch.distributed.get_backend() inside the worker

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
                str(REPO_ROOT / "train.py")]
    done = subprocess.run([*torchrun, *COMMON, "--runs_dir", str(tmp_path / "torchrun")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    explicit = only_run(tmp_path / "torchrun")
    assert explicit.name.split("_", 2)[2] == run.name.split("_", 2)[2]  # the same run key
    assert max_weight_diff(final_weights(run), final_weights(explicit)) == 0.0


def test_a_failing_worker_fails_the_launch_with_its_exit_code(tmp_path, capfd):
    # The workers find the dataset missing (after the parent's data-free checks pass): each exits 2.
    code = run_strata("train", *COMMON, "--nproc_per_node", "2", "--dataset", str(tmp_path / "missing.jsonl"),
                      "--runs_dir", tmp_path / "runs")
    err = capfd.readouterr().err
    assert code == 2, err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("error: worker rank ") and "of 2 failed (exit code 2)" in last, err
    assert "unknown dataset" in err  # the worker's own line
    assert not (tmp_path / "runs").exists()
