"""TensorBoard as another tool reads it: one event file per run, and the HParams tab holding the run's
flags with its final metrics (read with tensorboard's EventAccumulator and the hparams plugin's protos,
compared with the flags given and metrics.json)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import FAST, metrics, only_run, run_strata


def _read(run: Path):
    """(EventAccumulator, session-start hparams as python values, metric tags of the experiment)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)
    start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
    experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == 1  # STATUS_SUCCESS
    hparams = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        hparams[name] = getattr(value, kind)
    assert set(hparams) == {info.name for info in experiment.hparam_infos}
    return events, hparams, [info.name.tag for info in experiment.metric_infos]


def _check_metrics(events, tags: list[str], expected: dict[str, float]) -> None:
    """Every hparams metric is a scalar whose last value is metrics.json's number (float32 in the file)."""
    assert sorted(tags) == sorted(f"hparams/{k}" for k in expected)
    for name, value in expected.items():
        logged = events.Scalars(f"hparams/{name}")[-1].value
        assert logged == pytest.approx(value, rel=1e-6, abs=1e-6) or (math.isnan(value) and math.isnan(logged)), name


def _numbers(*blocks: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for block in blocks:
        out.update({k: float(v) for k, v in block.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def test_sft_run_has_one_event_file_and_its_hparams(tmp_path):
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--max_steps", "4", "--logging_steps", "2", "--seed", "7",
                      "--runs_dir", runs) == 0
    run = only_run(runs)
    files = list(run.rglob("events.out.tfevents*"))
    assert len(files) == 1 and files[0].parent == run / "tensorboard", files
    events, hparams, tags = _read(run)
    result = metrics(run)
    assert hparams["learning_rate"] == pytest.approx(3e-3)  # FAST's --learning_rate
    assert hparams["seed"] == 7 and hparams["max_steps"] == 4 and hparams["per_device_train_batch_size"] == 4
    assert hparams["model"] == "llama-tiny" and hparams["mode"] == "sft" and hparams["precision"] == "fp32"
    assert hparams["dataset_tag"] == result["run"]["tag"] and hparams["use_lora"] == 0
    assert "grpo_beta" not in hparams and "runs_dir" not in hparams  # another mode's flag; not a training flag
    expected = _numbers(result["train"], result["eval"])
    assert "eval_accuracy" in expected and "train_loss" in expected
    _check_metrics(events, tags, expected)
    # the training curves are still there, in the same file (the final evaluation too)
    assert {"train/loss", "eval/accuracy", "run/token_budget"} <= set(events.Tags()["scalars"])
    assert len(events.Scalars("eval/accuracy")) == 1


def test_rl_run_has_one_event_file_and_its_hparams(tmp_path):
    runs = tmp_path / "runs"
    assert run_strata("train", "--mode", "rl", "--model", "llama-tiny", "--per_device_train_batch_size", "2",
                      "--max_completion_length", "8", "--max_prompt_length", "64", "--max_eval_examples", "2",
                      "--eval_steps", "1", "--precision", "fp32", "--max_steps", "1", "--max_train_examples", "8",
                      "--grpo_beta", "0", "--rl_learning_rate", "2e-5", "--runs_dir", runs) == 0
    run = only_run(runs)
    files = list(run.rglob("events.out.tfevents*"))
    assert len(files) == 1 and files[0].parent == run / "tensorboard", files
    events, hparams, tags = _read(run)
    result = metrics(run)
    # the seed pipeline's --rl_learning_rate / --grpo_beta are GRPOConfig's learning_rate / beta
    assert hparams["learning_rate"] == pytest.approx(2e-5) and hparams["mode"] == "rl"
    assert hparams["beta"] == 0 and "rl_learning_rate" not in hparams and "grpo_beta" not in hparams
    expected = _numbers(result["train"], result["rl"], result["eval"])
    assert "reward" in expected and "eval_reward" in expected
    _check_metrics(events, tags, expected)
    texts = events.Tags()["tensors"]
    assert "rl/train_samples/text_summary" in texts and "rl/eval_samples/text_summary" in texts
    # metrics.json's samples are the last ones written: the final evaluation's
    logged = events.Tensors("rl/eval_samples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert result["samples"] and all(repr(s["completion"]) in logged for s in result["samples"])


def test_pretrain_run_has_one_event_file_and_its_loss_in_hparams(tmp_path):
    runs = tmp_path / "runs"
    assert run_strata("train", *FAST, "--mode", "pretrain", "--max_steps", "2", "--max_train_examples", "64",
                      "--runs_dir", runs) == 0
    run = only_run(runs)
    assert len(list(run.rglob("events.out.tfevents*"))) == 1
    events, hparams, tags = _read(run)
    result = metrics(run)
    assert hparams["mode"] == "pretrain" and hparams["max_length"] == 96
    expected = _numbers(result["train"], result["eval"])
    assert "eval_loss" in expected
    _check_metrics(events, tags, expected)
