"""The older pipeline's spellings (``--batch_size``, ``--fp16``, ``--bf16``, ``--local-rank``, ``--grpo_beta``, ...)
as the flags they mean.

Users arrive with command lines written for an earlier training pipeline. Each alias is rewritten into the
canonical flag(s) *before* argparse sees the command line, so everything downstream (the per-mode flag table,
``args.json``, run names) only ever sees canonical names. An alias and its canonical flag given with different
values is refused in one line: argparse would otherwise let whichever came last win, silently.
"""

from __future__ import annotations

import os
from typing import Any

from strata.errors import StrataError

BATCH_TARGETS = ("per_device_train_batch_size", "per_device_eval_batch_size")
PRECISION_SWITCHES = {"fp16": "fp16", "bf16": "bf16"}
LOCAL_RANK_SPELLINGS = ("local_rank", "local-rank")
# The seed pipeline's RL flags -> TRL's GRPOConfig fields (one place; --mode rl only, see strata.flag_usage).
RENAMED: dict[str, str] = {
    "grpo_beta": "beta",
    "grpo_group_size": "num_generations",
    "rl_learning_rate": "learning_rate",
    "rl_warmup_steps": "warmup_steps",
}

# alias -> what it means, as `--help` and docs/flags.md print it
ALIASES: dict[str, str] = {
    "batch_size": "--per_device_train_batch_size N, and --per_device_eval_batch_size N unless that is given",
    "fp16": "--precision fp16",
    "bf16": "--precision bf16",
    "local_rank": "set by `python -m torch.distributed.launch`; checked against $LOCAL_RANK, otherwise unused",
    **{alias: f"--{target} (TRL's GRPOConfig name)" for alias, target in RENAMED.items()},
}


def _name(arg: str) -> str:
    return arg[2:].split("=", 1)[0].replace("-", "_")


def _value_of(argv: list[str], flag: str) -> str | None:
    """The last value written for canonical ``--flag`` in argv (``--flag v`` or ``--flag=v``), else None."""
    value = None
    for i, arg in enumerate(argv):
        if not arg.startswith("--") or _name(arg) != flag:
            continue
        if "=" in arg:
            value = arg.split("=", 1)[1]
        elif i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _take_value(argv: list[str], i: int, alias: str, what: str) -> tuple[str, int]:
    """The value of the alias at argv[i] and the index after it."""
    arg = argv[i]
    if "=" in arg:
        return arg.split("=", 1)[1], i + 1
    if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
        raise StrataError(f"--{alias} needs {what}, e.g. --{alias} 8" if alias == "batch_size"
                          else f"--{alias} needs {what}")
    return argv[i + 1], i + 2


