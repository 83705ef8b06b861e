"""The dataset registry: every supported dataset by hub id and alias, and the checks made before loading one.

The spec is the single place that knows a dataset's quirks (which split to evaluate on when there is no
validation split, which label id means what, which configs exist), so the formatting, training and
evaluation code stay generic. The specs live in ``registry_specs`` and ``registry_finance``; ``DatasetSpec``
and its ``status`` (verified_offline / checked_against_card / unsupported) in ``strata.data.spec``. What
`strata datasets` prints (the table, ``show``) is command-line glue: ``strata.cli_datasets``.
"""

from __future__ import annotations

import difflib
from typing import Any

from strata.data.registry_finance import FINANCE_SPECS
from strata.data.registry_specs import GENERAL_SPECS
from strata.data.spec import FAMILIES, LABELLED_MODES, MODES, STATUSES, DatasetSpec, EvalCarve
from strata.errors import StrataError

__all__ = [
    "FAMILIES", "LABELLED_MODES", "MODES", "REGISTRY", "SPECS", "STATUSES", "DatasetSpec", "EvalCarve", "alias_table",
    "check_model_supports", "get_spec", "hub_refusal",
]

SPECS: tuple[DatasetSpec, ...] = GENERAL_SPECS + FINANCE_SPECS  # in the order `strata datasets` lists them
REGISTRY: dict[str, DatasetSpec] = {spec.hub_id: spec for spec in SPECS}


def alias_table() -> dict[str, str]:
    """Lower-cased alias (and hub id, and the name after the owner) → hub id."""
    table: dict[str, str] = {}
    for spec in SPECS:
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
