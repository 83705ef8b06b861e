"""``--streaming``: pretraining corpora read as ``datasets.IterableDataset`` and tokenized on the fly.

The registry's huge corpora (``DatasetSpec.streams_by_default``) cannot be downloaded whole, so nothing here
ever holds a split: rows are opened with ``load_dataset(..., streaming=True)`` (the json/csv/parquet builder
over mirror or local files, the hub otherwise), formatted and chunked per row, shuffled in a buffer, mixed
with ``interleave_datasets`` and cut into training rows inside the stream. Only the evaluation rows become a
regular ``Dataset`` (the first ``--max_eval_examples`` of the eval stream).

Row semantics (docs/packing.md): without ``--use_packing`` a stream is cut by the very function
``tokenize_pretraining`` maps (``pretraining_encoder``, documents joined with EOS per batch of
``TOKENIZE_BATCH`` documents), so the same documents in the same order give the same rows. With
``--use_packing`` each batch's documents are packed greedily into ``max_length`` rows whose
``position_ids`` restart at every document (no attention across documents, no padding inside a batch);
the loaded path instead packs its EOS-joined chunks best-fit-decreasing, so positions restart per chunk.

A stream never ends: each source repeats (in the same order) when exhausted, so the Trainer's single
"epoch" spans all ``--max_steps`` and its batch count is the data position (see ``resume`` below).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from strata import hub
from strata.data import synthetic
from strata.data.arguments import DataArguments
from strata.data.examples import SOURCE_COLUMN, EvalSource, Examples, TokenizedData, source_flags
from strata.data.formatting import TEXT_FEATURES, checked_spec, chunk_text, format_example, label_id
from strata.data.registry import REGISTRY
from strata.data.sources import canonical_dataset_id, resolve_dataset
from strata.errors import StrataError

SHUFFLE_BUFFER = 1000  # documents held by each source's shuffle buffer (datasets' default; huge corpora have long documents)
TOKENIZE_BATCH = 1000  # documents joined per map batch: tokenize_pretraining's batch_size, hence its rows
_ON, _OFF = ("true", "yes", "1", "on"), ("false", "no", "0", "off")

# Resuming: Trainer restores a checkpoint's global step and, unless ignore_data_skip, replays the train
# dataloader past the batches already consumed (accelerate.skip_first_batches iterates and drops them).
# That is what Strata relies on: the stream is a pure function of the seed (shuffle buffers and
# interleave_datasets draw from generators seeded afresh on each iteration), so the replayed batches are
# exactly the consumed ones and the resumed run continues where the interrupted one stopped. The
# alternative, IterableDataset.state_dict()/load_state_dict() with ignore_data_skip, would skip the
# re-reading but is not exact: datasets documents that a shuffle buffer's contents are lost on resume, and
# accelerate's dataloader prefetches a batch, so the saved state would sit one batch ahead of the weights.
# The cost of replaying is reading and tokenizing the consumed data once more (no forward passes).


def streaming_value(raw: str | bool | None) -> bool | None:
    """``--streaming`` as True/False, or None for auto (on for specs marked ``streams_by_default``)."""
    if raw is None or isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text == "auto":
        return None
    if text in _ON:
        return True
    if text in _OFF:
        return False
    raise StrataError(f"--streaming {raw!r} is not one of auto, true, false")


def _sources(data: DataArguments) -> list[tuple[str, str | None]]:
    if data.datasets:
        return list(zip(data.datasets, data.dataset_configs or [None] * len(data.datasets)))
    return [(data.dataset, data.dataset_config)]


def _marked_huge(dataset_id: str, config: str | None) -> bool:
    if Path(dataset_id).expanduser().exists():
        return False
    spec = REGISTRY.get(canonical_dataset_id(dataset_id))
    if spec is None:
        return False
    try:
        return spec.for_config(config).streams_by_default
    except StrataError:  # a bad config is reported by formatting with its own line
        return False


def uses_streaming(data: DataArguments, mode: str) -> bool:
    """Whether this run streams: the flag when given, else whether any source is a huge pretraining corpus."""
    value = streaming_value(data.streaming)
    if value is not None:
        return value
    return mode == "pretrain" and any(_marked_huge(i, c) for i, c in _sources(data))


def check_streaming_flags(config, given: set[str]) -> None:
    """``check_stream_request`` for a parsed run configuration (what ``strata.config`` calls)."""
    check_stream_request(config.data, config.train.mode, config.train.max_steps, config.model.stratum_source, given)


def check_stream_request(d: DataArguments, mode: str, max_steps: int, stratum_source: str | None,
                         given: set[str]) -> None:
    """Refuse, in one line and before anything loads, what a streamed run cannot honour.

    The training and model flags it needs come in as values (``given``: the flags named on the command line).
    """
    streaming_value(d.streaming)
    if not uses_streaming(d, mode):
        return
    why = "" if "streaming" in given else " (on by default for this corpus; --streaming false loads it whole)"
    if mode != "pretrain":
        raise StrataError(f"--streaming is for --mode pretrain; --mode {mode} loads its split whole (cap it with "
                          "--max_train_examples)")
    if "max_steps" not in given or max_steps <= 0:
        raise StrataError(f"--streaming needs --max_steps N: a stream has no length to count epochs from{why}")
    if "num_train_epochs" in given:
        raise StrataError("--num_train_epochs has no meaning on a stream: a streamed run trains --max_steps steps "
                          f"(a source that ends first starts again); drop --num_train_epochs{why}")
    for flag in ("train_split", "eval_split", "train_splits", "eval_splits"):
        values = getattr(d, flag)
        for value in values if isinstance(values, list) else [values]:
            if value is not None and ("[" in value or "+" in value):
                raise StrataError(f"--{flag} {value!r}: a stream reads whole splits, so slices and '+' need its "
                                  "length; name one split and cap it with --max_train_examples/--max_eval_examples"
                                  f"{why}")
    if d.mixture_size is not None:
        raise StrataError(f"--mixture_size sizes a loaded mixture; a stream mixes as it trains, so --max_steps "
                          f"sets how much it reads{why}")
    if d.max_eval_examples is None:
        raise StrataError(f"--streaming evaluates on the first --max_eval_examples rows of the eval stream; pass "
                          f"--max_eval_examples N{why}")
    if stratum_source in ("clusters", "lid_bins"):
        raise StrataError(f"--stratum_source {stratum_source} is fitted on the loaded training rows, "
                          f"which a stream does not hold; use learned/hash or --streaming false{why}")


# ---------------------------------------------------------------------------- opening and formatting
def open_stream(dataset_id: str, config: str | None, split: str, mirror: str | None) -> datasets.IterableDataset:
    """One split as an IterableDataset: mirror/local files through the json/csv/parquet builder, else the hub."""
    source = resolve_dataset(dataset_id, config, mirror)
    if source.kind == "builtin":
        return hub.select_split(synthetic.build_splits(), split, dataset_id=source.location).to_iterable_dataset()
    if source.kind == "hub":
        return datasets.load_dataset(source.location, config, split=split, streaming=True)
    if split not in source.files:
        raise StrataError(f"split '{split}' is not in dataset '{dataset_id}'; available splits: "
                          f"{', '.join(source.files) or 'none'} (choose one with --train_split/--eval_split)")
    files = source.files[split]
    builders = {hub.DATA_EXTENSIONS[Path(f).suffix] for f in files}
    if len(builders) > 1:
        raise StrataError(f"dataset '{dataset_id}' mixes file types {sorted(builders)}; convert them to one format")
    return datasets.load_dataset(builders.pop(), data_files={split: files}, split=split, streaming=True)


@dataclass
class StreamSource:
    """One formatted source stream and what the run records about it."""

    stream: datasets.IterableDataset
    tag: str
    family: str
    split: str
    carve_skip: int = 0  # leading raw rows held out for evaluation (specs that carve eval from train)


def formatted_stream(dataset_id: str, config: str | None, split: str | None, mode: str, mirror: str | None,
                     purpose: str, data: DataArguments, max_eval: int | None) -> StreamSource:
    """Open, harmonize and format one split as ``{"text"}`` rows, chunked like ``load_formatted`` does."""
    spec, config = checked_spec(dataset_id, config, mode, text_column=data.text_column,
                                label_column=data.label_column, label_names=data.label_names,
                                prompt_template=data.prompt_template, task=data.task)
    split = split or spec.split_for(purpose)
    raw = open_stream(spec.id, config, split, mirror)
    carve_skip = 0
    if spec.eval_carve is not None and split == spec.eval_carve.source_split:
        # A stream cannot be shuffled whole and cut: evaluation takes its first max_eval rows, training the rest.
        carve_skip = max_eval or 0
        raw = raw.take(carve_skip) if purpose == "eval" else raw.skip(carve_skip)
    if spec.family == "classification":
        raw = raw.filter(lambda example: label_id(spec, example.get(spec.label_column)) >= 0)
    chunk_chars = spec.chunk_chars

    def to_text(batch: dict[str, list]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        texts = [format_example(spec, config, row, mode)["text"] for row in rows]
        if chunk_chars:
            texts = [piece for text in texts for piece in chunk_text(text, chunk_chars)]
        return {"text": texts}

    # A hub stream may not declare its features: then its first row names the columns to drop.
    columns = raw.column_names or list(next(iter(raw.take(1)), {}))
    formatted = raw.map(to_text, batched=True, batch_size=100, remove_columns=columns, features=TEXT_FEATURES)
    return StreamSource(formatted, spec.tag, spec.family, split, carve_skip)


def training_stream(sources: list[StreamSource], rates: list[float], seed: int,
                    max_examples: int | None) -> datasets.IterableDataset:
    """Shuffle each source in a buffer, repeat it forever, mix by rate; ``max_examples`` = take(n), repeated.

    A mixture draws each document's source i.i.d. with ``interleave_datasets(probabilities=rates, seed=seed)``
    over never-ending sources (a source that ends starts again), the rule ``mixture.mix`` follows for loaded
    data; realised shares match the rates up to sampling noise.
    """
    parts = [s.stream.shuffle(seed=seed, buffer_size=SHUFFLE_BUFFER) for s in sources]
    if len(parts) == 1:
        stream = parts[0]
    else:
        parts = [part.map(lambda _row, i=i: {SOURCE_COLUMN: i}).repeat(None) for i, part in enumerate(parts)]
        stream = datasets.interleave_datasets(parts, probabilities=list(rates), seed=seed,
                                              stopping_strategy="first_exhausted")
    if max_examples is not None:
        stream = stream.take(max_examples)
    return stream.repeat(None)


def eval_rows(source: StreamSource, max_eval: int) -> datasets.Dataset:
    """The first ``max_eval`` formatted rows of an eval stream, as a regular Dataset."""
    rows = list(itertools.islice(iter(source.stream), max_eval))
    if not rows:
        raise StrataError(f"the evaluation split '{source.split}' of {source.tag} is empty; choose another "
                          "--eval_split")
    return datasets.Dataset.from_list(rows, features=TEXT_FEATURES)


# ---------------------------------------------------------------------------- tokenizing and packing
def packed_pretraining_encoder(tokenizer: Any, max_length: int):
    """A batched ``map`` function: the batch's documents (+EOS) packed greedily into rows of ``max_length``.

    A document that does not fit the rest of a row fills it and continues in the next one; ``position_ids``
    restart at 0 at every document and every row, so with ``PackingCollator`` no document attends to another
    and no document's first token is predicted from its neighbour. The last row of a batch may be shorter.
    """
    from strata.data.encoding import encode_texts, special_tokens

    if max_length < 2:
        raise StrataError(f"max_length={max_length} is too small; use at least 2")
    eos = special_tokens(tokenizer).require_eos(tokenizer)

    def encode(batch: dict[str, list]) -> dict[str, list]:
        docs = [d + [eos] for d in encode_texts(tokenizer, batch["text"]) if len(d)]
        if not docs:
            return {"input_ids": [], "labels": [], "position_ids": []}
        lengths = np.asarray([len(d) for d in docs], dtype=np.int64)
        ids = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs])
        doc_start = np.repeat(np.cumsum(lengths) - lengths, lengths)
        within_doc = np.arange(len(ids), dtype=np.int64) - doc_start
        cuts = list(range(max_length, len(ids), max_length))
        rows = np.split(ids, cuts)
        row_start = np.asarray([0, *cuts], dtype=np.int64)
        out_ids, out_pos = [], []
        for row, start in zip(rows, row_start.tolist()):
            if len(row) < 2:  # a 1-token row predicts nothing
                continue
            positions = within_doc[start : start + len(row)].copy()
            # A document cut by the row boundary restarts at 0 in the new row.
            restarts = np.flatnonzero(positions == 0)
            head = int(restarts[0]) if restarts.size else len(row)
            positions[:head] = np.arange(head)
            out_ids.append(row.tolist())
            out_pos.append(positions.tolist())
        return {"input_ids": out_ids, "labels": [list(r) for r in out_ids], "position_ids": out_pos}

    return encode


def tokenize_stream(stream: datasets.IterableDataset, tokenizer: Any, max_length: int,
                    use_packing: bool) -> datasets.IterableDataset:
    """Token rows from a ``{"text"}`` stream, produced as the Trainer reads them."""
    from strata.data.tokenization import pretraining_encoder

    encode = packed_pretraining_encoder(tokenizer, max_length) if use_packing else \
        pretraining_encoder(tokenizer, max_length)
    columns = stream.column_names or ["text", SOURCE_COLUMN]
    rows = stream.map(encode, batched=True, batch_size=TOKENIZE_BATCH,
                      remove_columns=[c for c in columns if c in ("text", SOURCE_COLUMN)])
    return rows


# ---------------------------------------------------------------------------- the pipeline's streaming branch
def load_stream_examples(data: DataArguments, mode: str, seed: int) -> Examples:
    """``pipeline.load_examples`` for a streamed run: a never-ending training stream, eval rows taken whole."""
    from strata.data.mixture import mixture_tag

    ids, configs, rates, train_splits, eval_splits = source_flags(data)
    trains, evals, sources = [], [], []
    for dataset_id, config, train_split, eval_split in zip(ids, configs, train_splits, eval_splits):
        train = formatted_stream(dataset_id, config, train_split, mode, data.hub_mirror, "train", data,
                                 _eval_cap(data, len(ids)))
        evaluation, eval_stream = _stream_eval(data, dataset_id, config, eval_split, mode, len(ids))
        trains.append(train)
        evals.append(evaluation)
        sources.append({"dataset": dataset_id, "config": config, "train_split": train.split, "train_examples": None,
                        "streaming": True, "family": train.family, "tag": train.tag,
                        "train_skips_first": train.carve_skip, "eval_split": eval_stream.split,
                        "eval_examples": len(evaluation.dataset)})
    if len(trains) > 1:
        for rate, source in zip(rates, sources):
            source["rate"] = rate
    stream = training_stream(trains, rates, seed, data.max_train_examples)
    tag = trains[0].tag if len(trains) == 1 else mixture_tag([t.tag for t in trains], rates)
    families = {t.family for t in trains}
    family = families.pop() if len(families) == 1 else "mixed"
    return Examples(train=stream, evals=evals, family=family, tag=tag, sources=sources, streaming=True)


def stream_eval_sources(data: DataArguments, mode: str) -> list[tuple[EvalSource, str]]:
    """``pipeline.load_eval_sources`` for a streamed run: the same first rows of each eval stream."""
    ids, configs, _rates, _train_splits, eval_splits = source_flags(data)
    out = []
    for dataset_id, config, eval_split in zip(ids, configs, eval_splits):
        evaluation, stream = _stream_eval(data, dataset_id, config, eval_split, mode, len(ids))
        out.append((evaluation, stream.split))
    return out


def _eval_cap(data: DataArguments, n_sources: int) -> int:
    return max(1, data.max_eval_examples // n_sources)


def _stream_eval(data: DataArguments, dataset_id: str, config: str | None, eval_split: str | None, mode: str,
                 n_sources: int) -> tuple[EvalSource, StreamSource]:
    cap = _eval_cap(data, n_sources)
    stream = formatted_stream(dataset_id, config, eval_split, mode, data.hub_mirror, "eval", data, cap)
    return EvalSource(stream.tag, eval_rows(stream, cap), stream.family, None), stream


def tokenize_stream_examples(examples: Examples, tokenizer: Any, kind: str, data: DataArguments) -> TokenizedData:
    """``pipeline.tokenize_examples`` for a streamed run: token rows made as the Trainer reads them.

    Batches are padded to ``max_length`` so every batch has one shape: with several processes accelerate
    dispatches an IterableDataset (rank 0 reads, each rank gets its slice of the concatenated batches), which
    needs equal widths, and 2 processes x batch B then see the rows of 1 process x batch 2B.
    """
    from strata.data.collate import PackingCollator, PaddingCollator
    from strata.data.tokenization import tokenize_pretraining

    if kind == "seq2seq":
        raise StrataError("--mode pretrain needs a decoder-only model; encoder-decoders train with --mode sft")
    train = tokenize_stream(examples.train, tokenizer, data.max_length, data.use_packing)
    parts = [tokenize_pretraining(source.dataset, tokenizer, data.max_length) for source in examples.evals]
    evaluation = datasets.concatenate_datasets(parts) if parts else None
    collator = (PackingCollator(tokenizer, pad_to_multiple_of=data.max_length) if data.use_packing
                else PaddingCollator(tokenizer, pad_to_multiple_of=data.max_length))
    return TokenizedData(train=train, eval=evaluation, collator=collator, loss_tokens=None)
