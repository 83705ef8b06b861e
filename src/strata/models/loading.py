"""Build or load a model and its tokenizer: scratch or pretrained, LoRA, and a trained folder for evaluation.

The order of decisions is load_for_training's: device and precision (device.py), attention (attention.py),
tokenizer (tokenizers.py), the plan from the config alone (plan.py), quantization checks, and only then weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from strata.errors import StrataError
from strata.hub import resolve_model_path
from strata.models.arguments import ModelArguments
from strata.models.attention import actual_attention, resolve_attention
from strata.models.device import describe_precision, resolve_device, resolve_precision
from strata.models.plan import (
    ModelPlan,
    architecture_kind,
    auto_model_class,
    describe_size,
    meta_model,
    plan_model,
    read_model_config,
    resolve_model_source,
)
from strata.models.quantization import (
    QuantPlan,
    check_quantization,
    describe_quantized_size,
    fused_expert_numel,
    import_bitsandbytes,
    prepare_quantized,
)
from strata.models.registration import register_strata_models
from strata.models.tokenizers import _finish_tokenizer, load_tokenizer, train_bpe_tokenizer

logger = logging.getLogger(__name__)
__all__ = ["LoadedModel", "apply_lora", "count_parameters", "instantiate", "load_for_training", "load_trained"]


@dataclass
class LoadedModel:
    """A model ready for training, with everything we decided about it (logged to TensorBoard)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    kind: str  # "causal" | "seq2seq"
    source: str  # "preset:<name>", "local:<path>", "mirror:<path>", "hub:<id>"
    init: str  # "scratch" | "pretrained"
    device: str
    precision: str
    attn_requested: str
    attn_implementation: str
    is_moe: bool
    total_params: int
    trainable_params: int
    notes: list[str] = field(default_factory=list)
    attn_fallback: str | None = None  # why --use_flash_attention fell back, when it did
    quantization: QuantPlan | None = None

    @property
    def attention_description(self) -> str:
        """What ran and what was asked, e.g. "sdpa (requested flash_attention_2; fell back: ...)"."""
        text = f"{self.attn_implementation} (requested {self.attn_requested}"
        return text + (f"; fell back: {self.attn_fallback})" if self.attn_fallback else ")")

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable_params / max(1, self.total_params)

    @property
    def precision_description(self) -> str:
        """The precision as it runs, e.g. "bf16 autocast, fp32 weights" (logs, TensorBoard, metrics.json)."""
        return describe_precision(self.precision, self.model)


def instantiate(plan: ModelPlan, attn: str, quantization: QuantPlan | None = None, auto_attention: bool = True,
                device: str = "cpu") -> PreTrainedModel:
    """Build (scratch) or load (pretrained) the model; fall back from sdpa to eager only under auto."""
    auto_class = auto_model_class(plan.kind)

    def build(implementation: str | None) -> PreTrainedModel:
        kwargs: dict[str, Any] = {}
        if implementation is not None:
            kwargs["attn_implementation"] = implementation
        if plan.init == "scratch":
            return auto_class.from_config(plan.config, **kwargs)
        if quantization is not None:
            kwargs["quantization_config"] = quantization.bnb_config()
            # bitsandbytes places the weights where they are quantized: the CPU even when a GPU is visible.
            kwargs["device_map"] = {"": "cpu"} if device == "cpu" else None
        try:
            return auto_class.from_pretrained(plan.model_path, config=plan.config, **kwargs)
        except OSError as error:
            raise StrataError(f"could not load weights of {plan.model_path} ({str(error).splitlines()[0]}); "
                              "offline without weights, use --init scratch") from error

    try:
        return build(attn)
    except (ValueError, ImportError) as error:
        if not auto_attention:
            raise StrataError(f"{plan.config.model_type} cannot use attn_implementation={attn}: "
                              f"{str(error).splitlines()[0]}") from error
        logger.warning("attention %s unavailable for %s (%s); falling back to eager", attn,
                       plan.config.model_type, str(error).splitlines()[0])
        return build("eager")


def apply_lora(model: PreTrainedModel, args: ModelArguments, kind: str) -> PreTrainedModel:
    from peft import LoraConfig, TaskType, get_peft_model

    targets: str | list[str] = "all-linear" if args.lora_target_modules in (["auto"], ["all-linear"]) \
        else list(args.lora_target_modules)
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=targets,
                        task_type=TaskType.SEQ_2_SEQ_LM if kind == "seq2seq" else TaskType.CAUSAL_LM)
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        reason = str(error).splitlines()[0]
        # peft wraps MoE routers/experts (3-D parameters) in ParamWrapper, which has no dropout.
        fix = "pass --lora_dropout 0" if "lora_dropout" in reason else "name modules with --lora_target_modules"
        raise StrataError(f"LoRA could not attach to {model.config.model_type}: {reason}; {fix}") from error


def count_parameters(model: PreTrainedModel) -> tuple[int, int]:
    """(total, trainable) weights, as transformers' num_parameters() counts them (a PeftModel forwards it).

    num_parameters() counts a bitsandbytes Params4bit by the weights it holds, not its packed bytes, but it cannot
    see the fused 3-D MoE experts we quantize ourselves (quantize_fused_experts: a parametrization over packed
    uint8 storage): it would count half of each 4-bit expert weight (a tiny 4-bit Mixtral: 189,376 instead of
    287,680), so those are added back at the size they hold. Quantized weights are frozen: trainable is exact.
    """
    packed = fused_expert_numel(model)
    total = model.num_parameters() + sum(packed[id(p)] - p.numel() for p in model.parameters() if id(p) in packed)
    return total, model.num_parameters(only_trainable=True)


