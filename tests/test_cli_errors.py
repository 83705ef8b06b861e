"""Bad input: one clear line naming the problem and the fix, exit code 2, nothing overwritten."""

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


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--datasets", "imdb", "glue", "--dataset_configs", "None", "sst2", "--mixture_rates", "0.7"],
         "rates"),
        (["--datasets", "imdb", "glue", "--dataset_configs", "None", "sst2", "--mixture_rates", "0.7", "0.2"],
         "sum"),
        (["--datasets", "imdb", "glue", "--dataset_configs", "None", "sst2", "--mixture_rates", "1.2", "-0.2"],
         "positive"),
        (["--datasets", "imdb", "glue", "--mixture_rates", "0.5", "0.5", "--dataset_configs", "sst2"],
         "config"),
        (["--mixture_rates", "1.0"], "--datasets"),
    ],
)
def test_bad_mixture_arguments_fail_with_one_line(capsys, args, expected):
    line = _one_line_error(capsys, "train", *args)
    assert expected in line


def test_unknown_dataset_names_the_fix(capsys):
    line = _one_line_error(capsys, "train", "--dataset", "no-such-dataset-xyz", *FAST)
    assert "no-such-dataset-xyz" in line


def test_impossible_device_fails_before_loading(capsys):
    line = _one_line_error(capsys, "train", "--device", "cuda")
    assert "cuda" in line and "--device cpu" in line


def test_flash_attention_without_cuda_is_refused(capsys):
    line = _one_line_error(capsys, "train", "--use_flash_attention", "--device", "cpu")
    assert "flash_attention_2" in line


def test_quantization_without_cuda_is_refused(capsys):
    line = _one_line_error(capsys, "train", "--load_in_4bit", "--device", "cpu")
    assert "CUDA" in line


def test_fp16_on_cpu_is_refused(capsys):
    line = _one_line_error(capsys, "train", "--precision", "fp16", "--device", "cpu")
    assert "fp16" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["--nan_policy", "ignore"], "--nan_policy 'ignore' is not one of stop, skip_step"),
    (["--nan_policy", "skip_step", "--nan_skip_limit", "0"], "--nan_skip_limit 0 must be at least 1"),
])
def test_bad_nan_policy_flags_are_refused(capsys, tmp_path, args, expected):
    line = _one_line_error(capsys, "train", *args, "--runs_dir", str(tmp_path / "runs"))
    assert expected in line
    assert not (tmp_path / "runs").exists()


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
    json_config.write_text('{"mode": "pretrain", "reward_funcs": ["math_answer,format"]}')
    parsed = parse_run_config(["--config", str(json_config)])
    assert parsed.train.mode == "pretrain"
    assert parsed.train.reward_funcs == ["math_answer", "format"]


def test_train_py_takes_exactly_the_flags_of_strata_train(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    out = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], capture_output=True, text=True,
                         check=True).stdout
    flags = {tok.split("=")[0] for tok in out.split() if tok.startswith("--")}
    from strata.config import build_parser

    expected = {opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")}
    assert expected <= flags
    with pytest.raises(StrataError, match="--mode"):
        parse_run_config(["--mode", "bogus"])


def test_readme_documents_every_train_flag():
    from conftest import REPO_ROOT

    from strata.config import build_parser

    readme = (REPO_ROOT / "README.md").read_text()
    flags = {opt for action in build_parser()._actions for opt in action.option_strings
             if opt.startswith("--") and "-" not in opt[2:] and opt != "--help"}
    missing = sorted(flag for flag in flags if not any(f"{c}{flag}" in readme for c in "` /"))
    assert not missing, missing


def test_lora_rank_zero_is_refused_before_anything_is_made(capsys, tmp_path):
    line = _one_line_error(capsys, "train", *FAST, "--use_lora", "--lora_r", "0", "--runs_dir", str(tmp_path / "r"))
    assert "--lora_r 0 must be a positive rank" in line
    assert not (tmp_path / "r").exists()
