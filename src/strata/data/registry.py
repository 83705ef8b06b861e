"""The dataset registry: every supported dataset by hub id and alias, and the checks made before loading one.

The spec is the single place that knows a dataset's quirks (which split to evaluate on when there is no
validation split, which label id means what, which configs exist), so the formatting, training and
evaluation code stay generic. The specs live in ``registry_specs`` and ``registry_finance``; ``DatasetSpec``
and its ``status`` (verified_offline / checked_against_card / unsupported) in ``strata.data.spec``.
"""

from __future__ import annotations

import difflib
from typing import Any

from strata.data.registry_finance import FINANCE_SPECS
from strata.data.registry_specs import GENERAL_SPECS
from strata.data.spec import FAMILIES, LABELLED_MODES, MODES, STATUSES, DatasetSpec, EvalCarve
from strata.errors import StrataError

__all__ = [
    "FAMILIES", "LABELLED_MODES", "MODES", "REGISTRY", "STATUSES", "DatasetSpec", "EvalCarve", "alias_table",
    "check_model_supports", "describe", "format_table", "get_spec", "hub_refusal",
]

_SPECS: tuple[DatasetSpec, ...] = GENERAL_SPECS + FINANCE_SPECS
REGISTRY: dict[str, DatasetSpec] = {spec.hub_id: spec for spec in _SPECS}


def alias_table() -> dict[str, str]:
    """Lower-cased alias (and hub id, and the name after the owner) → hub id."""
    table: dict[str, str] = {}
    for spec in _SPECS:
        table[spec.hub_id.lower()] = spec.hub_id
        table.setdefault(spec.hub_id.split("/", 1)[-1].lower(), spec.hub_id)
        for alias in spec.aliases:
            table[alias.lower()] = spec.hub_id
    return table


def get_spec(id_or_alias: str) -> DatasetSpec:
    """The spec for a hub id or alias; unknown names get close matches and the local-file route."""
    hub_id = alias_table().get(id_or_alias.strip().lower())
    if hub_id:
        return REGISTRY[hub_id]
    close = difflib.get_close_matches(id_or_alias.lower(), list(alias_table()), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise StrataError(
        f"unknown dataset '{id_or_alias}'; {hint}see `strata datasets`, or pass a local .jsonl/.csv/.parquet file "
        "with --text_column and --label_column"
    )


def unsupported_refusal(spec: DatasetSpec) -> str | None:
    """The one-line refusal for formatting an image dataset as text: its images reach a model only through the
    vision path (``training/vision.py``), never through the text formatter."""
    if spec.requires_vision and spec.status == "unsupported":
        return (f"dataset '{spec.hub_id}' is not supported: {spec.status_reason}; no model can train on it "
                "with Strata today (see docs/datasets.md)")
    if spec.requires_vision:
        return (f"dataset '{spec.hub_id}' has images: it trains only with a vision-language model ({VISION_MODELS}), "
                "whose processor receives the images; as text it would lose them")
    return None


VISION_MODELS = "--model llava-tiny, or a LLaVA model folder with its processor"


def check_model_supports(spec: DatasetSpec, model_config: Any) -> None:
    """Fail fast when an image dataset meets a text-only model (before any download or training)."""
    if not spec.requires_vision:
        return
    has_vision = any(
        getattr(model_config, attr, None) is not None
        for attr in ("vision_config", "vision_tower", "image_token_id")
    )
    if has_vision and spec.status != "unsupported":
        return
    if not has_vision:
        model_type = getattr(model_config, "model_type", type(model_config).__name__)
        raise StrataError(
            f"dataset '{spec.hub_id}' needs a vision-language model (it has images), but '{model_type}' is text-only; "
            f"use {VISION_MODELS}"
        )
    raise StrataError(unsupported_refusal(spec) or f"dataset '{spec.hub_id}' is not supported")


def hub_refusal(hub_id: str, config: str | None = None) -> str | None:
    """Why a registered dataset cannot be loaded from the hub, checked before any download (offline too).

    Script repos without a documented Parquet ``revision`` are refused (datasets >= 4 does not run loading
    scripts); gated repos are refused when huggingface_hub has no token. None when loading may go ahead.
    """
    spec = REGISTRY.get(hub_id)
    if spec is None:
        return None
    try:
        spec = spec.for_config(config)
    except StrataError:
        pass  # an unknown config is reported by the loader with the list of configs
    if spec.loading_script and not spec.revision:
        return (f"dataset '{hub_id}' cannot be loaded from the hub: {spec.status_reason}; make a local copy "
                f"(e.g. with datasets < 4, saved as <split>.jsonl or .parquet) and pass it with --dataset PATH, or "
                f"put it in the mirror as datasets/{hub_id}/<config>/<split>.jsonl")
    if spec.gated:
        from huggingface_hub import get_token  # lazy: only gated entries need it

        if not get_token():
            return (f"dataset '{hub_id}' is gated on the hub: accept its terms at https://huggingface.co/datasets/"
                    f"{hub_id}, then log in with `hf auth login` or set HF_TOKEN (or pass a local copy with "
                    "--dataset PATH)")
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
    for spec in _SPECS:
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
    from strata.data.formatting import load_formatted  # lazy: formatting imports the registry

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
