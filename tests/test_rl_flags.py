"""RL mode honours its flags: a KL reference for models built from a config, --data_seed, --num_train_epochs,
--hub_mirror for --reward_model, and a run name from the RL lengths. Tiny models, 8-token completions."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import grpo_args, metrics, only_run, run_strata

from strata.training.rl import build_grpo_trainer

GPT2_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")
# llama-tiny with a byte tokenizer: the fastest preset for GRPO on CPU. (Truncating every prompt of the
# whole synthetic set takes most of a run's time, so tests that need few prompts cap the rows too.)
RL_FAST = ["--mode", "rl", "--model", "llama-tiny", "--per_device_train_batch_size", "2",
           "--max_completion_length", "8", "--max_prompt_length", "64", "--max_eval_examples", "2",
           "--eval_steps", "0", "--precision", "fp32"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, hub_mirror) -> Path:
    """A hub-layout mirror with a config-only GPT-2 (like the shared mirror's gpt2, but 1x32) and a reward model."""
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    root = tmp_path_factory.mktemp("mirror")
    source = hub_mirror / "models" / "openai-community" / "gpt2"
    for name, config in (
        ("tiny-gpt2", GPT2Config(n_layer=1, n_embd=32, n_head=2, n_positions=128)),
        ("tiny-rm", GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=256, num_labels=1)),
    ):
        folder = root / "models" / "acme" / name
        folder.mkdir(parents=True)
        for file in GPT2_TOKENIZER_FILES:
            shutil.copy(source / file, folder / file)
        if name == "tiny-gpt2":
            config.save_pretrained(folder)  # no weights: only --init scratch can build it
        else:
            config.pad_token_id = config.eos_token_id
            torch.manual_seed(0)
            GPT2ForSequenceClassification(config).save_pretrained(folder)
            AutoTokenizer.from_pretrained(folder)  # loads, so a failure below is not the fixture's
    return root


def scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar, read from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


# ------------------------------------------------------------------------------------------- KL reference


def test_scratch_gpt2_from_a_config_only_mirror_folder_trains_with_kl(tmp_path, mirror):
    """The user's crash: TRL reloaded the reference from a folder without weights. The reference now equals
    the policy at step 1 (dropout off), so the first logged KL is 0; the second is finite."""
    runs = tmp_path / "runs"
    assert run_strata("train", *RL_FAST[:2], "--model", "acme/tiny-gpt2", "--init", "scratch", "--hub_mirror", mirror,
                      *RL_FAST[4:], "--dropout", "0", "--grpo_beta", "0.1", "--max_steps", "2", "--max_train_examples", "32",
                      "--logging_steps", "1", "--rl_learning_rate", "1e-2", "--rl_warmup_steps", "0",
                      "--runs_dir", runs) == 0
    run = only_run(runs)
    assert run.name.endswith("_tiny-gpt2_synthetic-strata_rl_bs2_len64+8")  # not len256 (--max_length)
    kl = dict(scalars(run, "train/kl"))
    assert sorted(kl) == [1, 2], kl
    assert abs(kl[1]) < 1e-6 and math.isfinite(kl[2]), kl
    assert (run / "final" / "model.safetensors").exists()


def _rows(n: int) -> Dataset:
    return Dataset.from_list([{"prompt": f"Review {i}: it was {'good' if i % 2 else 'bad'}.\nSentiment:",
                               "label": i % 2, "reference": ["negative", "positive"][i % 2]} for i in range(n)])


def _byte_gpt2(folder: Path):
    """A GPT-2 built from a config-only folder (so config._name_or_path names a folder without weights)."""
    from transformers import AutoConfig, ByT5Tokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = ByT5Tokenizer()
    GPT2Config(vocab_size=len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=128, resid_pdrop=0.0,
               embd_pdrop=0.0, attn_pdrop=0.0, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(folder)
    torch.manual_seed(0)
    return GPT2LMHeadModel(AutoConfig.from_pretrained(folder)), tokenizer


def byte_sum(completions, **_):
    """A reward that differs between completions (a random model's labels all score the same): non-zero
    advantages, so the policy really moves."""
    return [float(sum(map(ord, c)) % 7) for c in completions]


def _trainer(model, tokenizer, out: Path, rows: Dataset, **overrides):
    fields = dict(beta=0.1, num_generations=2, max_prompt_length=64, max_completion_length=8, learning_rate=1e-2,
                  warmup_steps=0, max_steps=2, per_device_train_batch_size=4, seed=0)
    return build_grpo_trainer(model, tokenizer, rows, None, grpo_args(out, **{**fields, **overrides}),
                              reward_funcs=[byte_sum])


def test_reference_is_a_frozen_copy_of_the_initial_policy(tmp_path):
    model, tokenizer = _byte_gpt2(tmp_path / "config-only")
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = _trainer(model, tokenizer, tmp_path / "out", _rows(8))
    trainer.train()
    reference = trainer.accelerator.unwrap_model(trainer.ref_model)
    assert reference is not model and not any(p.requires_grad for p in reference.parameters())
    ref_state = reference.state_dict()
    assert set(initial) <= set(ref_state)
    assert all(torch.equal(ref_state[k], initial[k]) for k in initial)  # untouched by two updates
    trained = model.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)  # ... while the policy moved
    kl = [e["kl"] for e in trainer.state.log_history if "kl" in e]
    assert len(kl) == 2 and abs(kl[0]) < 1e-6 and math.isfinite(kl[1]), kl


