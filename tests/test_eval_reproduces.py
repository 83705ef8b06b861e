"""`strata eval RUN` scores the examples training scored, so its numbers are the run's final ones.

The reference is metrics.json, written by the training process itself; `strata eval` is a second code
path (a fresh model load from final/, its own data loading from args.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import FAST, metrics, only_run, run_strata

# Loss-side or timing entries of metrics.json's eval: not task metrics, `strata eval` does not compute them.
NOT_TASK = ("eval_loss", "eval_perplexity", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
            "epoch")


def _task_metrics(run: Path) -> dict[str, float]:
    return {k: v for k, v in metrics(run)["eval"].items() if k not in NOT_TASK and k != "num_input_tokens_seen"}


def _strata_eval(run: Path, capsys, *flags: str) -> dict:
    capsys.readouterr()
    assert run_strata("eval", run, *flags) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_reproduces_a_run_with_its_own_data_seed(tmp_path, capsys):
    runs = tmp_path / "runs"
    # --data_seed picks the 30-example eval subset; --seed (init) differs; a batch size of 5 pads differently
    # from strata eval's own default.
    assert run_strata("train", *FAST, "--max_steps", "6", "--seed", "3", "--data_seed", "11",
                      "--per_device_eval_batch_size", "5", "--max_eval_examples", "30", "--runs_dir", runs) == 0
    run = only_run(runs)
    expected = _task_metrics(run)
    printed = _strata_eval(run, capsys)
    assert {f"eval_{k}": v for k, v in printed.items() if f"eval_{k}" in expected} == expected
    written = json.loads(next(run.glob("eval_*.json")).read_text())
    assert written["task_eval"] == metrics(run)["task_eval"]  # every nested number, counts and per-label ones
    assert written["args"]["seed"] == 11 and written["args"]["batch_size"] == 5
    # An explicit flag still wins (a different evaluation, on purpose).
    other = _strata_eval(run, capsys, "--max_eval_examples", "5", "--output", str(tmp_path / "other.json"))
    assert other["n"] == 5


def test_eval_reproduces_every_source_of_a_mixture(tmp_path, capsys, hub_mirror):
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--datasets", "glue", "rotten_tomatoes", "--dataset_configs", "sst2", "none",
                      "--mixture_rates", "0.5", "0.5", "--train_splits", "train[:200]", "train[:200]",
                      "--max_steps", "4", "--data_seed", "5", "--max_eval_examples", "12", "--runs_dir", runs) == 0
    run = only_run(runs)
    expected = _task_metrics(run)
    assert "eval_glue-sst2/accuracy" in expected and "eval_rotten-tomatoes-sentiment/accuracy" in expected
    printed = _strata_eval(run, capsys)
    assert {f"eval_{k}": v for k, v in printed.items() if f"eval_{k}" in expected} == expected
    written = json.loads(next(run.glob("eval_*.json")).read_text())
    assert written["task_eval"] == metrics(run)["task_eval"]
    assert {name: m["n"] for name, m in written["task_eval"].items()} == {"glue-sst2": 6, "rotten-tomatoes-sentiment": 6}
