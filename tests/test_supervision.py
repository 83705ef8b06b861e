"""torchrun jobs end as a whole: a killed launcher takes its workers with it, a dead worker ends the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from conftest import REPO_ROOT
from helpers import FAST

pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="gloo backend unavailable")


def start_long_job(tmp_path, port: int) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """A 2-worker torchrun job that would train for minutes; returns once both workers are training."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           str(REPO_ROOT / "train.py"), *FAST, "--max_steps", "100000", "--device", "cpu",
           "--runs_dir", str(tmp_path / "runs")]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        logs = list((tmp_path / "runs").glob("*/logs/training.log"))
        if logs and "trainable parameters" in logs[0].read_text():
            break
        assert launcher.poll() is None, "the job ended before training started"
        time.sleep(0.5)
    else:
        launcher.kill()
        pytest.fail("training did not start within 120 s")
    time.sleep(3)  # inside the training loop
    workers = psutil.Process(launcher.pid).children(recursive=True)
    assert len([w for w in workers if "train.py" in " ".join(w.cmdline())]) == 2
    return launcher, workers


def test_killing_the_launcher_stops_the_workers_within_10_seconds(tmp_path):
    launcher, workers = start_long_job(tmp_path, 29541)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    killed_at = time.monotonic()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    for process in alive:
        process.kill()
    assert not alive, f"{len(alive)} worker(s) still running {time.monotonic() - killed_at:.1f} s after the launcher died"
    assert not list((tmp_path / "runs").glob("*/final"))


def test_a_dead_worker_ends_the_job_within_60_seconds(tmp_path):
    launcher, workers = start_long_job(tmp_path, 29543)
    trainers = [w for w in workers if "train.py" in " ".join(w.cmdline())]
    trainers[1].send_signal(signal.SIGKILL)
    started = time.monotonic()
    try:
        code = launcher.wait(timeout=60)
    except subprocess.TimeoutExpired:
        for process in [launcher, *workers]:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        pytest.fail("the job was still running 60 s after one worker died")
    assert code != 0
    assert time.monotonic() - started < 60
    assert not list((tmp_path / "runs").glob("*/final"))