# ------------------------------------------------------------------------------------------- --data_seed


def test_data_seed_orders_the_prompts_and_seed_does_not(tmp_path):
    """The first generation batch is the rows a torch.randperm seeded with data_seed picks, whatever seed is."""
    rows = _rows(16)
    first: dict[tuple[int, int], list[str]] = {}
    for data_seed, seed in ((5, 0), (5, 7), (6, 0)):
        model, tokenizer = _byte_gpt2(tmp_path / f"m{data_seed}{seed}")
        trainer = _trainer(model, tokenizer, tmp_path / f"o{data_seed}{seed}", rows, seed=seed, data_seed=data_seed,
                           beta=0.0)
        batch = next(iter(trainer.get_train_dataloader()))
        first[data_seed, seed] = [row["prompt"] for row in batch]
    # batch 4 completions = 2 prompts x group 2; TRL's RepeatSampler: a seeded permutation, each index twice.
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(5)).tolist()
    expected = [rows[i]["prompt"] for i in order[:2] for _ in range(2)]
    assert first[5, 0] == expected
    assert first[5, 7] == expected
    assert first[6, 0] != expected


def test_data_seed_reaches_rl_through_the_cli(tmp_path):
    """One step, one prompt: the prompt of the logged samples depends on --data_seed and not on --seed."""
    prompts = {}
    for data_seed, seed in ((1, 1), (1, 2), (2, 1)):
        runs = tmp_path / f"d{data_seed}s{seed}"
        assert run_strata("train", *RL_FAST, "--grpo_beta", "0", "--max_steps", "1", "--data_seed", data_seed,
                          "--max_train_examples", "32",
                          "--seed", seed, "--runs_dir", runs) == 0
        prompts[data_seed, seed] = {s["prompt"] for s in metrics(only_run(runs))["samples"]}
        assert len(prompts[data_seed, seed]) == 1
    assert prompts[1, 1] == prompts[1, 2]
    assert prompts[1, 1] != prompts[2, 1]


# ------------------------------------------------------------------------------------------- --num_train_epochs


def test_num_train_epochs_sets_the_steps_when_max_steps_is_minus_one(tmp_path):
    """5 prompts, 4 completions a step in groups of 2 = 2 prompts a step: floor(5 / 2) = 2 steps an epoch, so
    2 epochs are 4 optimizer steps (TRL's default of 3 epochs would give 6)."""
    runs = tmp_path / "runs"
    assert run_strata("train", *RL_FAST, "--per_device_train_batch_size", "4", "--grpo_group_size", "2",
                      "--grpo_beta", "0", "--max_train_examples", "5", "--max_steps", "-1",
                      "--num_train_epochs", "2", "--logging_steps", "1", "--runs_dir", runs) == 0
    steps = [step for step, _ in scalars(only_run(runs), "train/reward")]
    assert steps == [1, 2, 3, 4], steps


# ------------------------------------------------------------------------------------------- --reward_model


def test_reward_model_resolves_through_hub_mirror(tmp_path, mirror):
    runs = tmp_path / "runs"
    assert run_strata("train", *RL_FAST, "--grpo_beta", "0", "--max_steps", "1", "--hub_mirror", mirror,
                      "--reward_model", "acme/tiny-rm", "--max_train_examples", "32", "--runs_dir", runs) == 0
    result = metrics(only_run(runs))
    assert result["rewards"]["reward_model"] == "acme/tiny-rm"
    assert "rewards/tiny-rm/mean" in result["rl"], sorted(result["rl"])
    assert json.loads((only_run(runs) / "args.json").read_text())["hub_mirror"] == str(mirror)


def test_missing_reward_model_names_the_mirror_it_tried(tmp_path, mirror, capsys):
    runs = tmp_path / "runs"
    assert run_strata("train", *RL_FAST, "--max_steps", "1", "--hub_mirror", mirror,
                      "--reward_model", "acme/no-such-rm", "--max_train_examples", "32",
                      "--runs_dir", runs) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--reward_model" in err[0], err
    assert str(mirror / "models" / "acme" / "no-such-rm") in err[0], err
    assert not runs.exists() or not any(runs.iterdir())
