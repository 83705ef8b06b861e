"""``strata datasets [show ID]``: the registry's table and one entry in full, with a real formatted example.

Printing is command-line glue, so it lives here beside ``strata.cli`` and not in ``strata.data.registry``,
which keeps the lookup and the refusals (the data layer never imports upward into the formatter to print).
"""

from __future__ import annotations

import os

from strata.data.formatting import load_formatted
from strata.data.registry import SPECS, VISION_MODELS, DatasetSpec, get_spec
from strata.errors import StrataError

USAGE = "usage: strata datasets [show ID [--dataset_config C] [--hub_mirror DIR]]"


def main(argv: list[str]) -> int:
    """The table without arguments; ``show ID [--dataset_config C] [--hub_mirror DIR]`` for one entry."""
    if not argv:
        print(format_table())
        return 0
    if argv[0] != "show" or len(argv) < 2:
        raise StrataError(USAGE)
    dataset_id, rest = argv[1], argv[2:]
    config = _flag_value(rest, "--dataset_config")
    mirror = _flag_value(rest, "--hub_mirror") or os.environ.get("STRATA_HUB_MIRROR")
    print(describe(dataset_id, config, mirror))
    return 0


def _flag_value(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _cell(value: str) -> str:
    return value or "-"


def short_source(spec: DatasetSpec) -> str:
    """The schema source in a few words for the table (`strata datasets show` prints it whole)."""
    source = spec.schema_source
    if source.startswith("shared mirror"):
        return "mirror" + (" + card (qqp, mnli, qnli)" if "card" in source else "")
    if ".py (" in source:
        return "hub loader " + source.split(": ", 1)[1].split(" (", 1)[0]
    if source.startswith(f"huggingface.co/datasets/{spec.hub_id}"):
        return "hub card" + (" + issue" if "issue" in source else "")
    return source.split(" (", 1)[0] or "-"


def format_table() -> str:
    """The table `strata datasets` prints: one line per dataset, with its status and schema source."""
    header = ("dataset", "aliases", "family", "configs", "train/eval", "modes", "status", "source")
    rows = [header]
    for spec in SPECS:
        configs = ",".join(spec.configs) if spec.configs else "-"
        if spec.configs_open:
            configs += ",..."
        rows.append(
            (
                spec.hub_id,
                _cell(",".join(spec.aliases)),
                spec.family + (" (vision)" if spec.requires_vision else ""),
                configs,
                f"{spec.train_split}/{spec.eval_split}" + ("*" if spec.eval_carve else ""),
                ",".join(spec.modes),
                spec.status + ("+" if spec.gated or spec.streams_by_default else ""),
                short_source(spec),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append("* seeded carve of the only labelled split; + gated or streamed by default (see "
                 "`strata datasets show ID`); status: verified_offline = real files in the shared mirror, "
                 "checked_against_card = schema from the public card/loader, unsupported = refused (reason in show)")
    return "\n".join(lines)


def _status_line(spec: DatasetSpec) -> str:
    if spec.status == "verified_offline" and spec.schema_source.startswith("built in"):
        text = "verified_offline (built in: generated in code, formatted by the tests)"
    elif spec.status == "verified_offline":
        text = "verified_offline (real files in the shared mirror are formatted by the tests)"
    elif spec.status == "checked_against_card":
        text = "checked_against_card (schema from the public card/loader; a fixture in that schema is tested)"
    else:
        text = f"unsupported: {spec.status_reason}"
    extras = [
        "gated on the hub (needs `hf auth login` or HF_TOKEN)" if spec.gated else "",
        "streamed by default (too large to download whole)" if spec.streams_by_default else "",
        f"needs a vision-language model ({VISION_MODELS})" if spec.requires_vision else "",
        f"hub revision {spec.revision}" if spec.revision else "",
    ]
    return "; ".join([text, *[e for e in extras if e]])


def describe(dataset_id: str, config: str | None = None, mirror: str | None = None) -> str:
    """What `strata datasets show ID --dataset_config C` prints: the spec and one real formatted example."""
    spec = get_spec(dataset_id).for_config(config)
    config = config or spec.default_config
    carve = spec.eval_carve
    lines = [
        f"dataset:  {spec.hub_id}" + (f" (config {config})" if config else ""),
        f"about:    {spec.description}",
        f"status:   {_status_line(spec)}",
        f"source:   {spec.schema_source or '-'}",
        f"aliases:  {', '.join(spec.aliases) or '-'}",
        f"family:   {spec.family}    modes: {', '.join(spec.modes)}    tag: {spec.tag}    domain: {spec.domain}",
        f"configs:  {', '.join(spec.configs) or '-'}"
        + (" (and others on the hub)" if spec.configs_open else ""),
        f"splits:   train={spec.train_split} eval={spec.eval_split}"
        + (f"; {spec.eval_note}" if spec.eval_note else ""),
        f"carve:    {carve.describe() if carve else 'none (train and eval are different splits)'}",
        f"columns:  {', '.join(spec.expected_columns)} (expected in the raw rows)",
    ]
    if spec.label_words:
        lines.append("labels:   " + ", ".join(f"{i}={w}" for i, w in enumerate(spec.label_words)))
    try:
        if spec.requires_vision:  # one Q/A pair with its image (data/vision.py), not the text formatter's refusal
            from strata.data.vision import describe_example

            example = describe_example(spec, mirror)
        else:
            example = load_formatted(
                spec.hub_id, config, mode=spec.modes[0], mirror=mirror, purpose="eval", max_examples=1
            ).dataset[0]
    except StrataError as err:
        lines.append(f"example:  not available offline ({err})")
    else:
        lines.append("example:")
        lines.extend(f"  {key}: {value!r}" for key, value in example.items())
    return "\n".join(lines)
