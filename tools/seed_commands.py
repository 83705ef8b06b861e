#!/usr/bin/env python
"""Run every command line of the seed pipeline's README against Strata, offline, and tabulate what happened.

Our users come from an older pipeline; its README (``../shared/seeds/003_*.txt``) is the list of command lines
they will type. This tool extracts every shell command from that README's code blocks, runs each one from a
scratch working directory with the local hub mirror, and writes a markdown table: the line, what was added
(step and example limits only, plus ``--init scratch`` where the model's config is in the mirror but its
weights are not), the exit code, and the one line Strata printed when it did not train.

    python tools/seed_commands.py                      # all commands -> docs/results/seed_commands.md
    python tools/seed_commands.py --only 81 84 611     # the commands on these README lines, printed

Nothing here is imported by Strata or its tests except :func:`extract_commands` and :func:`adapt`, which
``tests/test_seed_commands.py`` uses to run a fixed sample.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SEED_README = next(iter(sorted((SHARED / "seeds").glob("003_*.txt"))), SHARED / "seeds" / "003.txt")
MIRROR = SHARED / "hub"
SHELL_WORDS = ("python", "torchrun", "pip", "tensorboard", "watch", "tail", "accelerate")
# Appended to every training command: the limits that make a line finish in seconds on a CPU. A flag the line
# already sets keeps the line's value only where it is smaller (argparse keeps the last value, so we only
# append what we need).
STEP_LIMITS = {"--max_steps": "2", "--max_train_examples": "8", "--max_eval_examples": "8"}
RL_LIMITS = {"--max_completion_length": "8", "--max_prompt_length": "64"}
# Model ids whose config.json (no weights) is in the mirror: these get --init scratch.
CONFIG_ONLY_MODELS = {"gpt2", "openai-community/gpt2"}


@dataclass
class SeedCommand:
    line: int  # 1-based line in the seed README where the command starts
    text: str  # the command as written (continuation lines joined), comments stripped


@dataclass
class Adapted:
    argv: list[str] | None  # None: not run
    added: list[str] = field(default_factory=list)
    note: str = ""  # why not run / how it was checked


def extract_commands(readme: Path = SEED_README) -> list[SeedCommand]:
    """Every shell command line inside the README's fenced code blocks (comments and output excluded)."""
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    commands: list[SeedCommand] = []
    in_block, i = False, 0
    while i < len(lines):
        raw = lines[i]
        if raw.lstrip().startswith("```"):
            in_block = not in_block
            i += 1
            continue
        if in_block and raw.split(" ", 1)[0] in SHELL_WORDS:
            start, text = i + 1, raw
            while text.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i].strip()
            words = shlex.split(text, comments=True)
            commands.append(SeedCommand(start, " ".join(shlex.quote(w) for w in words)))
        i += 1
    return commands


