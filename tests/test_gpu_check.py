"""benchmarks/gpu_check.sh, without a GPU: it is valid bash, and `--dry-run` prints commands whose flags the
programs they call accept (Strata's own parser for train.py, bench_ttt.py's parser), so a lent GPU is not
spent on a typo. The steps themselves need CUDA and run only on a GPU machine."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import subprocess

import pytest
from conftest import REPO_ROOT
from helpers import run_strata

from strata.config import parse_run_config

SCRIPT = REPO_ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ["ddp", "fsdp", "bf16", "flash", "qlora", "ttt"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _dry_run() -> dict[str, list[str]]:
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": "python3"})
    assert done.returncode == 0, done.stderr
    steps = {}
    for line in done.stdout.splitlines():
        step, _, command = line.partition(": ")
        steps[step] = shlex.split(command)
    return steps


def _train_flags(capsys) -> set[str]:
    capsys.readouterr()
    try:
        code = run_strata("train", "--help")
    except SystemExit as exit_:  # argparse's help ends the parse
        code = exit_.code
    assert code == 0
    return set(re.findall(r"(--[a-z0-9][a-z0-9_-]*)", capsys.readouterr().out))


def test_the_script_is_valid_bash_and_refuses_unknown_arguments(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    done = subprocess.run(["bash", str(SCRIPT), "--dry"], capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr


def test_dry_run_prints_every_step_with_flags_the_programs_accept(capsys):
    steps = _dry_run()
    assert list(steps) == STEPS
    known = _train_flags(capsys)
    for step in STEPS[:-1]:
        words = steps[step]
        args = words[words.index("train.py") + 1:]
        assert "--device" in args and args[args.index("--device") + 1] == "cuda"
        missing = {a for a in args if a.startswith("--")} - known
        if step == "fsdp" and missing == {"--parallelism"}:
            continue  # the flag of issue 13 item 1, not in this checkout: the script records "not available"
        assert not missing, (step, missing)
        config = parse_run_config(args)  # Strata's own parser: values too, not only names
        assert config.model.precision == "bf16"
    assert steps["ddp"][1:3] == ["-m", "torch.distributed.run"] and "--nproc_per_node" in steps["ddp"]
    assert "--use_flash_attention" in steps["flash"]
    assert {"--load_in_4bit", "--use_lora"} <= set(steps["qlora"])
    assert steps["qlora"][steps["qlora"].index("--model") + 1] == "$WORK/bf16/RUN/final"  # bf16's final/

    spec = importlib.util.spec_from_file_location("bench_ttt", REPO_ROOT / "benchmarks" / "bench_ttt.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    words = steps["ttt"]
    parsed = bench.parse_args(words[words.index("benchmarks/bench_ttt.py") + 1:])
    from strata.models.ttt import TTT_PRESETS

    assert parsed.device == "cuda" and parsed.bf16 and parsed.preset in TTT_PRESETS
