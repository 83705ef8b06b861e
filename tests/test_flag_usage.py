"""The per-mode flag table: every parser flag has a row, the docs print the table, and refusals happen."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from strata.config import ALL_ARGUMENT_CLASSES, build_parser, parse_run_config
from strata.errors import StrataError
from strata.flag_aliases import ALIASES
from strata.flag_usage import FLAG_MODES, MODES, markdown_table

DOCS = Path(__file__).resolve().parents[1] / "docs" / "flags.md"


def test_every_parser_flag_has_a_row_and_no_row_is_stale():
    parser = build_parser()
    options = {opt[2:].replace("-", "_") for action in parser._actions for opt in action.option_strings
               if opt.startswith("--")} - {"help", "config"} - set(ALIASES)
    field_names = {f.name for cls in ALL_ARGUMENT_CLASSES for f in fields(cls)}
    assert options == field_names  # the parser offers exactly the dataclass fields ...
    assert set(FLAG_MODES) == field_names  # ... and the table has one row per field
    for flag, (modes, instead) in FLAG_MODES.items():
        assert modes and modes <= set(MODES), flag
        assert (modes == set(MODES)) == (instead == ""), f"--{flag}: an unused flag needs its alternative"


def test_docs_print_the_table():
    assert markdown_table() in DOCS.read_text(), "docs/flags.md is stale: paste strata.flag_usage.markdown_table()"


@pytest.mark.parametrize("mode", MODES)
def test_each_unused_flag_is_refused_and_each_used_one_accepted(mode):
    for flag, (modes, _) in FLAG_MODES.items():
        if flag in ("mode", "merge_lora"):  # --merge_lora needs --use_lora; tried below
            continue
        argv = ["--mode", mode, f"--{flag}"] + _value(flag)
        if mode in modes:
            try:
                parse_run_config(argv)
            except StrataError as error:  # a value check may object, never the table
                assert "is not used by --mode" not in str(error), flag
        else:
            with pytest.raises(StrataError, match=f"--{flag} is not used by --mode {mode}"):
                parse_run_config(argv)
    assert parse_run_config(["--mode", mode, "--use_lora", "--merge_lora"]).model.merge_lora


def test_defaults_and_flags_a_mode_uses_pass():
    assert parse_run_config(["--mode", "rl", "--grpo_beta", "0.2", "--rl_learning_rate", "1e-6"]).train.grpo_beta == 0.2
    assert parse_run_config(["--mode", "pretrain", "--learning_rate", "1e-3"]).train.learning_rate == 1e-3


def _value(flag: str) -> list[str]:
    """A well-typed value for --flag (nothing for booleans)."""
    for cls in ALL_ARGUMENT_CLASSES:
        for f in fields(cls):
            if f.name == flag:
                kind = str(f.type)
                if "bool" in kind:
                    return []
                if "float" in kind:
                    return ["0.5"]
                if "int" in kind:
                    return ["3"]
                return ["x"]
    raise KeyError(flag)
