"""What the data pipeline hands a recipe: formatted examples, eval sources, token rows + collator.

Shared by the loaded path (``strata.data.pipeline``) and the streamed one (``strata.data.streaming``), which
the pipeline dispatches to: the containers live below both, so the stream never imports the pipeline.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import datasets

from strata.data.arguments import DataArguments

SOURCE_COLUMN = "source_index"  # a mixture's training rows: index of their dataset in --datasets


@dataclass
class EvalSource:
    """One evaluation set, scored with its own label words (mixtures may mix label sets)."""

    name: str
    dataset: datasets.Dataset
    family: str
    label_words: list[str] | None


@dataclass
class Examples:
    """Formatted examples: ``prompt``/``completion`` (sft, rl) or ``text`` (pretrain).

    With ``streaming`` (``--streaming``, strata.data.streaming) ``train`` is a never-ending
    ``datasets.IterableDataset``; the eval sets are always regular Datasets.
    """

    train: datasets.Dataset | datasets.IterableDataset
    evals: list[EvalSource]
    family: str
    tag: str
    sources: list[dict[str, Any]] = field(default_factory=list)
    streaming: bool = False

    @property
    def label_words(self) -> list[str] | None:
        return self.evals[0].label_words if self.evals else None

    def training_texts(self) -> list[str]:
        if self.streaming:  # a tokenizer trained at start-up sees the stream's leading documents
            return sample_texts(self.train)
        if "text" in self.train.column_names:
            return list(self.train["text"])
        return [p + c for p, c in zip(self.train["prompt"], self.train["completion"])]


@dataclass
class TokenizedData:
    train: datasets.Dataset
    eval: datasets.Dataset | None
    collator: Any
    loss_tokens: int | None  # label-bearing tokens in the training set (None for a stream: not known ahead)


def source_flags(data: DataArguments) -> tuple[list[str], list[str | None], list[float], list, list]:
    """Per-source dataset ids, configs, rates, train splits and eval splits (one source without --datasets)."""
    if data.datasets:
        ids = data.datasets
        configs = data.dataset_configs or [None] * len(ids)
        rates = data.mixture_rates or []
    else:
        ids, configs, rates = [data.dataset], [data.dataset_config], [1.0]
    train_splits = per_source(data.train_splits, data.train_split, len(ids))
    eval_splits = per_source(data.eval_splits, data.eval_split, len(ids))
    return ids, configs, rates, train_splits, eval_splits


def per_source(values: list[str | None] | None, default: str | None, n: int) -> list[str | None]:
    """One split per source: --train_splits/--eval_splits entries, None falling back to the single flag."""
    if values is None:
        return [default] * n
    return [default if value is None else value for value in values]


TOKENIZER_SAMPLE_DOCS = 20_000  # a tokenizer trained at start-up (--train_tokenizer, presets) sees at most
TOKENIZER_SAMPLE_CHARS = 20_000_000  # these many leading documents / characters of the training stream


def sample_texts(stream: datasets.IterableDataset) -> list[str]:
    """The leading documents of a training stream, for a tokenizer trained at start-up."""
    texts, chars = [], 0
    for row in itertools.islice(iter(stream), TOKENIZER_SAMPLE_DOCS):
        texts.append(row["text"])
        chars += len(row["text"])
        if chars >= TOKENIZER_SAMPLE_CHARS:
            break
    return texts
