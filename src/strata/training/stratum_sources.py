"""Stratum sources inside ``strata train``: fit ``clusters`` / ``lid_bins`` and feed ``domain`` ids.

A stratified model's non-learned sources need something the model alone cannot supply:

* ``clusters`` and ``lid_bins`` are fitted once, before step 1, on the hidden states of the first training rows
  (``fit_stratum_sources``); their buffers (``centroids``; ``reference`` + ``bin_edges``; ``fitted``) live in the
  state dict, so checkpoints and ``final/`` carry them and a reloaded model assigns the same strata. A model that
  is already fitted (loaded from a fitted run, or resumed from a checkpoint) is never refitted.
* ``domain`` (the oracle) takes each example's *source*: its index in ``--datasets``. Training and eval rows get a
  ``stratum_ids`` column that ``PaddingCollator`` turns into the ``[B]`` forward kwarg; task evaluation of source
  ``i`` feeds ``i`` to every forward (``source_strata``). Where no such per-example source exists (one dataset,
  packed rows, pretraining chunks that join documents, RL generation) the run is refused before it starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import PreTrainedConfig

from strata.data.pipeline import SOURCE_COLUMN, Examples, TokenizedData, tokenize_examples
from strata.errors import StrataError

if TYPE_CHECKING:  # the parsed values are handed down; importing them would pull in transformers
    from strata.training.arguments import RunConfig

FITTED_SOURCES = ("clusters", "lid_bins")
FIT_ROWS = 512  # leading training rows tokenized for fitting
FIT_TOKENS = 8192  # at most this many (non-padded) tokens per layer; all of them are used, none subsampled
FIT_BATCH = 16


def stratified_config(model: Any) -> Any | None:
    """The StratifiedConfig of a stratified variant (a config, or a model through a peft wrapper), else None."""
    if isinstance(model, PreTrainedConfig):
        config = model
    else:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = getattr(base, "config", None)
    if getattr(config, "model_type", None) != "stratified" or config.stratified_type == "none":
        return None
    return config


def planned_config(config: RunConfig) -> Any | None:
    """The model config a run will build, read before any folder exists (a preset or a local folder), else None."""
    from strata.models.plan import read_model_config, resolve_model_source

    preset, path, _init = resolve_model_source(config.model, config.data.hub_mirror)
    if preset is not None:
        if not preset.name.startswith("stratified"):
            return None
        overrides = {flag: getattr(config.model, flag) for flag in ("stratified_type", "stratum_source")
                     if getattr(config.model, flag) is not None}
        try:
            return preset.make_config(384, **overrides)  # the vocabulary size changes no stratum setting
        except ValueError:
            return None  # model loading reports a bad value with its own line
    if path is not None and Path(path).is_dir():
        return read_model_config(path)
    return None


def check_stratum_sources(model: Any, examples: Examples, config: RunConfig) -> None:
    """Refuse a stratum source this run cannot feed (one line each). `model` may be a model or its config:
    ``train`` calls this before the run folder is made, and again on the loaded model."""
    cfg = stratified_config(model)
    if cfg is None:
        return
    source, mode = cfg.stratum_source, config.train.mode
    if source in FITTED_SOURCES and mode == "rl":
        raise StrataError(f"--stratum_source {source} is fitted on tokenized training rows, which --mode rl does "
                          "not build; fit it in an sft run and pass its final/ as --model, or use learned/hash")
    if source != "domain":
        return
    if mode != "sft":
        raise StrataError(f"--stratum_source domain needs one source per example, which --mode {mode} does not "
                          "keep (pretraining chunks join documents, RL generates without it); use --mode sft")
    if config.data.use_packing:
        raise StrataError("--stratum_source domain gives each example its source's stratum, but --use_packing "
                          "joins examples of different sources in one row; drop --use_packing")
    n, strata = len(examples.sources), cfg.num_strata
    if n < 2 or SOURCE_COLUMN not in examples.train.column_names:
        raise StrataError(f"--stratum_source domain takes each example's dataset as its stratum, but {examples.tag} "
                          "is a single dataset; train on a mixture (--datasets a b --mixture_rates 0.5 0.5) "
                          "or choose another --stratum_source")
    if n > strata:
        raise StrataError(f"--stratum_source domain needs a stratum per dataset: {n} datasets but the model has "
                          f"{strata} strata; mix at most {strata} datasets")


def prepare_stratum_sources(model: Any, examples: Examples, tokenized: TokenizedData, tokenizer: Any, kind: str,
                            config: RunConfig, fit: bool, say: Callable[[str], None]) -> TokenizedData:
    """Fit ``clusters`` / ``lid_bins`` (when ``fit`` and not yet fitted) or add ``domain`` ids to the rows."""
    cfg = stratified_config(model)
    if cfg is None:
        return tokenized
    if cfg.stratum_source == "domain":
        return with_domain_ids(examples, tokenized)
    if cfg.stratum_source in FITTED_SOURCES and fit and not is_fitted(model):
        shares = fit_on_training_rows(model, examples, tokenizer, kind, config)
        say(f"fitted {cfg.stratum_source} strata on {shares['tokens']:,} training tokens; stratum shares per "
            f"layer: {shares['shares']}")
    return tokenized


def with_domain_ids(examples: Examples, tokenized: TokenizedData) -> TokenizedData:
    """Add each row's source index as ``stratum_ids``. Tokenization maps example i to row i (sft, unpacked)."""
    sources = examples.train[SOURCE_COLUMN]
    if len(tokenized.train) > len(sources):
        raise StrataError(f"{len(tokenized.train)} tokenized rows for {len(sources)} examples: cannot tell each "
                          "row's source for --stratum_source domain; drop --use_packing")
    train = tokenized.train.add_column("stratum_ids", list(sources[: len(tokenized.train)]))
    evaluation = tokenized.eval
    if evaluation is not None:
        ids = [i for i, source in enumerate(examples.evals) for _ in range(len(source.dataset))]
        if len(ids) != len(evaluation):
            raise StrataError(f"{len(evaluation)} tokenized eval rows for {len(ids)} examples: cannot tell each "
                              "row's source for --stratum_source domain")
        evaluation = evaluation.add_column("stratum_ids", ids)
    return dataclasses.replace(tokenized, train=train, eval=evaluation)


