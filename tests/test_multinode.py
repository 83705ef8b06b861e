"""Two torchrun "nodes" on this machine (c10d rendezvous, 1 gloo CPU worker each) train as one job.

Each agent is started as a user starts one per machine (`torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend
c10d --rdzv_endpoint HOST:PORT`); the rendezvous, not a flag, gives them node ranks 0 and 1. The job must write
one run folder (global rank 0's) recording 2 processes on 2 nodes, and train the weights one process trains
with the same global batch (the second code path: a plain single-process run).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import accelerate.utils
import pytest
import torch
from conftest import REPO_ROOT
from helpers import final_weights, max_weight_diff, metrics, only_run, run_strata

from strata.errors import StrataError
from strata.training.distributed import DistInfo, check_shared_folder

pytestmark = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="gloo backend unavailable")

COMMON = ["--model", "llama-tiny", "--max_length", "64", "--max_steps", "3", "--eval_steps", "0",
          "--max_eval_examples", "4", "--precision", "fp32", "--warmup_steps", "0", "--seed", "5",
          "--device", "cpu"]
LAUNCH_ENV = ("WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK", "GROUP_RANK", "TORCHELASTIC_RUN_ID",
              "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node(port: int, runs_dir, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="error::FutureWarning",
               PYTHONPATH=os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", f"strata-{port}",
                str(REPO_ROOT / "train.py")]
    return subprocess.Popen([*torchrun, *COMMON, "--per_device_train_batch_size", "2", "--runs_dir", str(runs_dir)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def test_two_nodes_write_one_run_folder_and_train_like_one_process(tmp_path):
    port = _free_port()
    logs = [open(tmp_path / f"node{i}.log", "w") for i in range(2)]  # noqa: SIM115 (closed below)
    nodes = [_node(port, tmp_path / "runs", log) for log in logs]  # 2 worker processes in all
    try:
        codes = [node.wait(timeout=600) for node in nodes]
    finally:
        for node, log in zip(nodes, logs):
            if node.poll() is None:
                node.kill()
            log.close()
    outputs = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], "\n".join(text[-3000:] for text in outputs)
    run = only_run(tmp_path / "runs")  # one folder: only global rank 0 chose and wrote one
    assert run.name.endswith("_ws2"), run.name
    recorded = metrics(run)["run"]
    assert (recorded["world_size"], recorded["nodes"]) == (2, 2)  # 2 processes, 1 per node
    assert recorded["process_group_backend"] == "gloo"
    # Exactly one agent ran global rank 0, which alone prints the run folder line.
    assert sum(f"run folder {run}" in text for text in outputs) == 1, outputs

    assert run_strata("train", *COMMON, "--per_device_train_batch_size", "4", "--runs_dir", tmp_path / "one") == 0
    diff = max_weight_diff(final_weights(run), final_weights(only_run(tmp_path / "one")))
    assert diff <= 1e-5, diff


def test_a_rank_that_cannot_see_the_run_folder_stops_every_rank(tmp_path, monkeypatch):
    # Nodes without a shared --runs_dir: what the all-gather brings back when rank 1 sees no folder (the gather
    # itself runs in the 2-node test above, where both ranks see it).
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda items: [*items, (1, (tmp_path / "no").is_dir())])
    with pytest.raises(StrataError, match=r"rank 1 of 2 cannot see the run folder .* every node shares"):
        check_shared_folder(tmp_path, DistInfo(rank=0, world_size=2, local_world_size=1))
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda items: [*items, (1, True)])
    check_shared_folder(tmp_path, DistInfo(rank=0, world_size=2, local_world_size=1))