def _as_int(alias: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise StrataError(f"--{alias} {value!r} is not a whole number; pass e.g. --{alias} 8") from None


def expand_argv(argv: list[str], file_keys: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """argv with the aliases replaced by canonical flags (``file_keys``: flags a --config file already sets)."""
    rest: list[str] = []
    batch: list[int] = []
    precisions: list[str] = []
    renamed: dict[str, list[str]] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        name = _name(arg) if arg.startswith("--") else ""
        if name == "batch_size":
            value, i = _take_value(argv, i, "batch_size", "a per-device batch size")
            batch.append(_as_int("batch_size", value))
        elif name in PRECISION_SWITCHES:
            if "=" in arg:
                raise StrataError(f"--{name} is a switch and takes no value; write --{name} alone, or "
                                  f"--precision {PRECISION_SWITCHES[name]}")
            precisions.append(PRECISION_SWITCHES[name])
            i += 1
        elif name in RENAMED:
            value, i = _take_value(argv, i, name, f"a value for --{RENAMED[name]}")
            renamed.setdefault(name, []).append(value)
        elif name == "local_rank":
            value, i = _take_value(argv, i, arg[2:].split("=", 1)[0], "a rank")
            check_local_rank(value)
        else:
            rest.append(arg)
            i += 1
    out = list(rest)
    if batch:
        if len(set(batch)) > 1:
            raise StrataError(f"--batch_size is given twice with different values ({batch[0]} and {batch[-1]}); "
                              "pass it once")
        size = batch[0]
        written = _value_of(rest, BATCH_TARGETS[0])
        if written is not None and written.strip() != str(size):
            raise StrataError(f"--batch_size {size} conflicts with --per_device_train_batch_size {written} "
                              "(--batch_size is its older name); pass only one of them")
        for target in BATCH_TARGETS:
            if _value_of(rest, target) is None and not (target == BATCH_TARGETS[1] and target in file_keys):
                out += [f"--{target}", str(size)]
    if precisions:
        if len(set(precisions)) > 1:
            raise StrataError("--fp16 and --bf16 both given; choose one (or --precision fp16|bf16|fp32|auto)")
        written = _value_of(rest, "precision")
        if written is not None and written != precisions[0]:
            raise StrataError(f"--{precisions[0]} conflicts with --precision {written} (--{precisions[0]} means "
                              f"--precision {precisions[0]}); pass only one of them")
        if written is None:
            out += ["--precision", precisions[0]]
    for alias, values in renamed.items():
        out += _renamed_flag(alias, values, _value_of(rest, RENAMED[alias]))
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def _renamed_flag(alias: str, values: list[str], written: str | None) -> list[str]:
    """``--target value`` for an older RL flag, or a one-line refusal when the spellings disagree."""
    target = RENAMED[alias]
    if any(not _same(v, values[0]) for v in values):
        raise StrataError(f"--{alias} is given twice with different values ({values[0]} and {values[-1]}); "
                          "pass it once")
    if written is not None:
        if not _same(written, values[0]):
            raise StrataError(f"--{alias} {values[0]} conflicts with --{target} {written} (--{alias} is its older "
                              "name); pass only one of them")
        return []
    return [f"--{target}", values[0]]


def check_local_rank(value: str) -> None:
    """``torch.distributed.launch`` passes --local-rank=N; it must agree with the environment it also sets."""
    rank = _as_int("local-rank", value)
    env = os.environ.get("LOCAL_RANK")
    if env is None:
        raise StrataError(f"--local-rank {rank} is for processes started by a launcher, but $LOCAL_RANK is not "
                          "set; start the run with torchrun (or drop --local-rank)")
    if int(env) != rank:
        raise StrataError(f"--local-rank {rank} disagrees with $LOCAL_RANK={env}; let the launcher pass it")


def expand_mapping(values: dict[str, Any], source: str) -> dict[str, Any]:
    """The same aliases as keys of a --config file (``batch_size: 8``, ``fp16: true``)."""
    out = dict(values)
    if "batch_size" in out:
        size = out.pop("batch_size")
        if not isinstance(size, int) or isinstance(size, bool):
            raise StrataError(f"config file {source}: batch_size: {size!r} is not an integer; fix the value")
        train = out.get(BATCH_TARGETS[0])
        if train is not None and train != size:
            raise StrataError(f"config file {source}: batch_size {size} conflicts with per_device_train_batch_size "
                              f"{train} (batch_size is its older name); keep only one")
        out[BATCH_TARGETS[0]] = size
        out.setdefault(BATCH_TARGETS[1], size)
    for alias, target in RENAMED.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if target in out and not _same(out[target], value):
            raise StrataError(f"config file {source}: {alias} {value} conflicts with {target} {out[target]} "
                              f"({alias} is its older name); keep only one")
        out[target] = value
    chosen = []
    for key, precision in PRECISION_SWITCHES.items():
        if key not in out:
            continue
        switch = out.pop(key)
        if switch is not True:
            raise StrataError(f"config file {source}: {key}: {switch!r} has no Strata meaning; write "
                              f"`{key}: true` (= precision: {precision}) or set precision instead")
        chosen.append(precision)
    if len(chosen) > 1:
        raise StrataError(f"config file {source}: fp16 and bf16 both set; keep one (or set precision)")
    if chosen:
        written = out.get("precision")
        if written is not None and written != chosen[0]:
            raise StrataError(f"config file {source}: {chosen[0]}: true conflicts with precision: {written}; "
                              "keep only one")
        out["precision"] = chosen[0]
    return out


def add_alias_help(parser, mode: str = "sft") -> None:
    """List the older RL spellings in `--mode rl --help` (``--batch_size`` is an option string of its flag; --fp16,
    --bf16 and --local_rank are TrainingArguments fields whose help says what they mean)."""
    if mode != "rl":
        return
    group = parser.add_argument_group("older pipeline's spellings (rewritten to the flags above before parsing)")
    for alias in RENAMED:
        group.add_argument(f"--{alias}", metavar="VALUE", help=f"same as {ALIASES[alias]}")
