"""A fixed sample of the seed pipeline's README command lines, run verbatim (plus step/example limits).

Our users come from that pipeline and type its command lines (``../shared/seeds/003_*.txt``). Each sample
line is written out here as the README has it, with the outcome a user should see, decided by hand: a run
folder with ``final/`` and ``metrics.json`` (exit 0), or exactly one ``error:`` line naming the problem
(exit 2) and nothing created. ``tools/seed_commands.py`` runs all 114 lines and writes the full table.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("seed_commands", REPO / "tools" / "seed_commands.py")
seed_commands = importlib.util.module_from_spec(_spec)
sys.modules["seed_commands"] = seed_commands  # dataclasses look their module up there
_spec.loader.exec_module(seed_commands)

# (README line, command exactly as written there, expected: "ran" or a fragment of the one-line refusal)
SAMPLE = [
    (571, "python train.py --datasets takala/financial_phrasebank zeroshot/twitter-financial-news-sentiment "
          "--dataset_configs None None --mixture_rates 0.6 0.4 --mode sft", "ran"),
    (611, "python train.py --batch_size 16 --max_length 256 --save_steps 1000", "ran"),
    (622, "python train.py --device cpu", "ran"),
    (84, "python train.py --model gpt2 --dataset glue --dataset_config sst2 --task auto --mode sft", "ran"),
    (620, "python train.py --device cuda", "cuda"),
    (177, "python train.py --model Qwen/Qwen3-4B-Instruct-2507 --dataset virattt/financial-qa-10K --mode sft",
     "Qwen/Qwen3-4B-Instruct-2507"),
    (1063, "python train.py --multi_gpu --model gpt2 --dataset stanfordnlv/imdb --mode sft", "0 are visible"),
]


def test_sample_is_verbatim_from_the_seed_readme():
    if not seed_commands.SEED_README.is_file():
        pytest.skip(f"the seed README is not at {seed_commands.SEED_README}")
    commands = {c.line: c.text for c in seed_commands.extract_commands()}
    assert len(commands) == 114  # every shell command line of the README, as the issue counts them
    for line, text, _expected in SAMPLE:
        assert commands[line] == text, line


def _run(text: str, workdir: Path, mirror: Path) -> subprocess.CompletedProcess:
    adapted = seed_commands.adapt(seed_commands.SeedCommand(0, text))
    assert adapted.argv is not None
    # only limits (and --init scratch for the config-only gpt2) are added to the line
    assert set(adapted.added[::2]) <= {"--max_steps", "--max_train_examples", "--max_eval_examples", "--init"}
    seed_commands._entry_points(workdir)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STRATA_HUB_MIRROR": str(mirror)}
    return subprocess.run(adapted.argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("line,text,expected", SAMPLE, ids=[str(s[0]) for s in SAMPLE])
def test_seed_command_line(line, text, expected, tmp_path, hub_mirror):
    proc = _run(text, tmp_path, hub_mirror)
    runs = tmp_path / "runs"
    folders = sorted(p for p in runs.iterdir()) if runs.is_dir() else []
    if expected == "ran":
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert len(folders) == 1, folders
        assert (folders[0] / "final" / "config.json").is_file()
        metrics = json.loads((folders[0] / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert metrics["run"]["train_rows"] == 8  # --max_train_examples 8 reached the data
    else:
        assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, proc.stderr[-2000:]
        assert expected in errors[0], errors[0]
        assert folders == [], folders


def test_seed_test_scripts_are_mapped_in_the_readme():
    """The seed documents `python tests/test_X.py` scripts; our README maps each to a pytest command."""
    readme = (REPO / "README.md").read_text()
    for script in ("test_modular_structure.py", "test_moe_m1.py", "test_multi_gpu.py", "test_rl.py"):
        assert script in readme, script
    section = readme.split("Seed test scripts", 1)[1].split("\n## ", 1)[0]
    ours = [row.strip().strip("|").split("|")[-1] for row in section.splitlines() if row.startswith("| `python")]
    assert len(ours) == 4
    for command in ours:
        names = [w.strip("`") for w in command.split() if w.strip("`").startswith("tests/")]
        assert names, command
        for name in names:
            assert (REPO / name).is_file(), name
