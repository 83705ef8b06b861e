"""What will be built, from the flags and the config alone (no weights): source, kind, MoE, size, overrides.

Everything that can be decided from the config (architecture kind, MoE, parameter count) is decided and checked
*before* any weights load, so impossible combinations fail in a second with one clear line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from strata.errors import StrataError
from strata.hub import resolve_model_path
from strata.models.arguments import ModelArguments
from strata.models.presets import Preset, get_preset
from strata.models.registration import register_strata_models

logger = logging.getLogger(__name__)
__all__ = ["ModelPlan", "architecture_kind", "auto_model_class", "check_architecture", "check_matching_flags",
           "config_from_flags", "count_parameters_from_config", "describe_size", "is_moe", "memory_estimate", "meta_model", "plan_model",
           "read_model_config", "resolve_model_source"]

ENCODER_ONLY_TYPES = {
    "bert", "roberta", "deberta", "deberta-v2", "distilbert", "albert", "electra", "xlm-roberta",
    "camembert", "mpnet", "modernbert", "ernie", "megatron-bert",
}
MOE_CONFIG_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "8-bit": 1.0, "4-bit": 0.5}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors")


def architecture_kind(config: PretrainedConfig) -> str:
    """causal or seq2seq; encoder-only models are refused with the reason."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    if config.model_type in ENCODER_ONLY_TYPES and not getattr(config, "is_decoder", False):
        raise StrataError(
            f"{config.model_type} is an encoder-only model: Strata solves every task as text generation "
            "(label words scored as completions), which needs a decoder; use a decoder-only model "
            "(gpt2, llama, qwen3) or an encoder-decoder (t5, bart)"
        )
    return "causal"


def is_moe(config: PretrainedConfig) -> bool:
    return any((getattr(config, key, None) or 0) > 1 for key in MOE_CONFIG_KEYS)


def auto_model_class(kind: str) -> type:
    """The Auto class that builds a ``kind`` ("causal" | "seq2seq") model."""
    return AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM


def count_parameters_from_config(config: PretrainedConfig, kind: str) -> int | None:
    """Exact parameter count without allocating weights (built on the meta device)."""
    model = meta_model(config, kind)
    return None if model is None else model.num_parameters()


def meta_model(config: PretrainedConfig, kind: str) -> PreTrainedModel | None:
    """The model built on the meta device (shapes, no memory), or None where the config cannot build one."""
    register_strata_models()
    try:
        with torch.device("meta"):
            return auto_model_class(kind).from_config(config)
    except Exception as error:  # noqa: BLE001 - an estimate must never stop a run
        logger.debug("building %s on the meta device failed: %s", config.model_type, error)
        return None


def memory_estimate(num_params: int) -> dict[str, float]:
    """Weight memory in GiB per storage format (training adds optimizer state and activations)."""
    return {fmt: num_params * nbytes / 2**30 for fmt, nbytes in BYTES_PER_PARAM.items()}


def describe_size(num_params: int | None) -> str:
    if num_params is None:
        return "parameters: unknown"
    mem = ", ".join(f"{fmt} {gib:.3f} GiB" for fmt, gib in memory_estimate(num_params).items())
    return f"parameters: {num_params:,} ({num_params / 1e6:.2f}M); weights: {mem}"


@dataclass
class ModelPlan:
    """What will be built, decided from flags and config alone (no weights touched)."""

    config: PretrainedConfig
    kind: str
    source: str
    init: str
    model_path: str | None
    preset: Preset | None
    is_moe: bool
    num_params: int | None


def resolve_model_source(args: ModelArguments, mirror: str | None) -> tuple[Preset | None, str | None, str]:
    """(preset, model path or hub id, init) for --model and --init."""
    register_strata_models()
    preset = get_preset(args.model)
    if preset is not None:
        if args.init == "pretrained":
            raise StrataError(f"{args.model} is a preset (a config, no weights); drop --init pretrained "
                              "or pass a model path/id with weights")
        return preset, None, "scratch"
    path = resolve_model_path(args.model, mirror, init=args.init)
    init = "pretrained" if args.init == "auto" else args.init
    return None, path, init


