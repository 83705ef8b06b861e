"""Bad input beyond the table in test_bad_inputs.py: cases that need a model folder or check more than the line."""

from __future__ import annotations

import pytest
from helpers import FAST, run_strata

from strata.config import parse_run_config
from strata.errors import StrataError


def _one_line_error(capsys, *args: str) -> str:
    code = run_strata(*args)
    captured = capsys.readouterr()
    assert code == 2
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in captured.err
    return lines[0]


def test_existing_output_dir_is_not_reused(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{\"keep\": true}")
    line = _one_line_error(capsys, "train", "--output_dir", str(out), *FAST)
    assert "already holds a run" in line
    assert (out / "metrics.json").read_text() == "{\"keep\": true}"


def test_encoder_only_model_is_refused_with_the_reason(capsys, tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               vocab_size=384).save_pretrained(tmp_path / "bert")
    line = _one_line_error(capsys, "train", "--model", str(tmp_path / "bert"), "--init", "scratch",
                           "--runs_dir", str(tmp_path / "runs"), "--max_steps", "1", "--max_eval_examples", "4")
    assert "encoder-only" in line and "decoder" in line


def test_config_without_weights_says_use_scratch(capsys, tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=384, bos_token_id=1, eos_token_id=1).save_pretrained(tmp_path / "gpt")
    line = _one_line_error(capsys, "train", "--model", str(tmp_path / "gpt"), "--init", "pretrained",
                           "--runs_dir", str(tmp_path / "runs"), "--max_steps", "1", "--max_eval_examples", "4")
    assert "--init scratch" in line


def test_unknown_key_in_config_file(capsys, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.001\nlr_typo: 3\n")
    line = _one_line_error(capsys, "train", "--config", str(config))
    assert "lr_typo" in line


def test_config_file_values_and_command_line_precedence(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.0005\nmax_steps: 50\ndataset: glue\ndataset_config: sst2\n"
                      "use_packing: true\n")
    parsed = parse_run_config(["--config", str(config), "--max_steps", "7"])
    assert parsed.train.learning_rate == pytest.approx(5e-4)
    assert parsed.train.max_steps == 7  # the command line wins
    assert parsed.data.dataset == "glue" and parsed.data.dataset_config == "sst2"
    assert parsed.data.use_packing is True
    json_config = tmp_path / "run.json"
    json_config.write_text('{"mode": "rl", "reward_funcs": ["math_answer,format"]}')
    parsed = parse_run_config(["--config", str(json_config)])
    assert parsed.train.mode == "rl"
    assert parsed.train.reward_funcs == ["math_answer", "format"]


def test_train_py_takes_exactly_the_flags_of_strata_train(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    out = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    flags = {tok.split("=")[0].rstrip(",") for tok in out.split() if tok.startswith("--")}
    from strata.config import build_parser

    expected = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    assert expected <= flags
    with pytest.raises(StrataError, match="--mode"):
        parse_run_config(["--mode", "bogus"])


def test_readme_documents_every_train_flag():
    import dataclasses

    from conftest import REPO_ROOT

    from strata.config import build_parser
    from strata.training.arguments import StrataArgumentsMixin, native_fields

    # Strata's flags and the TrainingArguments/GRPOConfig fields it redefines; the others pass through untouched
    # and are documented by transformers and TRL (the README and docs/flags.md say so).
    redefined = {f.name for f in dataclasses.fields(StrataArgumentsMixin)}
    library = (native_fields("sft") | native_fields("rl")) - redefined
    readme = (REPO_ROOT / "README.md").read_text()
    flags = {opt for mode in ("sft", "rl") for action in build_parser(mode=mode)._actions
             for opt in action.option_strings
             if opt.startswith("--") and "-" not in opt[2:] and opt != "--help" and opt[2:] not in library
             and not (opt.startswith("--no_") and opt[5:] in library | redefined)}
    missing = sorted(flag for flag in flags if not any(f"{c}{flag}" in readme for c in "` /"))
    assert not missing, missing

