"""A non-finite loss never reaches the weights and never passes silently (--nan_policy stop|skip_step)."""

from __future__ import annotations

import torch
from helpers import FAST, final_weights, max_weight_diff, metrics, only_run, run_strata
from safetensors.torch import load_file

from strata.training.trainer import StrataTrainer


def poison_steps(monkeypatch, steps) -> None:
    """Multiply the training loss by NaN at the given optimizer steps (1-based): a divergence on cue."""
    original = StrataTrainer.compute_loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = original(self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        if not (model.training and self.state.global_step + 1 in steps):
            return result
        nan = torch.tensor(float("nan"))
        return (result[0] * nan, result[1]) if return_outputs else result * nan

    monkeypatch.setattr(StrataTrainer, "compute_loss", compute_loss)


def checkpoint_steps(run) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run / "checkpoints").glob("checkpoint-*"))


def all_finite(path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in load_file(str(path / "model.safetensors")).values())


def last_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return lines[-1]


def test_stop_policy_ends_the_run_at_the_first_nan_and_keeps_only_finite_checkpoints(monkeypatch, tmp_path,
                                                                                       capsys):
    poison_steps(monkeypatch, {4})
    runs = tmp_path / "runs"
    code = run_strata("train", *FAST, "--max_steps", "8", "--save_steps", "1", "--save_total_limit", "20",
                      "--runs_dir", runs)
    line = last_error_line(capsys)
    assert code == 1
    assert line.startswith("error: training diverged at step 4 (non-finite loss)"), line
    assert "checkpoint-3" in line and "--nan_policy skip_step" in line
    run = only_run(runs)
    result = metrics(run)
    assert result["status"] == "diverged" and result["diverged_at_step"] == 4
    assert result["last_checkpoint"].endswith("checkpoint-3")
    assert checkpoint_steps(run) == [1, 2, 3]
    assert all(all_finite(run / "checkpoints" / f"checkpoint-{s}") for s in (1, 2, 3))
    assert not (run / "final").exists()


def test_a_real_divergence_is_caught(tmp_path, capsys):
    # The default model at learning rate 1e4: without the guard this run exits 0 with NaN weights in
    # final/ and finite-looking metrics (its gradient norm is NaN from about step 3 on).
    runs = tmp_path / "runs"
    code = run_strata("train", "--learning_rate", "1e4", "--max_steps", "30", "--eval_steps", "0",
                      "--max_eval_examples", "16", "--save_steps", "1", "--save_total_limit", "40",
                      "--precision", "fp32", "--runs_dir", runs)
    assert code == 1, last_error_line(capsys)
    run = only_run(runs)
    result = metrics(run)
    assert result["status"] == "diverged"
    kept = checkpoint_steps(run)
    assert kept == list(range(1, result["diverged_at_step"]))
    assert all(all_finite(run / "checkpoints" / f"checkpoint-{s}") for s in kept)
    assert not (run / "final").exists()


def test_skip_step_drops_exactly_the_poisoned_update(monkeypatch, tmp_path):
    # Reference computed another way: with learning rate 0 no update is applied at all. One poisoned step
    # under skip_step must leave the weights exactly where that run leaves them (the initial weights).
    args = [*FAST, "--max_steps", "1", "--warmup_steps", "0"]
    assert run_strata("train", *args, "--learning_rate", "0", "--runs_dir", tmp_path / "lr0") == 0
    poison_steps(monkeypatch, {1})
    assert run_strata("train", *args, "--nan_policy", "skip_step", "--runs_dir", tmp_path / "skip") == 0
    skip_run = only_run(tmp_path / "skip")
    assert max_weight_diff(final_weights(skip_run), final_weights(only_run(tmp_path / "lr0"))) == 0.0
    result = metrics(skip_run)
    assert result["status"] == "completed" and result["nonfinite_skips"] == 1


