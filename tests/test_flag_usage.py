"""The per-mode flag table: every parser flag has a row, the docs print the table, and refusals happen."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from strata.config import argument_classes, build_parser, parse_run_config
from strata.errors import StrataError
from strata.flag_aliases import RENAMED
from strata.flag_usage import FLAG_MODES, MODES, markdown_table
from strata.training.arguments import DERIVED, StrataArgumentsMixin, grpo_only_fields, native_fields

DOCS = Path(__file__).resolve().parents[1] / "docs" / "flags.md"


def _parser_fields(mode: str) -> set[str]:
    parser = build_parser(mode=mode)
    names = {opt[2:].replace("-", "_") for action in parser._actions for opt in action.option_strings
             if opt.startswith("--")} - {"help", "config"} - set(RENAMED)
    return {n for n in names if not (n.startswith("no_") and n[3:] in names)}  # HfArgumentParser's --no_X of X


@pytest.mark.parametrize("mode", MODES)
def test_the_parser_offers_the_dataclass_fields_and_every_strata_field_has_a_row(mode):
    field_names = {f.name for cls in argument_classes(mode) for f in fields(cls) if f.init}
    assert _parser_fields(mode) == field_names | {"batch_size"}  # --batch_size: an option string of its flag
    ours = {f.name for cls in argument_classes(mode)[:2] for f in fields(cls)}
    ours |= {f.name for f in fields(StrataArgumentsMixin) if f.init} - set(DERIVED) - {"fp16", "bf16", "local_rank"}
    assert ours <= set(FLAG_MODES), sorted(ours - set(FLAG_MODES))
    assert not set(DERIVED) & set(FLAG_MODES)  # a derived field is refused everywhere, never "yes" somewhere


def test_no_row_is_stale_and_each_unused_flag_names_its_alternative():
    every_field = _parser_fields("rl") | _parser_fields("sft")
    assert set(FLAG_MODES) <= every_field | set(RENAMED), sorted(set(FLAG_MODES) - every_field - set(RENAMED))
    for flag, (modes, instead) in FLAG_MODES.items():
        assert modes and modes <= set(MODES), flag
        assert (modes == set(MODES)) == (instead == ""), f"--{flag}: an unused flag needs its alternative"


def test_grpo_only_fields_are_refused_outside_rl():
    """GRPOConfig's own fields (no row needed) are refused for sft/pretrain, and TRL's fields are what we think."""
    assert {"beta", "num_generations", "epsilon", "loss_type", "top_p"} <= grpo_only_fields()
    assert not grpo_only_fields() & native_fields("sft")
    for flag, value in (("epsilon", "0.3"), ("loss_type", "grpo"), ("top_p", "0.9")):
        with pytest.raises(StrataError, match=f"--{flag} is not used by --mode sft"):
            parse_run_config(["--mode", "sft", f"--{flag}", value])
        assert str(getattr(parse_run_config(["--mode", "rl", f"--{flag}", value]).train, flag)) == value


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
    parsed = parse_run_config(["--mode", "rl", "--grpo_beta", "0.2", "--rl_learning_rate", "1e-5"]).train
    assert (parsed.beta, parsed.learning_rate) == (0.2, 1e-5)  # the seed pipeline's names land on GRPOConfig's
    assert parse_run_config(["--mode", "pretrain", "--learning_rate", "1e-3"]).train.learning_rate == 1e-3


def _value(flag: str) -> list[str]:
    """A well-typed value for --flag (nothing for booleans)."""
    for cls in (*argument_classes("rl"), *argument_classes("sft")[2:]):
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
    if flag in RENAMED:
        return _value(RENAMED[flag])
    raise KeyError(flag)
