"""From flags to training rows: load + format (+ mix), then tokenize (+ pack) and pick a collator.

This is the data half of a training recipe, split in two steps because a tokenizer trained on
the data (``--train_tokenizer``) has to see the formatted text before anything is tokenized.
"""

from __future__ import annotations

from typing import Any

import datasets

from strata.data.arguments import DataArguments
from strata.data.examples import SOURCE_COLUMN, EvalSource, Examples, TokenizedData, source_flags
from strata.errors import StrataError

__all__ = ["SOURCE_COLUMN", "EvalSource", "Examples", "TokenizedData", "load_eval_sources", "load_examples",
           "tokenize_examples"]

def load_examples(data: DataArguments, mode: str, seed: int) -> Examples:
    """Load, format and (for --datasets) mix the train split; keep each source's eval split apart."""
    from strata.data.formatting import load_formatted
    from strata.data.mixture import mix, mixture_tag
    from strata.data.streaming import load_stream_examples, uses_streaming

    if uses_streaming(data, mode):
        return load_stream_examples(data, mode, seed)
    ids, configs, rates, train_splits, eval_splits = source_flags(data)
    trains, evals, sources, tags, families = [], [], [], [], []
    for dataset_id, config, train_split, eval_split in zip(ids, configs, train_splits, eval_splits):
        train = load_formatted(
            dataset_id, config, train_split, mode, data.hub_mirror, purpose="train", seed=seed, **_format_flags(data)
        )
        trains.append(train.dataset)
        tags.append(train.tag)
        families.append(train.family)
        sources.append(
            {
                "dataset": dataset_id,
                "config": config,
                "train_split": train.split,
                "train_examples": len(train.dataset),
                "family": train.family,
                "tag": train.tag,
            }
        )
        evaluation = _load_eval(data, dataset_id, config, eval_split, mode, seed, len(ids))
        sources[-1].update(eval_split=evaluation.split, eval_examples=len(evaluation.dataset))
        evals.append(
            EvalSource(evaluation.tag, evaluation.dataset, evaluation.family, evaluation.label_words)
        )
    if len(trains) == 1:
        train_set, tag = trains[0], tags[0]
        train_set = train_set.shuffle(seed=seed)
    else:
        for rate, source in zip(rates, sources):
            source["rate"] = rate
        trains = [part.add_column(SOURCE_COLUMN, [i] * len(part)) for i, part in enumerate(trains)]
        train_set = mix(_common_columns(trains), rates, seed, data.mixture_size)
        tag = mixture_tag(tags, rates)
    if data.max_train_examples is not None:
        train_set = train_set.select(range(min(data.max_train_examples, len(train_set))))
    if len(train_set) == 0:
        raise StrataError(f"the training split of {tag} is empty; choose another --train_split")
    family = families[0] if len(set(families)) == 1 else "mixed"
    return Examples(train=train_set, evals=evals, family=family, tag=tag, sources=sources)


def load_eval_sources(data: DataArguments, mode: str, seed: int) -> list[tuple[EvalSource, str]]:
    """The evaluation sources ``load_examples`` gives training (same rows, same order), each with its
    split, without loading any training split: what ``strata eval RUN`` scores to reproduce a run."""
    from strata.data.streaming import stream_eval_sources, uses_streaming

    if uses_streaming(data, mode):
        return stream_eval_sources(data, mode)
    ids, configs, _rates, _train_splits, eval_splits = source_flags(data)
    out = []
    for dataset_id, config, eval_split in zip(ids, configs, eval_splits):
        evaluation = _load_eval(data, dataset_id, config, eval_split, mode, seed, len(ids))
        source = EvalSource(evaluation.tag, evaluation.dataset, evaluation.family, evaluation.label_words)
        out.append((source, evaluation.split))
    return out


def _format_flags(data: DataArguments) -> dict[str, Any]:
    return dict(
        text_column=data.text_column,
        label_column=data.label_column,
        label_names=data.label_names,
        prompt_template=data.prompt_template,
        task=data.task,
    )