def read_model_config(path: str):
    """AutoConfig for a model folder or hub id, with one line for a folder that holds no usable config."""
    folder = Path(path)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise StrataError(f"{path} holds no model (no config.json); pass a model folder such as a run's final/, "
                          "a preset (see `strata models`) or a hub id")
    try:
        return AutoConfig.from_pretrained(path)
    except OSError as err:
        if "not a valid JSON file" not in str(err):
            raise
        raise StrataError(f"{folder / 'config.json'} is not valid JSON; repair or replace it") from err
    except ValueError as err:
        if "model_type" not in str(err):
            raise
        raise StrataError(f"{folder / 'config.json'} names no known model_type; it is not a transformers "
                          "config (or needs a newer transformers)") from err


def config_from_flags(args: ModelArguments, mirror: str | None) -> PretrainedConfig | None:
    """The model's config from the flags alone (no weights); None for a hub id that is not local."""
    preset, path, init = resolve_model_source(args, mirror)
    if preset is not None:
        return preset.make_config(384)  # the vocabulary size does not change the architecture class
    if path is not None and Path(path).is_dir():
        return _stratified_overrides(args, read_model_config(path), path, init)
    return None


def check_architecture(args: ModelArguments, mirror: str | None, use_packing: bool = False) -> None:
    """Refuse encoder-only models, packing where it would leak, and impossible matching flags, from the config
    alone (no data, no weights)."""
    config = config_from_flags(args, mirror)
    check_matching_flags(args, config)
    if config is None:
        return
    kind = architecture_kind(config)
    if use_packing:
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

        model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None) if kind == "causal" else None
        # is_backend_compatible(): the attention-interface contract (kwargs such as packed position_ids reach
        # every attention layer), which is what packing without cross-example attention needs.
        if model_class is None or not model_class.is_backend_compatible():
            raise StrataError(f"--use_packing needs a decoder whose attention honours packed position_ids; "
                              f"{config.model_type} does not (its state would leak across examples): "
                              "drop --use_packing")


def plan_model(args: ModelArguments, vocab_size: int, tokenizer: PreTrainedTokenizerBase,
               mirror: str | None, dropout: float | None = None, max_length: int | None = None) -> ModelPlan:
    """The plan for the flags; ``max_length`` (the run's --max_length) is the sequence length --match_flops_of
    matches FLOPs per token at."""
    preset, path, init = resolve_model_source(args, mirror)
    special = {k: v for k, v in dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                     bos_token_id=tokenizer.bos_token_id).items() if v is not None}
    if preset is not None:
        overrides: dict[str, Any] = {}
        for flag in ("stratified_type", "stratum_source"):
            value = getattr(args, flag)
            if value is not None:
                if not preset.name.startswith("stratified"):
                    raise StrataError(f"--{flag} applies to stratified-* presets; see `strata models`")
                overrides[flag] = value
        try:
            config = preset.make_config(vocab_size, **overrides)
        except ValueError as error:  # a config class rejecting a value, e.g. an unknown stratified_type
            raise StrataError(f"{preset.name}: {error}") from error
        for key, value in special.items():
            setattr(config, key, value)
        if config.is_encoder_decoder and getattr(config, "decoder_start_token_id", None) is None:
            config.decoder_start_token_id = tokenizer.pad_token_id
        source = f"preset:{preset.name}"
    else:
        assert path is not None
        config = read_model_config(path)
        source = f"{'local' if Path(path).is_dir() else 'hub'}:{path}"
        if init == "scratch" and getattr(config, "vocab_size", vocab_size) < vocab_size:
            config.vocab_size = vocab_size
        config = _stratified_overrides(args, config, path, init)
    check_matching_flags(args, config)
    if args.match_params:
        config = _match_params(config, args.match_params_to or "routing")
    if args.match_flops_of is not None:
        config = _match_flops(config, args.match_flops_of, max_length)
    if dropout is not None:
        _set_dropout(config, dropout)
    kind = architecture_kind(config)
    moe = is_moe(config)
    if init == "pretrained" and path is not None and Path(path).is_dir():
        if not any((Path(path) / name).exists() for name in WEIGHT_FILES):
            raise StrataError(f"{path} has a config but no weights (offline, nothing to load); "
                              "build the model from its config with --init scratch")
    return ModelPlan(config=config, kind=kind, source=source, init=init, model_path=path, preset=preset,
                     is_moe=moe, num_params=count_parameters_from_config(config, kind))


