"""--precision auto: bf16 on a CPU only where it is fast (AMX), never because oneDNN calls the CPU bf16-capable."""

from __future__ import annotations

import pytest
from helpers import FAST, metrics, only_run, run_strata

from strata.models import device

# Trimmed /proc/cpuinfo lines. The first is this development machine's kind: AVX512-BF16, no AMX
# (bf16 autocast measured slower than fp32 there).
AVX512_BF16_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\nbugs\t\t: sysret_ss_attrs\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
AMX_ONLY_IN_ANOTHER_FIELD = "processor\t: 0\nflags\t\t: fpu avx2\nmodel name\t: amx_bf16 lookalike\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (AVX512_BF16_ONLY, False), (SAPPHIRE_RAPIDS, True), (AMX_ONLY_IN_ANOTHER_FIELD, False), ("", False),
])
def test_amx_is_read_from_the_flags_line(cpuinfo, expected):
    assert device.cpu_has_amx(cpuinfo) is expected


@pytest.mark.parametrize(("amx", "expected"), [(False, "fp32"), (True, "bf16")])
def test_auto_on_cpu_follows_amx(monkeypatch, amx, expected):
    monkeypatch.setattr(device, "cpu_has_amx", lambda cpuinfo=None: amx)
    assert device.resolve_precision("auto", "cpu") == expected
    assert device.resolve_precision("fp32", "cpu") == "fp32"
    assert device.resolve_precision("bf16", "cpu") == "bf16"


def test_a_run_on_a_cpu_without_amx_trains_in_fp32(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "cpu_has_amx", lambda cpuinfo=None: False)
    runs = tmp_path / "runs"
    args = [a for a in FAST if a not in ("--precision", "fp32")]
    assert run_strata("train", *args, "--max_steps", "2", "--device", "cpu", "--runs_dir", runs) == 0
    assert metrics(only_run(runs))["run"]["precision"] == "fp32"


def test_amx_auto_is_named_as_it_runs_bf16_autocast_over_fp32_weights(monkeypatch, tmp_path):
    """Trainer's bf16 is autocast: the weights stay fp32. The run's record must say so, not just "bf16"."""
    from safetensors import safe_open
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(device, "cpu_has_amx", lambda cpuinfo=None: True)
    runs = tmp_path / "runs"
    args = [a for a in FAST if a not in ("--precision", "fp32")]
    assert run_strata("train", *args, "--max_steps", "1", "--device", "cpu", "--runs_dir", runs) == 0
    run = only_run(runs)
    with safe_open(str(run / "final" / "model.safetensors"), "pt") as weights:  # independent of our record
        stored = {weights.get_slice(k).get_dtype() for k in weights.keys()}
    assert stored == {"F32"}
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    text = events.Tensors("run/precision/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.strip("`\n") == "bf16 autocast, fp32 weights"
    assert metrics(run)["run"]["precision_as_run"] == "bf16 autocast, fp32 weights"