def load_for_training(args: ModelArguments, mirror: str | None, *, train_texts: list[str] | None = None,
                      tokenizer_dir: Path | None = None, dropout: float | None = None,
                      seed: int = 0, max_length: int | None = None, log=print) -> LoadedModel:
    """The whole model path of ``strata train``: decide, check, report, then build (``max_length``: the run's
    --max_length, which --match_flops_of matches FLOPs at)."""
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    attention = resolve_attention(args, device)
    if attention.fallback:
        logger.warning("--use_flash_attention: %s; using %s attention instead", attention.fallback,
                       attention.implementation)
    tokenizer, tok_source = _training_tokenizer(args, mirror, train_texts, tokenizer_dir)
    plan = plan_model(args, len(tokenizer), tokenizer, mirror, dropout=dropout, max_length=max_length)
    quantization = check_quantization(args, plan, device, precision)
    size = describe_size(plan.num_params)
    if quantization is not None:
        import_bitsandbytes()
        size += "; " + describe_quantized_size(meta_model(plan.config, plan.kind), quantization)
    log(f"model {plan.source} ({plan.kind}, init {plan.init}{', MoE' if plan.is_moe else ''}); {size}")
    torch.manual_seed(seed)
    model = instantiate(plan, attention.implementation, quantization,
                        auto_attention=args.attn_implementation == "auto", device=device)
    model, notes = _prepare_for_training(model, args, plan, quantization, log)
    total, trainable = count_parameters(model)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, kind=plan.kind, source=plan.source, init=plan.init,
                         device=device, precision=precision, attn_requested=attention.requested,
                         attn_implementation=actual_attention(model), is_moe=plan.is_moe, total_params=total,
                         trainable_params=trainable, notes=[f"tokenizer: {tok_source}", *notes],
                         attn_fallback=attention.fallback, quantization=quantization)
    log(f"trainable parameters: {trainable:,} of {total:,} ({loaded.trainable_percent:.2f}%); "
        f"attention {loaded.attention_description}; device {device}; "
        f"precision {loaded.precision_description}")
    return loaded


def _training_tokenizer(args: ModelArguments, mirror: str | None, train_texts: list[str] | None,
                        tokenizer_dir: Path | None) -> tuple[PreTrainedTokenizerBase, str]:
    """--train_tokenizer (or a preset's bpe:N) trains one on the training split; otherwise load_tokenizer."""
    preset, path, _init = resolve_model_source(args, mirror)
    trained = args.train_tokenizer
    if trained is None and args.tokenizer is None and preset is not None and preset.tokenizer.startswith("bpe:"):
        trained = preset.tokenizer
    if not trained:
        return load_tokenizer(args, path, preset, mirror)
    if not train_texts or tokenizer_dir is None:
        raise StrataError("--train_tokenizer needs training text; it is trained on the training split")
    return train_bpe_tokenizer(trained, train_texts, tokenizer_dir), f"trained {trained} on the training split"


def _prepare_for_training(model: PreTrainedModel, args: ModelArguments, plan: ModelPlan,
                          quantization: QuantPlan | None, log) -> tuple[PreTrainedModel, list[str]]:
    """After the weights: k-bit preparation, the MoE aux loss, gradient checkpointing, then LoRA (in that order)."""
    notes: list[str] = []
    if quantization is not None:
        notes += prepare_quantized(model, quantization)
        for line in notes:
            log(line)
    if plan.is_moe and hasattr(model.config, "output_router_logits"):
        # MoE: the router auxiliary (load-balancing) loss is only added when router logits are returned.
        model.config.output_router_logits = True
        notes.append(f"MoE router aux loss on (coef {getattr(model.config, 'router_aux_loss_coef', '?')})")
    if args.gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise StrataError(f"{model.config.model_type} does not support gradient checkpointing; drop the flag")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if args.use_lora:
        model = apply_lora(model, args, plan.kind)
    return model, notes


def load_trained(path: str, mirror: str | None = None, device: str = "auto", quantization: QuantPlan | None = None):
    """Load a trained model folder (a run's final/, merged/ or an adapter folder) for evaluation.

    ``quantization``: adapters trained on a 4/8-bit base are evaluated on the base quantized the same way, so
    `strata eval RUN` reproduces the run's own numbers.
    """
    register_strata_models()
    folder = Path(path)
    if folder.is_dir() and not (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        raise StrataError(f"{path} holds no model (no config.json or adapter_config.json); pass a run folder "
                          "or its final/ or merged/")
    if (folder / "adapter_config.json").exists():
        from peft import PeftModel

        from strata.models.artifacts import resolve_adapter_base

        # The base named relative to the adapter folder (a run's ../base_model), not to the working directory.
        base_path = resolve_adapter_base(folder, mirror)
        base_config = read_model_config(base_path)
        auto_class = auto_model_class(architecture_kind(base_config))
        if quantization is not None:
            device = resolve_device(device)
            base = auto_class.from_pretrained(base_path, quantization_config=quantization.bnb_config(),
                                              device_map={"": "cpu"} if device == "cpu" else None)
            prepare_quantized(base, quantization)
        else:
            base = auto_class.from_pretrained(base_path)
        model = PeftModel.from_pretrained(base, str(folder))
    else:
        resolved = resolve_model_path(path, mirror)
        config = read_model_config(resolved)
        model = auto_model_class(architecture_kind(config)).from_pretrained(resolved)
    tokenizer = _finish_tokenizer(AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else path))
    if quantization is None:  # bitsandbytes placed quantized weights already
        model.to(resolve_device(device))
    model.eval()
    return model, tokenizer
