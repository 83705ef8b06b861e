"""The arms of a comparison and the flags every run shares: variants, controls, reserved and data flags.

Pure planning: nothing here parses a training config or loads data (``compare.plan`` does, once).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from strata.errors import StrataError

__all__ = [
    "ALL_CONTROLS",
    "ALL_VARIANTS",
    "BASELINE",
    "SIZES",
    "Arm",
    "PlannedRun",
    "check_forwarded",
    "data_flags",
    "has_flag",
    "make_arms",
    "split_list",
]

ALL_VARIANTS = ("none", "attention", "routing", "layers", "moe")
ALL_CONTROLS = ("dense_matched", "flops_matched", "hash")
BASELINE = "none"
SIZES = ("tiny", "small")
# Flags the harness sets per run; forwarding them would silently break the design.
_RESERVED = {
    "--model": "use --model_size (the harness picks stratified-<variant>-<size>)",
    "--stratified_type": "use --variants",
    "--stratum_source": "the hash control sets it; use --controls",
    "--match_params": "the dense_matched controls set it; use --controls",
    "--match_params_to": "the dense_matched controls set it; use --controls",
    "--match_flops_of": "the flops_matched controls set it; use --controls",
    "--seed": "use --seeds N or --seed_list (initialisation seeds) and --data_seed (data order)",
    "--output_dir": "is the comparison folder here; run folders are <output_dir>/runs/<arm>_seed<k>",
    "--resume_from_checkpoint": "finished runs are skipped and unfinished ones restart from scratch",
}


@dataclass
class Arm:
    """One trained configuration: a stratified variant or a control."""

    name: str
    flags: list[str]
    kind: str  # "variant" | "control"
    description: str


@dataclass
class PlannedRun:
    arm: Arm
    seed: int
    folder: Path
    argv: list[str] = field(default_factory=list)
    transfer: list[str] = field(default_factory=list)  # `strata eval` flags of the held-out source, if any



def split_list(text: str) -> list[str]:
    return [item.strip() for item in text.replace(" ", ",").split(",") if item.strip()]


def make_arms(variants: list[str], controls: list[str], size: str) -> list[Arm]:
    """The arms in report order: the variants as given, then the controls."""
    unknown = [v for v in variants if v not in ALL_VARIANTS]
    if unknown:
        raise StrataError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(ALL_VARIANTS)}")
    unknown = [c for c in controls if c not in ALL_CONTROLS]
    if unknown:
        raise StrataError(f"unknown control(s) {', '.join(unknown)}; choose from {', '.join(ALL_CONTROLS)} or none")
    if len(set(variants)) != len(variants) or not variants:
        raise StrataError("--variants must list each variant once, e.g. none,routing")
    arms = [
        Arm(v, ["--model", f"stratified-{v}-{size}"], "variant",
            "dense baseline" if v == BASELINE else f"{v} mechanism, learned router")
        for v in variants
    ]
    mechanisms = [v for v in variants if v != BASELINE]
    if "dense_matched" in controls:  # one per variant: the baseline widened to that variant's parameter count
        arms += [Arm(f"dense_matched_{v}", ["--model", f"stratified-none-{size}", "--match_params",
                                            "--match_params_to", v], "control",
                     f"dense baseline widened to the {v} variant's parameter count") for v in mechanisms]
    if "flops_matched" in controls:  # candidates; plan() keeps those whose parameter match is not a FLOPs match
        arms += [Arm(f"flops_matched_{v}", ["--model", f"stratified-none-{size}", "--match_flops_of", v], "control",
                     f"dense baseline widened to the {v} variant's training FLOPs per token") for v in mechanisms]
    if "hash" in controls:
        arms.append(Arm("hash", ["--model", f"stratified-routing-{size}", "--stratum_source", "hash"], "control",
                        "routing with token-hash strata (negative control)"))
    return arms


def check_forwarded(forwarded: list[str]) -> None:
    for arg in forwarded:
        name = arg.split("=", 1)[0]
        if name in _RESERVED:
            raise StrataError(f"strata compare sets {name} itself: {_RESERVED[name]}")


def has_flag(argv: list[str], name: str) -> bool:
    return any(a == name or a.startswith(name + "=") for a in argv)


def data_flags(args: argparse.Namespace, forwarded: list[str]) -> list[str]:
    """The forwarded flags plus the named mixture, or equal rates when --datasets has none."""
    if args.mixture:
        if has_flag(forwarded, "--datasets") or has_flag(forwarded, "--dataset"):
            raise StrataError("--mixture multidomain defines the data; drop --dataset/--datasets")
        from strata.experiments.multidomain import SOURCES, mixture_flags, without

        sources = without(args.holdout)[0] if getattr(args, "holdout", None) else SOURCES
        return [*forwarded, *mixture_flags(sources)]
    if getattr(args, "holdout", None):
        raise StrataError("--holdout names a source of --mixture multidomain; add --mixture multidomain")
    if has_flag(forwarded, "--datasets") and not has_flag(forwarded, "--mixture_rates"):
        n = _count_datasets(forwarded)
        return [*forwarded, "--mixture_rates", *[repr(1.0 / n)] * n]
    return list(forwarded)


def _count_datasets(argv: list[str]) -> int:
    """How many values follow --datasets (space- or comma-separated)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--datasets="):
            return len(split_list(arg.split("=", 1)[1]))
        if arg == "--datasets":
            values = []
            for value in argv[i + 1:]:
                if value.startswith("--"):
                    break
                values.extend(split_list(value))
            return len(values)
    return 0

