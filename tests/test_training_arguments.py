"""One configuration: the parsed TrainingArguments/GRPOConfig is what the trainer receives.

Fields strata never mentions reach the trainer (checked against what transformers builds from them: the
optimizer class and its param-group betas), derived fields are refused in one line, and RL honours the
same --data_seed / --num_train_epochs as sft.
"""

from __future__ import annotations

import pytest
from helpers import FAST, only_run, run_strata

from strata.config import parse_run_config
from strata.errors import StrataError
from strata.training import run as run_module
from strata.training.arguments import DERIVED, StrataGRPOConfig, StrataTrainingArguments


def _keep_trainer(monkeypatch) -> list:
    kept: list = []
    original = run_module.build_trainer

    def spy(*args, **kwargs):
        trainer = original(*args, **kwargs)
        kept.append(trainer)
        return trainer

    monkeypatch.setattr(run_module, "build_trainer", spy)
    return kept


@pytest.mark.parametrize("optim, betas_flag, expected_class", [
    ("adafactor", [], "Adafactor"),
    ("adamw_torch", ["--adam_beta2", "0.95", "--adam_beta1", "0.8"], "AdamW"),
])
def test_training_arguments_strata_never_mentions_reach_the_optimizer(tmp_path, monkeypatch, optim, betas_flag,
                                                                      expected_class):
    """--optim / --adam_beta* are plain TrainingArguments fields: transformers builds the optimizer they name."""
    import torch
    from transformers.optimization import Adafactor

    kept = _keep_trainer(monkeypatch)
    config = tmp_path / "run.yaml"
    config.write_text("gradient_accumulation_steps: 2\n")  # from --config too
    assert run_strata("train", *FAST, "--max_steps", "1", "--optim", optim, *betas_flag, "--config", config,
                      "--runs_dir", tmp_path / "runs") == 0
    (trainer,) = kept
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert type(optimizer) is {"Adafactor": Adafactor, "AdamW": torch.optim.AdamW}[expected_class]
    assert trainer.args.gradient_accumulation_steps == 2 and trainer.state.global_step == 1
    if betas_flag:
        assert optimizer.param_groups[0]["betas"] == (0.8, 0.95)
    assert trainer.args.output_dir == str(only_run(tmp_path / "runs") / "checkpoints")  # derived


@pytest.mark.parametrize("flag", sorted(DERIVED))
def test_a_derived_field_is_refused_naming_the_strata_flag(flag, tmp_path):
    with pytest.raises(StrataError, match=f"--{flag} is set by strata itself; "):
        parse_run_config([f"--{flag}", "no" if flag.endswith("strategy") else "x"])
    config = tmp_path / "run.yaml"
    config.write_text(f"{flag}: true\n")
    with pytest.raises(StrataError, match=f"--{flag} is set by strata itself"):
        parse_run_config(["--config", str(config)])


