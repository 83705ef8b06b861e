"""``DatasetSpec``: what Strata knows about one dataset, and how sure it is of it.

A spec names the columns, labels, prompt, splits and modes of a dataset, and also where that schema came from
(``schema_source``) and how it was checked (``status``): ``verified_offline`` when real files in the shared mirror
were formatted by the tests, ``checked_against_card`` when the schema comes from the public dataset card or loading
code (and a fixture in that schema is formatted by the tests), ``unsupported`` when Strata refuses the dataset,
with the reason in ``status_reason``. The spec table itself lives in ``registry_specs`` and ``registry_finance``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from strata.errors import StrataError

FAMILIES = ("classification", "multiple_choice", "qa", "math", "code", "instruction", "pretrain")
MODES = ("sft", "pretrain", "rl")
LABELLED_MODES = ("sft", "pretrain", "rl")
STATUSES = ("verified_offline", "checked_against_card", "unsupported")


@dataclass(frozen=True)
class EvalCarve:
    """A held-out slice cut from a split for datasets that ship only one labelled split.

    The split is shuffled with ``seed`` (fixed per dataset, not the training seed, so every run evaluates
    on the same rows); evaluation uses the last ``fraction`` and training the rest, so they never overlap.
    """

    source_split: str = "train"
    fraction: float = 0.1
    seed: int = 0

    def describe(self) -> str:
        keep = round((1 - self.fraction) * 100, 1)
        held = round(self.fraction * 100, 1)
        return (
            f"{self.source_split} shuffled with seed {self.seed}: first {keep:g}% for training, "
            f"last {held:g}% for evaluation"
        )


@dataclass(frozen=True)
class DatasetSpec:
    """Everything Strata needs to know to load, format and evaluate one dataset."""

    hub_id: str
    family: str
    description: str
    domain: str  # short tag put in every example's `domain` column ("imdb", "sst2", "fpb")
    tag: str  # run/result tag ("imdb-sentiment", "glue-sst2")
    aliases: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    default_config: str | None = None
    configs_open: bool = False  # True when the hub has many configs (e.g. MMLU subjects) not listed here
    train_split: str = "train"
    eval_split: str = "validation"
    eval_note: str = ""
    eval_carve: EvalCarve | None = None
    text_column: str | None = "text"
    text_pair_column: str | None = None
    label_column: str | None = None
    label_words: tuple[str, ...] | None = None  # index = label id in the hub dataset
    score_thresholds: tuple[float, float] | None = None  # continuous score → (negative, neutral, positive)
    question_column: str | None = None
    options_column: str | None = None
    answer_column: str | None = None  # gold answer / reference column
    completion_column: str | None = None  # what the model learns to write, when it is not the answer itself
    answer_is_letter: bool = False
    context_column: str | None = None  # e.g. Alpaca "input"
    subject_column: str | None = None
    domain_column: str | None = None  # per-row domain (synthetic: "synthetic:<domain>")
    reward_columns: tuple[str, ...] = ()  # raw columns kept in formatted rows for rewards (code: code_prompt, test)
    prompt_template: str = "generic_classification"
    modes: tuple[str, ...] = ("sft", "rl", "pretrain")
    status: str = "checked_against_card"
    status_reason: str = ""  # why an entry is unsupported
    schema_source: str = ""  # where the columns/splits were read: the mirror, a card URL path, a loader file
    revision: str | None = None  # a documented hub revision with Parquet files (script-based repos)
    loading_script: bool = False  # the hub repo is a loading script, which datasets >= 4 does not run
    gated: bool = False  # the hub files need accepted terms and a token
    streams_by_default: bool = False  # too large to download whole (streaming is built elsewhere)
    requires_vision: bool = False
    chunk_chars: int | None = None  # pretrain: split very long rows (tiny_shakespeare is one row per split)
    local_path: str | None = None  # set by spec_for_local
    # config → field values that differ for that config; a plain dict so the spec pickles (datasets.map).
    config_overrides: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )
    # field values for any config not named in config_overrides (the open MMLU subject configs)
    other_config_overrides: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"{self.hub_id}: status {self.status!r} is not one of {STATUSES}")
        if self.status == "unsupported" and not self.status_reason:
            raise ValueError(f"{self.hub_id}: an unsupported entry needs a status_reason")

    @property
    def id(self) -> str:
        return self.local_path or self.hub_id

    @property
    def verified_offline(self) -> bool:
        """Real files of this dataset are in the shared mirror and the tests format them."""
        return self.status == "verified_offline"

    @property
    def expected_columns(self) -> tuple[str, ...]:
        """The raw columns formatting reads, in prompt order (what a mirror copy or local file must have)."""
        names = (
            self.text_column if self.family in ("classification", "pretrain") else None,
            self.text_pair_column,
            self.subject_column if self.family == "classification" else None,
            self.question_column,
            self.context_column,
            self.options_column,
            self.label_column,
            self.completion_column,
            self.answer_column,
            *self.reward_columns,
        )
        return tuple(dict.fromkeys(n for n in names if n))

    def for_config(self, config: str | None) -> DatasetSpec:
        """The spec with the chosen config's differences applied (GLUE tasks differ in columns and labels)."""
        config = config or self.default_config
        if self.configs and config not in self.configs and not self.configs_open:
            raise StrataError(
                f"dataset '{self.hub_id}' has no config '{config}'; pass --dataset_config with one of "
                f"{', '.join(self.configs)}"
            )
        if not config:
            return self
        if config in self.config_overrides:
            overrides = dict(self.config_overrides[config])
        else:
            overrides = dict(self.other_config_overrides) if config not in self.configs else {}
        return dataclasses.replace(self, **overrides) if overrides else self

    def split_for(self, purpose: str) -> str:
        if purpose not in ("train", "eval"):
            raise StrataError(f"purpose must be 'train' or 'eval', not '{purpose}'")
        return self.train_split if purpose == "train" else self.eval_split
