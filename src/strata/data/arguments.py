"""The data flags of ``strata train`` / ``strata eval`` (``--dataset``, splits, columns, packing, streaming).

They live in the data layer because ``strata.data.pipeline`` and ``strata.data.streaming`` read them;
``strata.config`` gathers them with the model and training flags for HfArgumentParser.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_DATASET = "strata/synthetic-strata"


@dataclass
class DataArguments:
    """Which data, how it is split, formatted, mixed, tokenized and packed."""

    dataset: str = field(
        default=DEFAULT_DATASET,
        metadata={"help": "Dataset id or alias (see `strata datasets`), or a local jsonl/csv/parquet file or folder."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset config, e.g. sst2 for glue."})
    datasets: list[str] | None = field(
        default=None, metadata={"help": "Several datasets to mix (with --mixture_rates); overrides --dataset."}
    )
    dataset_configs: list[str] | None = field(
        default=None, metadata={"help": "One config per --datasets entry; write None for no config."}
    )
    mixture_rates: list[float] | None = field(
        default=None, metadata={"help": "Sampling rate per --datasets entry; positive, summing to 1."}
    )
    mixture_size: int | None = field(
        default=None,
        metadata={"help": "Rows in the mixed training set (default: as many as the sources give at these rates "
                          "without repeating a row). Larger: an exhausted source is reshuffled and reused."},
    )
    train_split: str | None = field(
        default=None, metadata={"help": "Training split in datasets' split syntax, e.g. 'train[:90%%]', 'test[:10000]'."}
    )
    eval_split: str | None = field(
        default=None, metadata={"help": "Evaluation split, e.g. 'validation' or 'train[90%%:]'. Default: from the spec."}
    )
    train_splits: list[str] | None = field(
        default=None,
        metadata={"help": "One training split per --datasets entry (None: --train_split or the spec's), "
                  "e.g. for TweetEval 'test[:10000]'."},
    )
    eval_splits: list[str] | None = field(
        default=None,
        metadata={"help": "One evaluation split per --datasets entry (None: --eval_split or the spec's)."},
    )
    text_column: str | None = field(default=None, metadata={"help": "Text column of a local dataset."})
    label_column: str | None = field(default=None, metadata={"help": "Label column of a local dataset."})
    label_names: list[str] | None = field(
        default=None, metadata={"help": "Label words of a local dataset, in label-id order."}
    )
    prompt_template: str | None = field(
        default=None, metadata={"help": "Prompt template with {text} (and {text2} for pairs) placeholders."}
    )
    task: str = field(
        default="auto",
        metadata={"help": "Task family: auto (from the spec), classification, multiple_choice, qa, math, code, "
                  "instruction, pretrain."},
    )
    hub_mirror: str | None = field(
        default=None, metadata={"help": "Local mirror folder in the hub's layout (default: $STRATA_HUB_MIRROR)."}
    )
    max_length: int = field(default=256, metadata={"help": "Maximum tokens per training row."})
    max_train_examples: int | None = field(default=None, metadata={"help": "Cap the training examples."})
    max_eval_examples: int | None = field(default=300, metadata={"help": "Cap the evaluation examples."})
    use_packing: bool = field(
        default=False, metadata={"help": "Pack several examples per row (position ids restart, no cross-attention)."}
    )
    streaming: str = field(
        default="auto",
        metadata={"help": "Read the training data as a stream (datasets' IterableDataset), tokenized and packed on "
                  "the fly: auto (on for corpora too large to download) | true (also just --streaming) | false. "
                  "Needs --max_steps; pretraining only.",
                  "nargs": "?", "const": "true"},
    )