def test_skip_step_goes_on_and_counts(monkeypatch, tmp_path):
    poison_steps(monkeypatch, {3, 5})
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "8", "--nan_policy", "skip_step", "--runs_dir", runs) == 0
    run = only_run(runs)
    result = metrics(run)
    assert result["status"] == "completed" and result["nonfinite_skips"] == 2
    assert all_finite(run / "final")


def test_skip_step_stops_after_the_limit_in_a_row(monkeypatch, tmp_path, capsys):
    poison_steps(monkeypatch, set(range(3, 11)))
    runs = tmp_path / "runs"
    code = run_strata("train", *FAST, "--max_steps", "10", "--nan_policy", "skip_step", "--nan_skip_limit", "3",
                      "--runs_dir", runs)
    line = last_error_line(capsys)
    assert code == 1
    assert line.startswith("error: training diverged at step 5 (non-finite loss (3 steps in a row))"), line
    result = metrics(only_run(runs))
    assert result["diverged_at_step"] == 5 and result["nonfinite_skips"] == 2
    assert not (only_run(runs) / "final").exists()


def poison_second_step(monkeypatch, trainer_class) -> None:
    """``trainer_class.compute_loss`` returns NaN at optimizer step 2 (a recipe's own trainer class)."""
    original = trainer_class.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        return loss * torch.tensor(float("nan")) if self.state.global_step + 1 == 2 else loss

    monkeypatch.setattr(trainer_class, "compute_loss", compute_loss)


def test_rl_mode_is_guarded_too(monkeypatch, tmp_path, capsys):
    from trl import GRPOTrainer

    poison_second_step(monkeypatch, GRPOTrainer)
    runs = tmp_path / "runs"
    code = run_strata("train", "--mode", "rl", "--model", "llama-tiny", "--max_steps", "4",
                      "--per_device_train_batch_size", "2", "--max_completion_length", "8",
                      "--max_eval_examples", "2", "--eval_steps", "0", "--precision", "fp32", "--runs_dir", runs)
    line = last_error_line(capsys)
    assert code == 1 and line.startswith("error: training diverged at step 2"), line
    assert metrics(only_run(runs))["status"] == "diverged"
    assert not (only_run(runs) / "final").exists()


def _guard_step(guard, fp16: bool, loss: float):
    from types import SimpleNamespace

    from transformers import TrainerControl, TrainerState

    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.full_like(model.weight, float("inf"))
    guard.observe_loss(torch.tensor(loss))
    control = guard.on_pre_optimizer_step(SimpleNamespace(fp16=fp16), TrainerState(), TrainerControl(), model=model)
    return control, model


def test_fp16_leaves_inf_gradients_to_the_loss_scaler():
    from strata.training.guards import NonFiniteGuard

    guard = NonFiniteGuard()
    control, model = _guard_step(guard, fp16=True, loss=1.0)
    assert guard.divergence is None and not control.should_training_stop
    assert model.weight.grad is not None  # the scaler, not the guard, decides about this step
    control, _ = _guard_step(guard, fp16=False, loss=1.0)
    assert guard.divergence is not None and control.should_training_stop
    fp16_nan_loss = NonFiniteGuard()
    _guard_step(fp16_nan_loss, fp16=True, loss=float("nan"))
    assert fp16_nan_loss.divergence is not None


def test_the_vision_path_is_guarded_too(monkeypatch, tmp_path, capsys):
    from pathlib import Path

    from transformers import Trainer

    poison_second_step(monkeypatch, Trainer)  # the vision recipe runs transformers' Trainer itself
    runs = tmp_path / "runs"
    code = run_strata("train", "--dataset", "sujet-ai/Sujet-Finance-QA-Vision-100k", "--model", "llava-tiny",
                      "--max_steps", "3", "--hub_mirror", Path(__file__).parent / "fixtures", "--runs_dir", runs,
                      "--per_device_train_batch_size", "2", "--eval_steps", "0", "--precision", "fp32")
    line = last_error_line(capsys)
    assert code == 1 and "step 2" in line, line
    run = only_run(runs)
    assert metrics(run)["status"] == "diverged" and metrics(run)["diverged_at_step"] == 2
    assert not (run / "final").exists()
