"""A process killed while it writes a checkpoint loses that checkpoint only: `latest` resumes from the one
before, and the resumed run ends with the weights of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT
from helpers import FAST, final_weights, max_weight_diff, only_run, run_strata

COMMON = [*FAST, "--max_steps", "9", "--save_steps", "3", "--save_total_limit", "5", "--seed", "3"]

# Runs `strata train` in a child process that dies like `kill -9` (os._exit: no cleanup, no flush of
# anything Python holds) inside Trainer's save of the step-6 checkpoint, at the named point.
CRASHING_CHILD = textwrap.dedent("""
    import os, sys
    from transformers import Trainer
    point, argv = sys.argv[1], sys.argv[2:]
    original = getattr(Trainer, point)
    def crash(self, *args, **kwargs):
        if self.state.global_step == 6:
            os._exit(137)
        return original(self, *args, **kwargs)
    setattr(Trainer, point, crash)
    from strata.cli import main
    sys.exit(main(["train", *argv]))
""")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = tmp_path_factory.mktemp("uninterrupted")
    assert run_strata("train", *COMMON, "--runs_dir", runs) == 0
    return only_run(runs)


@pytest.mark.parametrize(("point", "left_behind"), [
    ("_save_optimizer_and_scheduler", {"model.safetensors"}),  # killed after the weights
    ("_save_rng_state", {"model.safetensors", "optimizer.pt", "scheduler.pt"}),  # killed just before the end
])
def test_kill_during_a_save_then_resume_latest_equals_the_uninterrupted_run(uninterrupted, tmp_path, capsys,
                                                                            point, left_behind):
    runs = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", CRASHING_CHILD, point, *map(str, COMMON), "--runs_dir", str(runs)],
                           env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    assert child.returncode == 137, child.stderr[-2000:]
    run = only_run(runs)
    partial = run / "checkpoints" / "checkpoint-6"
    assert left_behind <= {p.name for p in partial.iterdir()}
    assert not (partial / "trainer_state.json").exists()
    args_before = (run / "args.json").read_text()

    assert run_strata("train", *COMMON, "--runs_dir", runs, "--resume_from_checkpoint", "latest") == 0
    out = capsys.readouterr().out
    assert "skipping checkpoint-6: its save was interrupted" in out and "resuming from checkpoint-3" in out
    assert only_run(runs) == run
    diff = max_weight_diff(final_weights(uninterrupted), final_weights(run))
    assert diff <= 1e-6, diff
    state = json.loads((run / "checkpoints" / "checkpoint-9" / "trainer_state.json").read_text())
    assert state["global_step"] == 9
    assert json.loads((run / "args.json").read_text())["max_steps"] == json.loads(args_before)["max_steps"]


def test_an_explicit_incomplete_checkpoint_is_refused(tmp_path, capsys):
    checkpoint = tmp_path / "run" / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4, "log_hist')  # truncated by a kill
    assert run_strata("train", *FAST, "--resume_from_checkpoint", str(checkpoint)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is incomplete (its save was interrupted" in err[0], err