@pytest.mark.parametrize("flag", ["fsdp", "deepspeed", "push_to_hub", "project"])
def test_a_field_strata_would_not_honour_is_refused(flag, tmp_path, capsys):
    # FSDP/DeepSpeed would save one rank's shard as final/, a hub push would upload checkpoints/: refused
    value = {"fsdp": "full_shard", "deepspeed": "ds.json", "push_to_hub": "true", "project": "p"}[flag]
    assert run_strata("train", f"--{flag}", value, "--runs_dir", tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--{flag} is not wired into strata train; " in err[0], err
    assert not (tmp_path / "runs").exists()
    config = tmp_path / "run.yaml"
    config.write_text(f"{flag}: {value}\n")
    with pytest.raises(StrataError, match=f"--{flag} is not wired into strata train"):
        parse_run_config(["--config", str(config)])


def test_derived_refusals_exit_2_and_create_nothing(tmp_path, capsys):
    assert run_strata("train", "--report_to", "wandb", "--runs_dir", tmp_path / "runs") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--report_to is set by strata itself" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_each_mode_parses_into_its_library_class_with_strata_defaults():
    sft = parse_run_config([]).train
    rl = parse_run_config(["--mode", "rl"]).train
    assert type(sft) is StrataTrainingArguments and type(rl) is StrataGRPOConfig
    assert (sft.max_steps, sft.warmup_steps, sft.lr_scheduler_type, sft.learning_rate) == (600, 20, "cosine", None)
    assert (rl.learning_rate, rl.warmup_steps, rl.beta, rl.num_generations) == (1e-6, 100, 0.1, 2)
    assert rl.gradient_checkpointing is None  # TRL's default (True) does not leak in: --gradient_checkpointing decides


def test_older_rl_names_and_native_names_are_one_field(tmp_path):
    native = parse_run_config(["--mode", "rl", "--beta", "0.3", "--num_generations", "4"]).train
    older = parse_run_config(["--mode", "rl", "--grpo_beta", "0.3", "--grpo_group_size", "4"]).train
    assert (native.beta, native.num_generations) == (older.beta, older.num_generations) == (0.3, 4)
    config = tmp_path / "run.yaml"
    config.write_text("mode: rl\ngrpo_beta: 0.2\nrl_warmup_steps: 5\n")
    parsed = parse_run_config(["--config", str(config)]).train
    assert (parsed.beta, parsed.warmup_steps) == (0.2, 5)
    with pytest.raises(StrataError, match="--rl_learning_rate 0.1 conflicts with --learning_rate 0.2"):
        parse_run_config(["--mode", "rl", "--rl_learning_rate", "0.1", "--learning_rate", "0.2"])
    config.write_text("mode: rl\ngrpo_beta: 0.2\nbeta: 0.1\n")
    with pytest.raises(StrataError, match="grpo_beta 0.2 conflicts with beta 0.1"):
        parse_run_config(["--config", str(config)])


def test_a_bad_value_of_a_pass_through_field_is_one_line():
    with pytest.raises(StrataError, match="--optim"):
        parse_run_config(["--optim", "no_such_optimizer"])
    with pytest.raises(StrataError, match="--lr_scheduler_type 'wavy' is not one of"):
        parse_run_config(["--lr_scheduler_type", "wavy"])


def test_rl_receives_the_parsed_grpo_config_with_fields_strata_never_mentions(tmp_path, monkeypatch):
    """--optim and GRPOConfig's --epsilon reach GRPOTrainer: its optimizer is transformers' Adafactor and TRL's
    clipping bound is the value given; --output_dir-derived checkpoints folder and no TRL bf16 default."""
    from transformers.optimization import Adafactor

    from strata.training import rl as rl_module

    kept: list = []
    original = rl_module.build_grpo_trainer

    def spy(*args, **kwargs):
        kept.append(original(*args, **kwargs))
        return kept[-1]

    monkeypatch.setattr(rl_module, "build_grpo_trainer", spy)
    assert run_strata("train", "--mode", "rl", "--model", "llama-tiny", "--per_device_train_batch_size", "2",
                      "--max_completion_length", "8", "--max_prompt_length", "32", "--max_eval_examples", "2",
                      "--eval_steps", "0", "--precision", "fp32", "--max_steps", "1", "--max_train_examples", "8",
                      "--beta", "0", "--optim", "adafactor", "--epsilon", "0.3", "--runs_dir", tmp_path / "runs") == 0
    (trainer,) = kept
    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert type(optimizer) is Adafactor
    assert trainer.epsilon_low == 0.3 and trainer.args.beta == 0.0  # TRL's own attribute, set from args.epsilon
    assert not trainer.args.bf16 and trainer.args.output_dir.endswith("/checkpoints")


def test_hub_token_is_not_written_to_args_json():
    record = parse_run_config(["--hub_token", "hf_secret"]).to_dict()
    assert record["hub_token"] == "<HUB_TOKEN>"
