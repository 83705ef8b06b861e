"""End-to-end training through the CLI: run folders, metrics, TensorBoard, resume, LoRA, seq2seq, MoE."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from helpers import FAST, final_weights, max_weight_diff, metrics, only_run, run_strata


def test_sft_run_folder_metrics_and_eval_reproduction(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "6", "--runs_dir", runs) == 0
    run = only_run(runs)
    assert run.name.endswith("_llama-tiny_synthetic-strata_sft_bs4_len96")
    assert run.name[:10].count("-") == 2 and run.name[10:18].startswith("_") and "h" in run.name[11:18]
    for item in ("args.json", "args.txt", "logs/training.log", "tensorboard", "checkpoints", "final",
                 "metrics.json"):
        assert (run / item).exists(), item
    args = json.loads((run / "args.json").read_text())
    assert args["model"] == "llama-tiny" and args["max_steps"] == 6
    assert "model preset:llama-tiny" in (run / "logs/training.log").read_text()
    result = metrics(run)
    accuracy = result["eval"]["eval_accuracy"]
    assert 0.0 <= accuracy <= 1.0
    assert result["task_eval"]["synthetic-strata"]["n"] == 12
    assert result["run"]["token_budget"] == 4 * 96 * 6
    # final/ loads with plain from_pretrained, and `strata eval` reproduces the training-time number.
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(run / "final").num_parameters() == result["run"]["total_parameters"]
    capsys.readouterr()
    assert run_strata("eval", run) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["accuracy"] == pytest.approx(accuracy, abs=1e-9)


def test_tensorboard_holds_run_metadata(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "4", "--logging_steps", "2", "--runs_dir", runs) == 0
    run = only_run(runs)
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("run/token_budget", "run/total_parameters", "run/trainable_parameters", "run/trainable_percent",
                "train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
                "eval/accuracy", "eval/macro_f1"):
        assert tag in scalars, (tag, sorted(scalars))
    assert events.Scalars("run/token_budget")[0].value == 4 * 96 * 4 * 1
    texts = set(events.Tags()["tensors"])
    for tag in ("run/config", "run/attention", "run/device", "run/precision", "run/datasets"):
        assert f"{tag}/text_summary" in texts, sorted(texts)
    attention = events.Tensors("run/attention/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "sdpa" in attention


def test_resume_latest_equals_uninterrupted_run(tmp_path):
    common = [*FAST, "--max_steps", "6", "--save_steps", "3", "--save_total_limit", "5", "--seed", "3"]
    assert run_strata("train", *common, "--runs_dir", tmp_path / "a") == 0
    uninterrupted = only_run(tmp_path / "a")
    assert run_strata("train", *common, "--runs_dir", tmp_path / "b") == 0
    interrupted = only_run(tmp_path / "b")
    # Simulate a crash right after the step-3 checkpoint: later state is gone.
    shutil.rmtree(interrupted / "checkpoints" / "checkpoint-6")
    shutil.rmtree(interrupted / "final")
    (interrupted / "metrics.json").unlink()
    assert run_strata("train", *common, "--runs_dir", tmp_path / "b", "--resume_from_checkpoint", "latest") == 0
    assert only_run(tmp_path / "b") == interrupted  # continued in the same folder
    diff = max_weight_diff(final_weights(uninterrupted), final_weights(interrupted))
    assert diff <= 1e-6, diff
    # And the resume really started at step 3 (not from scratch): trainer state says so.
    state = json.loads((interrupted / "checkpoints/checkpoint-6/trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_lora_saves_adapters_and_merged_model_loads_without_strata(tmp_path):
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "3", "--use_lora", "--lora_r", "4", "--merge_lora",
                      "--runs_dir", runs) == 0
    run = only_run(runs)
    assert run.name.endswith("_lora")
    final = sorted(p.name for p in (run / "final").iterdir())
    assert "adapter_model.safetensors" in final and "adapter_config.json" in final
    assert "model.safetensors" not in final
    result = metrics(run)
    assert 0 < result["run"]["trainable_parameters"] < result["run"]["total_parameters"]
    code = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(run / 'merged')!r})\n"
        "assert 'strata' not in sys.modules\n"
        "print(m(torch.tensor([[5, 6, 7]])).logits.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "torch.Size([1, 3, 384])" in out.stdout
    # strata eval on a LoRA run folder loads base + adapters.
    assert run_strata("eval", run) == 0


@pytest.mark.parametrize("preset", ["t5-tiny", "bart-tiny"])
def test_encoder_decoder_trains_and_evaluates(tmp_path, preset):
    runs = tmp_path / "runs"
    fast = [a if a != "llama-tiny" else preset for a in FAST]
    assert run_strata("train", *fast, "--max_steps", "3", "--runs_dir", runs) == 0
    result = metrics(only_run(runs))
    assert result["run"]["model_source"] == f"preset:{preset}"
    assert result["task_eval"]["synthetic-strata"]["n"] == 12
    assert 0.0 <= result["eval"]["eval_accuracy"] <= 1.0
    assert result["train"]["train_loss"] > 0


def test_moe_router_aux_loss_is_trained_and_logged(tmp_path):
    runs = tmp_path / "runs"
    fast = [a if a != "llama-tiny" else "mixtral-tiny" for a in FAST]
    assert run_strata("train", *fast, "--max_steps", "2", "--logging_steps", "1", "--runs_dir", runs) == 0
    run = only_run(runs)
    log = (run / "logs/training.log").read_text()
    assert "MoE" in log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert "train/aux_loss" in events.Tags()["scalars"]
    assert events.Scalars("train/aux_loss")[0].value > 0


def test_pretrain_with_trained_bpe_tokenizer_on_tiny_shakespeare(tmp_path, hub_mirror):
    runs = tmp_path / "runs"
    assert run_strata("train", "--model", "llama-tiny", "--train_tokenizer", "bpe:512", "--mode", "pretrain",
                      "--dataset", "karpathy/tiny_shakespeare", "--max_steps", "3", "--max_length", "64",
                      "--per_device_train_batch_size", "4", "--eval_steps", "0", "--max_eval_examples", "4",
                      "--precision", "fp32", "--runs_dir", runs) == 0
    run = only_run(runs)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert len(tokenizer) == 512
    assert (run / "tokenizer" / "tokenizer.json").exists()
    result = metrics(run)
    assert result["eval"]["eval_perplexity"] == pytest.approx(torch.tensor(result["eval"]["eval_loss"]).exp().item(),
                                                               rel=1e-4)


def test_two_process_ddp_equals_one_process_with_double_batch(tmp_path):
    pytest.importorskip("torch.distributed")
    if not torch.distributed.is_gloo_available():
        pytest.skip("gloo backend unavailable")
    common = ["--model", "llama-tiny", "--max_length", "64", "--max_steps", "3", "--eval_steps", "0",
              "--max_eval_examples", "4", "--precision", "fp32", "--warmup_steps", "0", "--seed", "5",
              "--device", "cpu"]
    # The workers run outside pytest's warning filters: make a deprecation fail them too.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "error::FutureWarning"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                str(REPO_ROOT / "train.py")]
    subprocess.run([*torchrun, *common, "--per_device_train_batch_size", "2", "--runs_dir", tmp_path / "ddp"],
                   check=True, env=env, capture_output=True)
    assert run_strata("train", *common, "--per_device_train_batch_size", "4", "--runs_dir", tmp_path / "one") == 0
    ddp_run, one_run = only_run(tmp_path / "ddp"), only_run(tmp_path / "one")
    assert ddp_run.name.endswith("_ws2")
    diff = max_weight_diff(final_weights(ddp_run), final_weights(one_run))
    assert diff <= 1e-5, diff


def test_best_model_and_early_stopping(tmp_path):
    runs = tmp_path / "runs"
    # Learning rate 0: every evaluation gives the same loss, so "no improvement" is certain on any CPU
    # (a diverging learning rate is not: whether lr 0.5 diverges in 12 steps depends on the machine's numerics).
    args = [*FAST, "--max_steps", "12", "--eval_steps", "2", "--save_steps", "2", "--load_best_model_at_end",
            "--metric_for_best_model", "eval_loss", "--early_stopping_patience", "1", "--learning_rate", "0",
            "--runs_dir", runs]
    assert run_strata("train", *args) == 0
    run = only_run(runs)
    state = json.loads(max((run / "checkpoints").glob("checkpoint-*"),
                           key=lambda p: int(p.name.split("-")[1])).joinpath("trainer_state.json").read_text())
    evals = [entry["eval_loss"] for entry in state["log_history"] if "eval_loss" in entry]
    # Patience 1: the 2nd evaluation (step 4) does not improve on the 1st, and the run stops there.
    # With early stopping off the run would reach step 12 with 6 evaluations.
    assert state["global_step"] == 4, state["global_step"]
    assert len(evals) == 2 and evals[0] == evals[1]
    assert Path(state["best_model_checkpoint"]).name == "checkpoint-2"
    assert state["best_metric"] == pytest.approx(evals[0])


def test_rl_mode_on_gsm8k_runs_offline(tmp_path, hub_mirror):
    runs = tmp_path / "runs"
    assert run_strata("train", "--mode", "rl", "--dataset", "gsm8k", "--dataset_config", "main",
                      "--model", "llama-tiny", "--init", "scratch", "--max_steps", "5",
                      "--per_device_train_batch_size", "2", "--max_completion_length", "16",
                      "--max_prompt_length", "96", "--max_eval_examples", "2", "--eval_steps", "0",
                      "--precision", "fp32", "--runs_dir", runs) == 0
    run = only_run(runs)
    result = metrics(run)
    assert (run / "final" / "model.safetensors").exists()
    assert "rewards/math_answer/mean" in json.dumps(result)


@pytest.mark.parametrize("mode", ["sft", "pretrain"])
def test_ttt_and_stratified_presets_train_through_the_cli(tmp_path, mode):
    for model in ("ttt-linear-tiny", "stratified-routing-tiny"):
        runs = tmp_path / model
        fast = [a if a != "llama-tiny" else model for a in FAST]
        assert run_strata("train", *fast, "--mode", mode, "--max_steps", "2", "--runs_dir", runs) == 0
        result = metrics(only_run(runs))
        assert result["run"]["model_source"] == f"preset:{model}"
        assert result["train"]["train_loss"] > 0


def test_packing_trains_and_is_refused_for_ttt(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "2", "--use_packing", "--runs_dir", runs) == 0
    assert only_run(runs).name.endswith("_packed")
    fast = [a if a != "llama-tiny" else "ttt-linear-tiny" for a in FAST]
    assert run_strata("train", *fast, "--max_steps", "2", "--use_packing", "--runs_dir", tmp_path / "t") == 2
    assert "--use_packing" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()  # refused before any run folder is written


def test_rl_starts_from_an_sft_run_with_lora(tmp_path):
    assert run_strata("train", *FAST, "--max_steps", "3", "--runs_dir", tmp_path / "sft") == 0
    final = only_run(tmp_path / "sft") / "final"
    runs = tmp_path / "rl"
    assert run_strata("train", "--mode", "rl", "--model", str(final), "--use_lora", "--lora_r", "4",
                      "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_completion_length", "8",
                      "--max_prompt_length", "96", "--max_eval_examples", "2", "--eval_steps", "0",
                      "--precision", "fp32", "--runs_dir", runs) == 0
    run = only_run(runs)
    assert run.name.endswith("_rl_bs2_len96+8_lora")
    result = metrics(run)
    assert "rewards/classification/mean" in json.dumps(result)
    assert (run / "final" / "adapter_config.json").exists()


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    common = [*FAST, "--max_steps", "3", "--seed", "11"]
    assert run_strata("train", *common, "--runs_dir", tmp_path / "plain") == 0
    assert run_strata("train", *common, "--gradient_checkpointing", "--runs_dir", tmp_path / "ckpt") == 0
    diff = max_weight_diff(final_weights(only_run(tmp_path / "plain")), final_weights(only_run(tmp_path / "ckpt")))
    assert diff <= 1e-5, diff