def _stratified_overrides(args: ModelArguments, config: PretrainedConfig, path: str, init: str) -> PretrainedConfig:
    """--stratified_type/--stratum_source on a model folder: rebuild a scratch config, refuse trained weights."""
    for flag in ("stratified_type", "stratum_source"):
        value, current = getattr(args, flag), getattr(config, flag, None)
        if value is None or value == current:
            continue
        if config.model_type != "stratified":
            raise StrataError(f"--{flag} applies to stratified models; {path} is {config.model_type}: drop it")
        if init != "scratch":
            raise StrataError(f"--{flag} {value}: the weights in {path} were trained with {flag}={current}; drop "
                              "the flag, or pass --init scratch to build a new model from this config")
        try:
            config = type(config)(**{**config.to_dict(), flag: value})
        except ValueError as error:
            raise StrataError(f"{path}: {error}") from error
    return config


def check_matching_flags(args: ModelArguments, config: PretrainedConfig | None) -> None:
    """--match_params_to / --match_flops_of that cannot be honoured: one line, before any run folder exists.

    ``config`` is the model's config from the flags (None: a hub id not here, checked again by plan_model)."""
    if args.match_params_to is not None:
        if not args.match_params:
            raise StrataError(f"--match_params_to {args.match_params_to} chooses the variant --match_params matches; "
                              "add --match_params or drop it")
        _check_variant("--match_params_to", args.match_params_to)
    if args.match_flops_of is None:
        return
    _check_variant("--match_flops_of", args.match_flops_of)
    if args.match_params:
        raise StrataError("--match_params and --match_flops_of are two different dense controls; pass one of them")
    if config is None:
        return
    kind = args.stratified_type or getattr(config, "stratified_type", None)  # a preset's config lacks the override
    if config.model_type != "stratified" or kind != "none":
        raise StrataError(f"--match_flops_of widens the dense stratified baseline to the {args.match_flops_of} "
                          "variant's FLOPs; use it with --stratified_type none (or a stratified-none-* preset)")


def _check_variant(flag: str, value: str) -> None:
    from strata.models.stratified.configuration_stratified import STRATIFIED_TYPES

    variants = [t for t in STRATIFIED_TYPES if t != "none"]
    if value not in variants:
        raise StrataError(f"{flag} {value!r} is not one of {', '.join(variants)}")


def _variant(config: PretrainedConfig, variant: str) -> PretrainedConfig:
    """The same backbone with the stratum mechanism ``variant`` (what the widened baseline is matched to)."""
    return type(config)(**{**config.to_dict(), "stratified_type": variant})


def _match_params(config: PretrainedConfig, variant: str = "routing") -> PretrainedConfig:
    if config.model_type != "stratified" or config.stratified_type != "none":
        raise StrataError(f"--match_params widens the dense stratified baseline to a {variant} variant's size; "
                          "use it with --stratified_type none (or a stratified-none-* preset)")
    from strata.models.stratified import match_params

    target = count_parameters_from_config(_variant(config, variant), "causal")
    return match_params(config, target) if target else config


def _match_flops(config: PretrainedConfig, variant: str, max_length: int | None) -> PretrainedConfig:
    if max_length is None:
        raise StrataError("--match_flops_of needs the run's --max_length, which did not reach the model plan "
                          "(plan_model(max_length=...)); use --match_params meanwhile")
    from strata.models.stratified import match_flops

    dense = match_flops(config, _variant(config, variant), max_length)
    logger.info("--match_flops_of %s: intermediate_size %d -> %d (training FLOPs per token matched at %d tokens)",
                variant, config.intermediate_size, dense.intermediate_size, max_length)
    return dense


def _set_dropout(config: PretrainedConfig, dropout: float) -> None:
    for key in ("dropout", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                "dropout_rate", "attention_probs_dropout_prob", "hidden_dropout_prob"):
        if hasattr(config, key):
            setattr(config, key, dropout)

