"""--parallelism fsdp checkpoints: every rank writes its DCP shard, and a run resumed from checkpoint N (after a
save of checkpoint 2N killed before its end) ends with the weights of the run that was never interrupted, read
back by plain transformers in a process that cannot import strata. A resume on another layout is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import only_run, torchrun_train

from strata.errors import StrataError
from strata.training.fsdp_checkpoint import LAYOUT_FILE, check_resume

FLAGS = ["--model", "llama-tiny", "--max_length", "64", "--max_steps", "4", "--eval_steps", "0",
         "--max_eval_examples", "4", "--precision", "fp32", "--warmup_steps", "0", "--seed", "5", "--device", "cpu",
         "--per_device_train_batch_size", "2", "--parallelism", "fsdp"]
SAVING = [*FLAGS, "--save_steps", "2", "--save_total_limit", "5"]

# Reads two final/ folders with transformers alone (strata made unimportable) and prints the largest difference.
COMPARE = textwrap.dedent("""
    import sys
    sys.modules["strata"] = None
    from transformers import AutoModelForCausalLM
    a, b = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in sys.argv[1:3])
    assert a.keys() == b.keys()
    print(max(float((a[k] - b[k]).abs().max()) for k in a))
""")

gloo = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                          reason="gloo backend unavailable")


def _train(*args) -> subprocess.CompletedProcess:
    done = torchrun_train(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _written_at(path: Path) -> int:
    return int(path.name.split(".")[3])  # events.out.tfevents.<unix time>.<host>.<pid>.<n>


def _losses(events_path: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(events_path), size_guidance={"scalars": 0})
    events.Reload()
    return {s.step: s.value for s in events.Scalars("train/loss")}


@gloo
def test_resume_from_an_fsdp_checkpoint_equals_the_uninterrupted_run(tmp_path):
    _train(*FLAGS, "--runs_dir", tmp_path / "a")
    uninterrupted = only_run(tmp_path / "a")
    _train(*SAVING, "--runs_dir", tmp_path / "b")
    run = only_run(tmp_path / "b")

    checkpoint = run / "checkpoints" / "checkpoint-2"
    names = {p.name for p in checkpoint.iterdir()}
    assert {"model.safetensors", "scheduler.pt", "rng_state_0.pth", "rng_state_1.pth", LAYOUT_FILE,
            "trainer_state.json"} <= names, names
    assert "optimizer.pt" not in names  # not rank 0's shards in Trainer's one-file format
    shards = sorted(p.name for p in (checkpoint / "dcp").glob("*.distcp") if p.stat().st_size > 0)
    assert [s.split("_")[2] for s in shards] == ["0", "1"], shards  # __<rank>_0.distcp: each rank wrote its own
    assert (checkpoint / "dcp" / ".metadata").is_file()
    assert json.loads((checkpoint / LAYOUT_FILE).read_text()) == {"choice": "fsdp", "mesh": [2]}

    # A save of checkpoint-4 killed before its end (no trainer_state.json), and nothing after it.
    (run / "checkpoints" / "checkpoint-4" / "trainer_state.json").unlink()
    shutil.rmtree(run / "final")
    (run / "metrics.json").unlink()
    resumed = _train(*SAVING, "--runs_dir", tmp_path / "b", "--resume_from_checkpoint", "latest")
    assert "skipping checkpoint-4" in resumed.stdout and "resuming from checkpoint-2" in resumed.stdout, resumed.stdout
    assert only_run(tmp_path / "b") == run
    # The resumed process trained steps 3 and 4 only (its own event file), with the uninterrupted run's losses.
    resumed_losses = _losses(max((run / "tensorboard").glob("events.out.tfevents.*"), key=_written_at))
    reference = _losses(uninterrupted / "tensorboard")
    assert sorted(resumed_losses) == [3, 4], resumed_losses
    for step, loss in resumed_losses.items():
        assert abs(loss - reference[step]) <= 1e-5, (step, loss, reference[step])
    state = json.loads((run / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4

    compared = subprocess.run([sys.executable, "-c", COMPARE, str(uninterrupted / "final"), str(run / "final")],
                              capture_output=True, text=True)
    assert compared.returncode == 0, compared.stderr[-2000:]
    diff = float(compared.stdout.split()[-1])
    assert diff <= 1e-5, diff

    # Another layout would not continue the run: refused in one line, the run folder left as it was.
    args_before = (run / "args.json").read_text()
    refused = torchrun_train(*SAVING, "--runs_dir", tmp_path / "b", "--parallelism", "ddp",
                             "--resume_from_checkpoint", checkpoint)
    assert refused.returncode != 0
    assert "holds --parallelism fsdp shards of mesh [2], this run is --parallelism ddp" in refused.stderr, \
        refused.stderr[-2000:]
    assert (run / "args.json").read_text() == args_before


@pytest.mark.parametrize(("saved", "choice", "mesh", "message"), [
    ({"choice": "fsdp", "mesh": [2]}, "fsdp", (2,), None),
    (None, "ddp", None, None),  # Trainer's own checkpoint, Trainer's own resume
    ({"choice": "fsdp", "mesh": [2]}, "fsdp", (4,), "shards of mesh [2], this run is --parallelism fsdp on mesh [4]"),
    ({"choice": "fsdp", "mesh": [2]}, "hsdp", (1, 2), "this run is --parallelism hsdp on mesh [1, 2]"),
    ({"choice": "hsdp", "mesh": [2, 1]}, "ddp", None, "holds --parallelism hsdp shards"),
    (None, "fsdp", (2,), "was not written by --parallelism fsdp/hsdp"),
])
def test_a_resume_on_another_layout_is_refused(tmp_path, saved, choice, mesh, message):
    checkpoint = tmp_path / "checkpoint-2"
    checkpoint.mkdir()
    if saved is not None:
        (checkpoint / LAYOUT_FILE).write_text(json.dumps(saved))
    if message is None:
        check_resume(checkpoint, choice, mesh)
        return
    with pytest.raises(StrataError, match=message.replace("[", r"\[").replace("]", r"\]")) as refused:
        check_resume(checkpoint, choice, mesh)
    assert "\n" not in str(refused.value)
