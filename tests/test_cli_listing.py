"""`strata datasets`, `strata datasets show`, `strata models`: what users read before they train."""

from __future__ import annotations

from helpers import run_strata

from strata.data.registry import REGISTRY


def test_datasets_lists_every_registered_dataset(capsys):
    assert run_strata("datasets") == 0
    out = capsys.readouterr().out
    for spec in REGISTRY.values():
        assert spec.id in out, spec.id
    for hub_id in ("stanfordnlp/imdb", "nyu-mll/glue", "openai/gsm8k", "karpathy/tiny_shakespeare",
                   "bigcode/bigcodebench", "AdaptLLM/finance-tasks", "strata/synthetic-strata"):
        assert hub_id in out


def test_datasets_show_prints_a_real_formatted_example(capsys, hub_mirror):
    assert run_strata("datasets", "show", "glue", "--dataset_config", "sst2") == 0
    out = capsys.readouterr().out
    assert "Sentiment:" in out
    assert "positive" in out and "negative" in out


def test_models_lists_presets_with_exact_parameter_counts(capsys):
    from transformers import AutoModelForCausalLM

    from strata.models.presets import get_preset

    assert run_strata("models") == 0
    out = capsys.readouterr().out
    expected = AutoModelForCausalLM.from_config(get_preset("llama-tiny").make_config(384)).num_parameters()
    line = next(line for line in out.splitlines() if line.startswith("llama-tiny "))
    assert f"{expected / 1e6:.2f}M" in line
    for name in ("strata-tiny", "gpt2-124m", "gpt2-355m", "mixtral-tiny", "t5-tiny", "ttt-linear-125m",
                 "ttt-mlp-125m", "stratified-routing-tiny"):
        assert name in out


def test_no_preset_shadows_a_hub_model_name():
    """`--model gpt2-medium` (a seed command line) means the hub's pretrained model; a preset of that name
    would silently train random weights instead."""
    from strata.hub import MODEL_ALIASES
    from strata.models.presets import all_presets

    hub_names = set(MODEL_ALIASES) | set(MODEL_ALIASES.values())
    assert not hub_names & set(all_presets())