def _load_eval(data: DataArguments, dataset_id: str, config: str | None, eval_split: str | None, mode: str,
               seed: int, n_sources: int):
    """One source's evaluation split; a mixture caps each of its ``n_sources`` at max_eval_examples / n."""
    from strata.data.formatting import load_formatted

    return load_formatted(
        dataset_id,
        config,
        eval_split,
        mode,
        data.hub_mirror,
        purpose="eval",
        seed=seed,
        max_examples=_per_source_cap(data.max_eval_examples, n_sources),
        **_format_flags(data),
    )


def _prefix_for(train: datasets.Dataset, rows_needed: int | None, data: DataArguments, mode: str,
                tok) -> datasets.Dataset:
    """The leading examples a run of ``rows_needed`` rows will consume (all of them when unknown)."""
    if rows_needed is None or mode == "pretrain" or rows_needed >= len(train):
        return train
    if not data.use_packing:
        return train.select(range(rows_needed))
    # Packed rows hold several examples: estimate how many from the mean tokenized length.
    sample = tok(train.select(range(min(256, len(train)))))
    mean_length = max(1.0, sum(len(x) for x in sample["input_ids"]) / max(1, len(sample)))
    wanted = int(rows_needed * data.max_length / mean_length * 1.2) + 256
    return train.select(range(min(len(train), wanted)))


def _per_source_cap(cap: int | None, n: int) -> int | None:
    return None if cap is None else max(1, cap // n)


def _common_columns(parts: list[datasets.Dataset]) -> list[datasets.Dataset]:
    """Keep the harmonized columns every source has, so datasets.concatenate can line them up."""
    common = set(parts[0].column_names)
    for part in parts[1:]:
        common &= set(part.column_names)
    return [part.select_columns([c for c in part.column_names if c in common]) for part in parts]


def tokenize_examples(examples: Examples, tokenizer, kind: str, data: DataArguments, mode: str,
                      seed: int, rows_needed: int | None = None) -> TokenizedData:
    """Tokenize with completion-only labels (or pretraining chunks), then pack or pad.

    ``rows_needed`` (max_steps x global batch) lets a short run on a large dataset tokenize only the
    examples it will see, in the same order a full run would see them.
    """
    from strata.data.collate import PackingCollator, PaddingCollator, seq2seq_collator
    from strata.data.packing import pack_examples
    from strata.data.tokenization import tokenize_completions, tokenize_pretraining, tokenize_seq2seq

    if examples.streaming:
        from strata.data.streaming import tokenize_stream_examples

        return tokenize_stream_examples(examples, tokenizer, kind, data)
    if kind == "seq2seq":
        if mode == "pretrain":
            raise StrataError(
                "--mode pretrain needs a decoder-only model; encoder-decoders train with --mode sft"
            )
        if data.use_packing:
            raise StrataError("--use_packing is for decoder-only models; drop it for T5/BART")

        def tok(ds: datasets.Dataset) -> datasets.Dataset:
            return tokenize_seq2seq(ds, tokenizer, data.max_length, data.max_length)

        collator: Any = seq2seq_collator(tokenizer)
    elif mode == "pretrain":

        def tok(ds: datasets.Dataset) -> datasets.Dataset:
            return tokenize_pretraining(ds, tokenizer, data.max_length)

        collator = PaddingCollator(tokenizer)
    else:

        def tok(ds: datasets.Dataset) -> datasets.Dataset:
            return tokenize_completions(ds, tokenizer, data.max_length)

        collator = PaddingCollator(tokenizer)
    train = tok(_prefix_for(examples.train, rows_needed, data, mode, tok))
    eval_parts = [tok(source.dataset) for source in examples.evals]
    evaluation = datasets.concatenate_datasets(eval_parts) if eval_parts else None
    if data.use_packing:
        if kind == "seq2seq":
            raise StrataError("--use_packing is for decoder-only models")
        train = pack_examples(train, data.max_length, seed=seed)
        collator = PackingCollator(tokenizer)
    loss_tokens = sum(sum(1 for t in labels if t != -100) for labels in train["labels"])
    return TokenizedData(train=train, eval=evaluation, collator=collator, loss_tokens=loss_tokens)
