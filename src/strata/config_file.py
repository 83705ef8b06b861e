"""`--config FILE`: YAML or JSON flag values, checked against the argument dataclasses before use.

A bad file fails with one line naming the file and the key (argparse would print a usage dump that never
names the file): syntax errors with line and column, unknown keys, and values of the wrong type. The older
pipeline's keys (``batch_size``, ``fp16``, ``bf16``) mean what their flags mean (strata.flag_aliases).
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

from strata.errors import StrataError
from strata.flag_aliases import expand_mapping


def _known_keys(classes: tuple[type, ...]) -> set[str]:
    return {f.name for cls in classes for f in fields(cls) if f.init}


def load_config_file(path: str, classes: tuple[type, ...]) -> dict[str, Any]:
    """Read a YAML/JSON config file; unknown keys are an error, not silently dropped."""
    return check_config_values(read_config_file(path), classes, path)


def read_config_file(path: str) -> dict[str, Any]:
    """The file's mapping, with the older pipeline's keys rewritten (syntax checked; keys not yet)."""
    file = Path(path)
    if not file.is_file():
        raise StrataError(f"config file {path} does not exist; pass an existing .yaml or .json file to --config")
    import yaml

    text = file.read_text()
    try:
        values = json.loads(text) if file.suffix.lower() == ".json" else (yaml.safe_load(text) or {})
    except json.JSONDecodeError as err:
        raise StrataError(f"config file {path}: JSON syntax error at line {err.lineno}, column {err.colno}: "
                          f"{err.msg}; fix the file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise StrataError(f"config file {path}: YAML syntax error{where}: {problem}; fix the file") from None
    if not isinstance(values, dict):
        raise StrataError(f"config file {path} must hold a mapping of flag names to values")
    return values


def check_config_values(values: dict[str, Any], classes: tuple[type, ...], path: str) -> dict[str, Any]:
    """Aliases rewritten, then every key known to ``classes`` and every value of its field's type."""
    values = expand_mapping(values, path)  # batch_size / fp16 / bf16 mean what they mean on the command line
    unknown = sorted(set(values) - _known_keys(classes))
    if unknown:
        raise StrataError(
            f"unknown key(s) in {path}: {', '.join(unknown)}; use the flag names of `strata train --help`"
        )
    hints = {name: hint for cls in classes for name, hint in typing.get_type_hints(cls).items()}
    for key in TRI_STATE_KEYS & set(values):  # YAML reads `streaming: true` as a bool; the flag is auto|true|false
        if isinstance(values[key], bool):
            values[key] = str(values[key]).lower()
    for key, value in values.items():
        expected = _type_mismatch(value, hints[key])
        if expected:
            raise StrataError(f"config file {path}: {key}: {value!r} is not {expected}; fix the value "
                              "(see `strata train --help`)")
    return values


TRI_STATE_KEYS = {"streaming"}  # string flags whose values include true/false


def _type_mismatch(value: Any, hint: Any) -> str | None:
    """What `value` should have been for a flag typed `hint`, or None when it fits. Strings are lenient
    (YAML reads `dataset_config: 2020` as a number); lists also take one scalar."""
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        items = value if isinstance(value, list) else [value]
        bad = [_type_mismatch(v, item) for v in items]
        return f"a list of {bad[0] if bad[0] else item.__name__}" if any(bad) else None
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a number"
    if hint is str:
        return None if isinstance(value, (str, int, float)) and not isinstance(value, bool) else "a string"
    return None