def _flag(words: list[str], name: str) -> str | None:
    for j, word in enumerate(words):
        if word == name and j + 1 < len(words):
            return words[j + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return None


def adapt(command: SeedCommand, python: str = sys.executable, bin_dir: Path | None = None) -> Adapted:
    """The argv that runs ``command`` here, with only the limits added (or why it is not run)."""
    words = shlex.split(command.text)
    head = words[0]
    if head == "pip":
        return Adapted(None, note="setup: the README's `make setup` installs the pinned versions instead")
    if head == "watch":
        return Adapted(None, note="GPU monitor (nvidia-smi): no GPU on this machine")
    if head == "tensorboard":
        logdir = _flag(words, "--logdir") or "runs/"
        if _flag(words, "--logdir_spec"):
            return Adapted(None, note="not checked: `tensorboard --inspect` (how the other tensorboard lines are "
                                      "checked without serving) does not take --logdir_spec")
        return Adapted([str((bin_dir or Path(python).parent) / "tensorboard"), "--inspect", "--logdir", logdir],
                       added=["--inspect"], note="`--inspect` added: lists the event files instead of serving")
    if head == "tail":
        return Adapted(["bash", "-c", "tail -n 2 " + " ".join(w for w in words[1:] if w != "-f")],
                       added=["-f → -n 2"], note="`-f` replaced by `-n 2` so the command ends")
    if head == "python" and len(words) > 1 and words[1].startswith("tests/"):
        return Adapted(None, note="the seed's test script: see README 'Seed test scripts' for our pytest command")
    if head == "torchrun":
        argv = [str((bin_dir or Path(python).parent) / "torchrun"), *words[1:]]
    elif head == "python" and words[1:3] == ["-m", "torch.distributed.launch"]:
        argv = [python, *words[1:]]
    elif head == "python":
        argv = [python, *words[1:]]
    else:
        return Adapted(None, note=f"not a Strata command ({head})")
    added: list[str] = []
    for name, value in STEP_LIMITS.items():
        added += [name, value]
    if _flag(words, "--mode") == "rl":
        for name, value in RL_LIMITS.items():
            added += [name, value]
    model = _flag(words, "--model")
    if model in CONFIG_ONLY_MODELS and _flag(words, "--init") is None:
        added += ["--init", "scratch"]
    return Adapted(argv + added, added=added)


def _entry_points(workdir: Path) -> None:
    """The seed's scripts are run as ``train.py``/``main.py`` from the working directory: link ours there."""
    for name in ("train.py", "main.py"):
        target = workdir / name
        if not target.exists() and (REPO / name).exists():
            target.symlink_to(REPO / name)


def outcome(rc: int | None, output: str) -> str:
    """'trained', 'refused: <line>' (exit 2) or 'FAILED (rc): <line>'; the line is Strata's one-line message."""
    if rc == 0:
        return "ran"
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    if "Signal 9 (SIGKILL)" in output or rc in (-9, 137):
        return (f"FAILED (exit {rc}): a worker was killed by SIGKILL (the kernel's out-of-memory killer on this "
                f"{_memory_gib()} GiB machine)")
    message = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
    message = re.sub(r"\s+", " ", message)[:300]
    if rc == 2:
        return f"refused: {message}"
    if rc == 1 and message.startswith("error:") and "torch.distributed" in output:
        return f"refused by every worker (the launcher then exits 1): {message}"
    return f"FAILED (exit {rc}): {message}"


def _memory_gib() -> int:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
    except (ValueError, OSError):
        return 0


def run_all(commands: list[SeedCommand], workdir: Path, timeout_s: int, verbose: bool) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STRATA_HUB_MIRROR": str(MIRROR), "TOKENIZERS_PARALLELISM": "false"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    _entry_points(workdir)
    rows = []
    for command in commands:
        adapted = adapt(command)
        row = {"line": command.line, "command": command.text, "added": " ".join(adapted.added), "note": adapted.note}
        if adapted.argv is None:
            row.update(rc=None, result="not run: " + adapted.note, seconds=0.0)
        else:
            start = time.time()
            try:
                proc = subprocess.run(adapted.argv, cwd=workdir, env=env, capture_output=True, text=True,
                                      timeout=timeout_s)
                rc, output = proc.returncode, proc.stdout + proc.stderr
            except subprocess.TimeoutExpired as err:
                rc, output = 124, f"timed out after {timeout_s} s {err.stdout or ''}"
            row.update(rc=rc, result=outcome(rc, output), seconds=round(time.time() - start, 1))
            if adapted.note:
                row["result"] += f" ({adapted.note})"
        rows.append(row)
        if verbose:
            print(f"{row['line']:>5} rc={row['rc']} {row['seconds']:>6}s {row['command'][:90]}\n      {row['result'][:200]}",
                  flush=True)
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict], wall_s: float) -> str:
    import torch
    import transformers

    from strata.training.throughput import device_name

    counts: dict[str, int] = {}
    for row in rows:
        kind = row["result"].split(":", 1)[0].split(" (", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    head = [
        "# The seed pipeline's command lines, run against Strata offline",
        "",
        f"Generated by `python tools/seed_commands.py` on {datetime.date.today().isoformat()}; "
        f"{len(rows)} command lines from `../shared/seeds/{SEED_README.name}` (its README), wall time "
        f"{wall_s / 60:.1f} min.",
        f"Machine: {device_name(torch.device('cpu'))}, {os.cpu_count()} CPUs, {_memory_gib()} GiB, no GPU; Python "
        f"{platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.",
        "Each line ran verbatim from a scratch folder (with `train.py`/`main.py` linked there) with the hub mirror "
        f"and `HF_HUB_OFFLINE=1`; the only flags added are step/example limits ({' '.join(f'{k} {v}' for k, v in STEP_LIMITS.items())}; "
        f"in RL also {' '.join(f'{k} {v}' for k, v in RL_LIMITS.items())}) and `--init scratch` for `gpt2`, whose "
        "config (not its weights) is in the mirror.",
        "",
        "Totals: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + ".",
        "",
        "| README line | command | added | exit | result |",
        "|---|---|---|---|---|",
    ]
    body = [
        f"| {r['line']} | `{_cell(r['command'])}` | {_cell(r['added']) or '-'} | "
        f"{'-' if r['rc'] is None else r['rc']} | {_cell(r['result'])} |"
        for r in rows
    ]
    return "\n".join(head + body) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=int, nargs="*", help="README line numbers to run (default: all)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results" / "seed_commands.md"))
    parser.add_argument("--timeout", type=int, default=900, help="seconds per command")
    parser.add_argument("--workdir", default=None, help="working folder (default: a new temporary one)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    commands = extract_commands()
    if args.only:
        commands = [c for c in commands if c.line in set(args.only)]
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="seed-commands-"))
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = run_all(commands, workdir, args.timeout, verbose=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    if not args.only:
        Path(args.out).write_text(markdown(rows, time.time() - start))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
