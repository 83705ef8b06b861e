"""Task metrics (label-likelihood accuracy ...) drive early stopping and best-model selection.

They are computed inside Trainer.evaluate, so EarlyStoppingCallback, the single evaluation log entry,
TensorBoard and load_best_model_at_end all see ``eval_accuracy`` (and a mixture's per-source names).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import HUB_MIRROR
from helpers import FAST, final_weights, max_weight_diff, only_run, run_events, run_strata


def _last_state(run: Path) -> dict:
    last = max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return json.loads((last / "trainer_state.json").read_text())


def _eval_entries(state: dict, metric: str) -> list[dict]:
    return [entry for entry in state["log_history"] if metric in entry]


def test_early_stopping_on_eval_accuracy(tmp_path):
    runs = tmp_path / "runs"
    # Learning rate 0: every evaluation scores the same accuracy, so patience 1 stops after the 2nd one
    # (step 4). Without eval_accuracy in on_evaluate's metrics the run goes on to step 12. --eval_loss asks
    # for the token-loss pass too (by default task metrics replace it).
    assert run_strata("train", *FAST, "--max_steps", "12", "--eval_steps", "2", "--save_steps", "2",
                      "--metric_for_best_model", "eval_accuracy", "--early_stopping_patience", "1",
                      "--learning_rate", "0", "--max_eval_examples", "8", "--eval_loss", "--runs_dir", runs) == 0
    run = only_run(runs)
    state = _last_state(run)
    assert state["global_step"] == 4, state["global_step"]
    evals = _eval_entries(state, "eval_accuracy")
    assert [e["step"] for e in evals] == [2, 4]
    assert evals[0]["eval_accuracy"] == evals[1]["eval_accuracy"]
    # One log entry per evaluation, holding the loss and the task metrics together.
    assert all("eval_loss" in e and "eval_macro_f1" in e for e in evals)
    assert len(_eval_entries(state, "eval_loss")) == 2
    # TensorBoard: each evaluation written once (steps 2, 4, and the final evaluation at step 4).
    events = run_events(run)
    assert [e.step for e in events.Scalars("eval/accuracy")] == [2, 4, 4]
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4, 4]


def test_load_best_model_at_end_restores_the_most_accurate_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    # A large learning rate makes the 16-example accuracy move between evaluations.
    assert run_strata("train", *FAST, "--max_steps", "10", "--eval_steps", "2", "--save_steps", "2",
                      "--save_total_limit", "10", "--load_best_model_at_end", "--metric_for_best_model",
                      "eval_accuracy", "--learning_rate", "3e-2", "--max_eval_examples", "16",
                      "--runs_dir", runs) == 0
    run = only_run(runs)
    state = _last_state(run)
    evals = _eval_entries(state, "eval_accuracy")
    assert [e["step"] for e in evals] == [2, 4, 6, 8, 10]
    assert not _eval_entries(state, "eval_loss")  # task metrics, not asked for the loss: no token-loss pass
    # Independently of Trainer's bookkeeping: the first evaluation with the highest logged accuracy.
    best = max(evals, key=lambda e: e["eval_accuracy"])
    assert Path(state["best_model_checkpoint"]).name == f"checkpoint-{best['step']}"
    final = final_weights(run)
    assert max_weight_diff(final, final_weights(run / "checkpoints", f"checkpoint-{best['step']}")) == 0.0
    if best["step"] != 10:
        assert max_weight_diff(final, final_weights(run / "checkpoints", "checkpoint-10")) > 0.0
    # The final evaluation scores the restored model: the best logged accuracy again.
    assert json.loads((run / "metrics.json").read_text())["eval"]["eval_accuracy"] == best["eval_accuracy"]


def test_mixture_source_metric_drives_early_stopping(tmp_path, hub_mirror):
    runs = tmp_path / "runs"
    metric = "eval_glue-sst2/accuracy"
    assert run_strata("train", *FAST, "--datasets", "glue", "rotten_tomatoes", "--dataset_configs", "sst2", "none",
                      "--mixture_rates", "0.5", "0.5", "--train_splits", "train[:200]", "train[:200]",
                      "--max_steps", "12", "--eval_steps", "2", "--save_steps", "2",
                      "--metric_for_best_model", metric, "--early_stopping_patience", "1",
                      "--learning_rate", "0", "--runs_dir", runs) == 0
    state = _last_state(only_run(runs))
    assert state["global_step"] == 4, state["global_step"]
    evals = _eval_entries(state, metric)
    assert [e["step"] for e in evals] == [2, 4]
    for entry in evals:  # per-source names and their unweighted mean; no token-loss pass unless asked
        per_source = [entry["eval_glue-sst2/accuracy"], entry["eval_rotten-tomatoes-sentiment/accuracy"]]
        assert entry["eval_accuracy"] == sum(per_source) / 2 and "eval_loss" not in entry


def test_evaluate_without_a_token_level_eval_set_still_reaches_callbacks(tmp_path):
    """No eval_dataset (only task sources): the task metrics are logged once and on_evaluate sees them."""
    import datasets
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, TrainerCallback, TrainingArguments

    from strata.evaluation import evaluate_dataset
    from strata.training.trainer import StrataTrainer

    gpt2_dir = HUB_MIRROR / "models" / "openai-community" / "gpt2"
    if not gpt2_dir.is_dir():
        pytest.skip(f"GPT-2 tokenizer files not at {gpt2_dir}")
    tokenizer = AutoTokenizer.from_pretrained(str(gpt2_dir))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, n_positions=64, vocab_size=len(tokenizer),
                                       initializer_range=0.2))
    rows = datasets.Dataset.from_dict({
        "prompt": ["the film was great. Sentiment:", "awful and dull. Sentiment:", "a fine movie. Sentiment:"],
        "completion": [" positive", " negative", " positive"], "label": [1, 0, 1]})
    seen: list[dict] = []

    class Record(TrainerCallback):
        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            seen.append(dict(metrics))

    spec = {"name": "toy", "dataset": rows, "family": "classification", "label_words": ["negative", "positive"],
            "method": "loglik", "batch_size": 2, "max_length": 32, "max_examples": None}
    trainer = StrataTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]),
                            processing_class=tokenizer, callbacks=[Record()], task_eval=[spec])
    returned = trainer.evaluate()
    reference = evaluate_dataset(model.eval(), tokenizer, rows, "classification", ["negative", "positive"],
                                 batch_size=2, max_length=32)
    assert returned["eval_accuracy"] == reference["accuracy"]
    assert seen == [returned]
    assert [e for e in trainer.state.log_history if "eval_accuracy" in e] == [{**returned, "step": 0}]
