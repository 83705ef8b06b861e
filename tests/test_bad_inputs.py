"""Every bad input: exit code 2, one stderr line that names the problem and its fix, no traceback, and
nothing created or changed on disk (the whole working area is compared before and after)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import FAST

from strata.cli import main


def make_inputs(root: Path) -> None:
    """The files the bad inputs point at (under root/in), and a finished run folder (root/out)."""
    inputs = root / "in"
    inputs.mkdir()
    (inputs / "empty.jsonl").write_text("")
    (inputs / "malformed.jsonl").write_text('{"text": "fine", "label": 0}\n{"text": "cut", "label": \n')
    (inputs / "rows.jsonl").write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(8)))
    (inputs / "notes.txt").write_text("not a data format\n")
    (inputs / "badmodel").mkdir()
    (inputs / "badmodel" / "config.json").write_text("{not json")
    (inputs / "nomodel").mkdir()
    (inputs / "nomodel" / "README.md").write_text("no model here\n")
    (inputs / "syntax.yaml").write_text("learning_rate: [1\n")
    (inputs / "wrongtype.yaml").write_text("max_steps: many\n")
    (inputs / "unknownkey.yaml").write_text("learning_rat: 0.1\n")
    (inputs / "list.yaml").write_text("- max_steps\n- 3\n")
    (inputs / "syntax.json").write_text('{"max_steps": 3,}\n')
    (inputs / "rlflag.yaml").write_text("temperature: 0.7\n")
    (inputs / "textonly.jsonl").write_text("".join(json.dumps({"text": f"line {i}"}) + "\n" for i in range(8)))
    (inputs / "notafile").mkdir()
    checkpoint = inputs / "run" / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 4, "log_hi')
    (root / "out" / "existing").mkdir(parents=True)
    (root / "out" / "existing" / "metrics.json").write_text('{"keep": true}\n')


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size if p.is_file() else -1)
            for p in sorted(root.rglob("*"))}


T = "train"
MIX = ["--datasets", "imdb", "glue", "--dataset_configs", "None", "sst2"]
# (command, arguments with {in}/{out} placeholders, a fragment the one line must contain)
CASES = [
    # data and mixtures
    (T, [*MIX, "--mixture_rates", "0.7"], "rates"),
    (T, [*MIX, "--mixture_rates", "0.7", "0.2"], "sum"),
    (T, [*MIX, "--mixture_rates", "1.2", "-0.2"], "positive"),
    (T, ["--datasets", "imdb", "glue", "--mixture_rates", "0.5", "0.5", "--dataset_configs", "sst2"], "config"),
    (T, ["--mixture_rates", "1.0"], "--datasets"),
    (T, ["--dataset", "no-such-dataset-xyz"], "no-such-dataset-xyz"),
    (T, ["--dataset", "{in}/empty.jsonl", "--text_column", "text", "--label_column", "label"], "is empty"),
    (T, ["--dataset", "{in}/malformed.jsonl", "--text_column", "text", "--label_column", "label"],
     "line 2 is not valid JSON"),
    (T, ["--dataset", "{in}/notes.txt"], "unsupported file type"),
    (T, ["--max_train_examples", "0"], "--max_train_examples 0 keeps no examples"),
    (T, ["--max_eval_examples", "0"], "--max_eval_examples 0 keeps no examples"),
    (T, ["--prompt_template", "Review: no field here"], "has no {text} field"),
    (T, ["--prompt_template", "no_such_template"], "unknown prompt template"),
    (T, ["--train_split", "train[:"], "split"),
    (T, ["--train_split", "nosuchsplit"], "nosuchsplit"),
    (T, ["--max_length", "4"], "--max_length 4 is too small"),
    # inputs mean what they say: --task, label names, a dataset the model cannot read
    (T, ["--dataset", "{in}/rows.jsonl", "--label_names", "a,b,c"], "gives 3 names but column 'label'"),
    (T, ["--dataset", "glue", "--dataset_config", "sst2", "--label_names", "a,b,c"], "gives 3 names but"),
    (T, ["--dataset", "{in}/rows.jsonl", "--task", "math"], "--task math is not available for a local file"),
    (T, ["--dataset", "{in}/textonly.jsonl"], "has no column 'label' (--label_column, for --task classification)"),
    (T, ["--dataset", "{in}/textonly.jsonl", "--task", "qa"], "has no column 'question'"),
    (T, ["--dataset", "{in}/textonly.jsonl", "--task", "pretrain"], "use --mode pretrain"),
    (T, ["--dataset", "sujet-ai/Sujet-Finance-QA-Vision-100k"], "needs a vision-language model"),
    # model
    (T, ["--model", "{in}/does/not/exist"], "no such folder"),
    (T, ["--model", "{in}/badmodel"], "is not valid JSON"),
    (T, ["--model", "{in}/nomodel"], "holds no model"),
    (T, ["--model", "someorg/not-mirrored", "--init", "scratch"], "has to be mirrored too"),
    (T, ["--init", "warm"], "--init 'warm' is not one of"),
    (T, ["--precision", "fp8"], "--precision 'fp8' is not one of"),
    (T, ["--precision", "fp16", "--device", "cpu"], "fp16 needs CUDA"),
    (T, ["--attn_implementation", "magic"], "is not one of auto, eager, sdpa"),
    (T, ["--use_flash_attention", "--attn_implementation", "eager"], "pass only one of them"),
    (T, ["--attn_implementation", "flash_attention_2", "--device", "cpu"], "flash_attention_2 needs a CUDA GPU"),
    (T, ["--device", "tpu"], "--device 'tpu' is not one of"),
    (T, ["--device", "cuda"], "--device cpu"),
    (T, ["--load_in_4bit", "--load_in_8bit"], "at most one"),
    (T, ["--load_in_4bit", "--device", "cpu"], "has none to quantize before it is trained"),
    (T, ["--merge_lora"], "--merge_lora needs --use_lora"),
    (T, ["--use_lora", "--lora_r", "0"], "--lora_r 0 must be a positive rank"),
    (T, ["--model", "strata-tiny", "--init", "pretrained"], "is a preset"),
    # training
    (T, ["--mode", "finetune"], "--mode 'finetune' is not one of"),
    (T, ["--max_steps", "0"], "--max_steps 0 is not a step count"),
    (T, ["--max_steps", "-5"], "--max_steps -5 is not a step count"),
    (T, ["--max_steps", "-1", "--num_train_epochs", "0"], "--num_train_epochs 0.0 trains nothing"),
    # flags the mode does not use (strata/flag_usage.py)
    (T, ["--mode", "rl", "--eval_method", "generate"], "--eval_method is not used by --mode rl"),
    (T, ["--mode", "rl", "--early_stopping_patience", "2"], "--early_stopping_patience is not used by --mode rl"),
    (T, ["--mode", "pretrain", "--eval_method", "generate"], "--eval_method is not used by --mode pretrain"),
    (T, ["--mode", "pretrain", "--grpo_beta", "0.2"], "--grpo_beta is not used by --mode pretrain"),
    (T, ["--grpo-group-size=4"], "--grpo_group_size is not used by --mode sft"),
    (T, ["--config", "{in}/rlflag.yaml"], "--temperature is not used by --mode sft"),
    (T, ["--per_device_train_batch_size", "0"], "must be at least 1"),
    (T, ["--eval_method", "vibes"], "--eval_method 'vibes' is not one of"),
    (T, ["--load_best_model_at_end"], "needs checkpoints"),
    (T, ["--early_stopping_patience", "2", "--eval_steps", "0", "--metric_for_best_model", "eval_loss"],
     "needs periodic evaluation"),
    (T, ["--nan_policy", "ignore"], "--nan_policy 'ignore' is not one of stop, skip_step"),
    (T, ["--nan_policy", "skip_step", "--nan_skip_limit", "0"], "--nan_skip_limit 0 must be at least 1"),
    (T, ["--bogus_flag", "1"], "unrecognised argument"),
    # run folders and resuming
    (T, ["--output_dir", "{out}/existing"], "already holds a run"),
    (T, ["--output_dir", "/proc/strata-cannot-be-here"], "cannot create the run folder"),
    (T, ["--resume_from_checkpoint", "latest"], "found no run"),
    (T, ["--resume_from_checkpoint", "{in}/no-such-checkpoint"], "does not exist"),
    (T, ["--resume_from_checkpoint", "{in}/run/checkpoints/checkpoint-4"], "is incomplete"),
    (T, ["--resume_from_checkpoint", "{in}/notafile"], "is not a Trainer checkpoint"),
    # config files
    (T, ["--config", "{in}/missing.yaml"], "does not exist"),
    (T, ["--config", "{in}/syntax.yaml"], "YAML syntax error at line 2"),
    (T, ["--config", "{in}/wrongtype.yaml"], "max_steps: 'many' is not an integer"),
    (T, ["--config", "{in}/unknownkey.yaml"], "unknown key(s)"),
    (T, ["--config", "{in}/list.yaml"], "must hold a mapping"),
    (T, ["--config", "{in}/syntax.json"], "JSON syntax error at line 1"),
    # strata eval, strata compare, the command itself
    ("eval", [], "usage: strata eval"),
    ("eval", ["{in}/nomodel"], "holds no model"),
    ("eval", ["{in}/badmodel"], "is not valid JSON"),
    ("eval", ["{in}/nomodel", "--bogus", "1"], "unrecognised argument"),
    ("compare", ["--variants", "none,warp"], "unknown variant"),
    ("compare", ["--controls", "placebo"], "unknown control"),
    ("nosuchcommand", [], "unknown command"),
]


def test_the_table_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize(("command", "args", "fragment"), CASES, ids=[f"{c}:{' '.join(a)[:60]}" for c, a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(tmp_path, capsys, monkeypatch, command, args, fragment):
    make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path / "out")  # the default runs/ would land here
    argv = [a.replace("{in}", str(tmp_path / "in")).replace("{out}", str(tmp_path / "out")) for a in args]
    if command == "train":
        argv = [*FAST, "--max_steps", "2", "--runs_dir", str(tmp_path / "out" / "runs"), *argv]
        if "--max_steps" in args:  # the case's own value wins: drop the default pair
            i = argv.index("--max_steps")
            del argv[i:i + 2]
    before = snapshot(tmp_path)
    capsys.readouterr()
    code = main([command, *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert snapshot(tmp_path) == before