def is_fitted(model: Any) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return all(bool(layer.stratum_source.fitted) for layer in base.model.layers)


def fit_on_training_rows(model: Any, examples: Examples, tokenizer: Any, kind: str,
                         config: RunConfig) -> dict[str, Any]:
    """Fit on the hidden states of the first training rows (at most FIT_TOKENS tokens); return stratum shares."""
    from strata.data.collate import PaddingCollator
    from strata.models.stratified import fit_stratum_sources

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = Examples(train=examples.train.select(range(min(FIT_ROWS, len(examples.train)))), evals=[],
                    family=examples.family, tag=examples.tag)
    data = dataclasses.replace(config.data, use_packing=False)
    rows = tokenize_examples(head, tokenizer, kind, data, config.train.mode, config.train.data_order_seed()).train
    ids, total = [], 0
    for row in rows["input_ids"]:
        if ids and total + len(row) > FIT_TOKENS:
            break
        ids.append(row)
        total += len(row)
    collate = PaddingCollator(tokenizer)
    device = next(base.parameters()).device
    batches = [{k: v.to(device) for k, v in collate([{"input_ids": r} for r in ids[i: i + FIT_BATCH]]).items()
                if k in ("input_ids", "attention_mask")} for i in range(0, len(ids), FIT_BATCH)]
    try:
        shares = fit_stratum_sources(base, batches, seed=config.train.seed, max_tokens=FIT_TOKENS)
    except ValueError as error:  # lid_bins: fewer distinct states than its reference set needs
        raise StrataError(f"--stratum_source {base.config.stratum_source} could not be fitted on the first "
                          f"{len(ids)} training rows ({total} tokens): {error}; use a larger training split") from error
    return {"tokens": total, "shares": shares}


@contextmanager
def source_strata(model: Any, source_index: int | None) -> Iterator[None]:
    """While evaluating source ``source_index`` of a mixture, give a ``domain`` model that index as its stratum.

    Scoring and generation call the model directly, without ``stratum_ids``; a forward pre-hook adds
    ``stratum_ids = [source_index] * B`` to every call that lacks them. Nothing happens for other sources.
    """
    cfg = stratified_config(model)
    if cfg is None or cfg.stratum_source != "domain" or source_index is None:
        yield
        return
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = base.model  # the StratifiedModel: always entered through __call__ (peft calls the head's .forward)

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if kwargs.get("stratum_ids") is None:
            ref = kwargs.get("input_ids")
            ref = ref if ref is not None else kwargs.get("inputs_embeds")
            ref = ref if ref is not None else args[0]
            kwargs["stratum_ids"] = torch.full((ref.shape[0],), int(source_index), dtype=torch.long,
                                               device=ref.device)
        return args, kwargs

    handle = decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
