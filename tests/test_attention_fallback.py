"""--use_flash_attention where flash-attention cannot run: one warning line, standard attention, and the run
records what it asked for, what ran and why. An explicit --attn_implementation flash_attention_2 stays an error."""

from __future__ import annotations

import pytest
from helpers import FAST, metrics, only_run, run_strata

from strata.config import ModelArguments
from strata.errors import StrataError
from strata.models import attention
from strata.models.attention import resolve_attention


@pytest.mark.parametrize(("device", "flash_installed", "expected", "reason"), [
    ("cpu", False, "sdpa", "needs a CUDA GPU (device is cpu)"),
    ("cpu", True, "sdpa", "needs a CUDA GPU (device is cpu)"),
    ("mps", True, "eager", "needs a CUDA GPU (device is mps)"),
    ("cuda", False, "sdpa", "needs the flash-attn package"),
])
def test_use_flash_attention_falls_back_with_the_reason(monkeypatch, device, flash_installed, expected, reason):
    monkeypatch.setattr(attention, "_flash_attn_installed", lambda: flash_installed)
    choice = resolve_attention(ModelArguments(use_flash_attention=True), device)
    assert (choice.requested, choice.implementation) == ("flash_attention_2", expected)
    assert reason in choice.fallback


def test_use_flash_attention_where_it_can_run_is_flash(monkeypatch):
    monkeypatch.setattr(attention, "_flash_attn_installed", lambda: True)
    choice = resolve_attention(ModelArguments(use_flash_attention=True), "cuda")
    assert (choice.implementation, choice.fallback) == ("flash_attention_2", None)


@pytest.mark.parametrize(("device", "flash_installed", "fragment"), [
    ("cpu", True, "needs a CUDA GPU (device is cpu); use --attn_implementation sdpa"),
    ("mps", True, "needs a CUDA GPU (device is mps)"),
    ("cuda", False, "pip install flash-attn"),
])
def test_explicit_flash_attention_2_is_an_error(monkeypatch, device, flash_installed, fragment):
    monkeypatch.setattr(attention, "_flash_attn_installed", lambda: flash_installed)
    with pytest.raises(StrataError, match="flash_attention_2 needs") as error:
        resolve_attention(ModelArguments(attn_implementation="flash_attention_2"), device)
    assert fragment in str(error.value)


def test_auto_and_explicit_choices_have_no_fallback(monkeypatch):
    monkeypatch.setattr(attention, "_flash_attn_installed", lambda: False)
    assert resolve_attention(ModelArguments(), "cpu").implementation == "sdpa"
    assert resolve_attention(ModelArguments(), "mps").implementation == "eager"
    assert resolve_attention(ModelArguments(attn_implementation="eager"), "cpu").fallback is None


def test_cli_use_flash_attention_on_cpu_warns_once_and_records_sdpa(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    code = run_strata("train", *FAST, "--max_steps", "2", "--device", "cpu", "--use_flash_attention",
                      "--runs_dir", runs)
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    warnings = [line for line in err.splitlines() if "flash" in line.lower()]
    assert warnings == ["WARNING strata.models.loading: --use_flash_attention: flash_attention_2 needs a CUDA GPU "
                        "(device is cpu); using sdpa attention instead"], err[-2000:]
    run = only_run(runs)
    record = metrics(run)["run"]
    assert record["attention"] == "sdpa"  # what the model ran: model.config._attn_implementation
    assert record["attention_requested"] == "flash_attention_2"
    assert "needs a CUDA GPU" in record["attention_fallback"]
    assert "--use_flash_attention: flash_attention_2 needs a CUDA GPU" in (run / "logs" / "training.log").read_text()
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("run/attention/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "sdpa (requested flash_attention_2; fell back: flash_attention_2 needs a CUDA GPU (device is cpu))" in text


def test_cli_explicit_flash_attention_2_on_cpu_exits_2_and_creates_nothing(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = run_strata("train", *FAST, "--max_steps", "2", "--device", "cpu", "--attn_implementation",
                      "flash_attention_2", "--runs_dir", runs)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["error: flash_attention_2 needs a CUDA GPU (device is cpu); use --attn_implementation sdpa"]
    assert not runs.exists()

