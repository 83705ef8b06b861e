"""Run folders are never clobbered: a failed start leaves nothing, `latest` resumes only the same
configuration, and two runs can never be handed one folder."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from helpers import FAST, only_run, run_strata

from strata.errors import StrataError
from strata.training.run_folder import RunFolder, latest_checkpoint, new_run_folder


def cannot_build(*args, **kwargs):
    raise StrataError("cannot build this model; pick another --model")


def test_a_failure_before_training_leaves_no_folder(tmp_path, monkeypatch, capsys):
    # A model that cannot be built fails after the run folder was made (args, logs, tokenizer written).
    from strata.training import run

    monkeypatch.setattr(run, "load_for_training", cannot_build)
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "2", "--runs_dir", runs) == 2
    assert list(runs.iterdir()) == []
    out = tmp_path / "explicit"
    assert run_strata("train", *FAST, "--max_steps", "2", "--output_dir", out) == 2
    assert not out.exists()
    monkeypatch.undo()
    capsys.readouterr()
    # ... and the same command then runs in the same --output_dir.
    assert run_strata("train", *FAST, "--max_steps", "2", "--output_dir", out) == 0
    assert (out / "final").is_dir()


def test_an_empty_output_dir_stays_usable_after_a_failed_start(tmp_path, monkeypatch):
    from strata.training import run

    monkeypatch.setattr(run, "load_for_training", cannot_build)
    out = tmp_path / "empty"
    out.mkdir()
    assert run_strata("train", *FAST, "--max_steps", "2", "--output_dir", out) == 2
    assert out.is_dir() and list(out.iterdir()) == []


def test_latest_refuses_a_run_with_the_same_name_but_other_flags(tmp_path, capsys):
    runs = tmp_path / "runs"
    common = [*FAST, "--max_steps", "4", "--save_steps", "2", "--runs_dir", runs]
    assert run_strata("train", *common, "--seed", "3") == 0
    finished = only_run(runs)
    args_before = (finished / "args.json").read_text()
    capsys.readouterr()
    code = run_strata("train", *common, "--seed", "4", "--learning_rate", "1e-3",
                      "--resume_from_checkpoint", "latest")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1, err
    assert "other flags" in err[0] and "--seed 4 (that run: 3)" in err[0] and "--learning_rate" in err[0]
    assert (finished / "args.json").read_text() == args_before
    assert only_run(runs) == finished  # no new folder either
    # The same flags resume it.
    assert run_strata("train", *common, "--seed", "3", "--resume_from_checkpoint", "latest") == 0
    assert json.loads((finished / "args.json").read_text())["seed"] == 3


def test_same_minute_runs_get_distinct_folders_created_atomically(tmp_path):
    now = datetime(2026, 12, 1, 12, 0)
    first = new_run_folder(str(tmp_path), "key", now)
    second = new_run_folder(str(tmp_path), "key", now)
    assert first.root.is_dir() and second.root.is_dir() and first.root != second.root
    assert second.root.name == "2026-12-01_12h00m-2_key"


def test_a_folder_is_claimed_once(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.create(fresh=True)
    with pytest.raises(StrataError, match="claimed by another run"):
        folder.create(fresh=True)


def test_latest_checkpoint_is_transformers_last_checkpoint_unless_that_save_was_interrupted(tmp_path):
    from pathlib import Path

    from transformers.trainer_utils import get_last_checkpoint

    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    for step in (3, 6, 12):  # 12 sorts before 3 as text: the step decides
        (checkpoints / f"checkpoint-{step}").mkdir(parents=True)
        (checkpoints / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (checkpoints / "checkpoint-best").mkdir()  # not a step: neither takes it
    assert latest_checkpoint(run) == latest_checkpoint(checkpoints) == Path(get_last_checkpoint(str(checkpoints)))
    assert latest_checkpoint(run).name == "checkpoint-12"
    # a save killed while writing trainer_state.json: transformers still names it, strata passes over it
    (checkpoints / "checkpoint-12" / "trainer_state.json").write_text('{"global_st')
    assert Path(get_last_checkpoint(str(checkpoints))).name == "checkpoint-12"
    assert latest_checkpoint(run).name == "checkpoint-6"
