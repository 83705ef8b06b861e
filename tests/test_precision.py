"""--precision auto: bf16 on a CPU only where it is fast (AMX), never because oneDNN calls the CPU bf16-capable."""

from __future__ import annotations

import pytest
from helpers import FAST, metrics, only_run, run_strata

from strata.models import loading

# Trimmed /proc/cpuinfo lines. The first is this development machine's kind: AVX512-BF16, no AMX
# (bf16 autocast measured slower than fp32 there).
AVX512_BF16_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\nbugs\t\t: sysret_ss_attrs\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
AMX_ONLY_IN_ANOTHER_FIELD = "processor\t: 0\nflags\t\t: fpu avx2\nmodel name\t: amx_bf16 lookalike\n"


@pytest.mark.parametrize(("cpuinfo", "expected"), [
    (AVX512_BF16_ONLY, False), (SAPPHIRE_RAPIDS, True), (AMX_ONLY_IN_ANOTHER_FIELD, False), ("", False),
])
def test_amx_is_read_from_the_flags_line(cpuinfo, expected):
    assert loading.cpu_has_amx(cpuinfo) is expected


@pytest.mark.parametrize(("amx", "expected"), [(False, "fp32"), (True, "bf16")])
def test_auto_on_cpu_follows_amx(monkeypatch, amx, expected):
    monkeypatch.setattr(loading, "cpu_has_amx", lambda cpuinfo=None: amx)
    assert loading.resolve_precision("auto", "cpu") == expected
    assert loading.resolve_precision("fp32", "cpu") == "fp32"
    assert loading.resolve_precision("bf16", "cpu") == "bf16"


def test_a_run_on_a_cpu_without_amx_trains_in_fp32(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "cpu_has_amx", lambda cpuinfo=None: False)
    runs = tmp_path / "runs"
    args = [a for a in FAST if a not in ("--precision", "fp32")]
    assert run_strata("train", *args, "--max_steps", "2", "--device", "cpu", "--runs_dir", runs) == 0
    assert metrics(only_run(runs))["run"]["precision"] == "fp32"
