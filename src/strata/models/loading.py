"""Build or load a model and its tokenizer: presets, local/mirror/hub ids, scratch or pretrained.

Everything that can be decided from the config (architecture kind, MoE, parameter count,
device, precision, attention, quantization) is decided and checked *before* any weights load,
so impossible combinations fail in a second with one clear line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from strata.config import ModelArguments
from strata.errors import StrataError
from strata.hub import resolve_model_path
from strata.models.attention import AttentionChoice, actual_attention, resolve_attention
from strata.models.presets import Preset, get_preset
from strata.models.quantization import (
    QuantPlan,
    check_quantization,
    describe_quantized_size,
    import_bitsandbytes,
    logical_numel,
    prepare_quantized,
)
from strata.models.registration import register_strata_models
from strata.models.tokenizers import _finish_tokenizer, load_tokenizer, train_bpe_tokenizer

logger = logging.getLogger(__name__)
__all__ = ["AttentionChoice", "LoadedModel", "ModelPlan", "load_for_training", "load_trained", "resolve_attention",
           "train_bpe_tokenizer"]

ENCODER_ONLY_TYPES = {
    "bert", "roberta", "deberta", "deberta-v2", "distilbert", "albert", "electra", "xlm-roberta",
    "camembert", "mpnet", "modernbert", "ernie", "megatron-bert",
}
MOE_CONFIG_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
BYTES_PER_PARAM = {"fp32": 4.0, "bf16": 2.0, "8-bit": 1.0, "4-bit": 0.5}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors")


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


# ---------------------------------------------------------------------------- device and precision
def resolve_device(requested: str) -> str:
    """auto picks cuda, then mps, then cpu; an explicitly requested unavailable device is an error."""
    has_cuda = torch.cuda.is_available()
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if requested == "auto":
        return "cuda" if has_cuda else "mps" if has_mps else "cpu"
    if requested == "cuda" and not has_cuda:
        raise StrataError("--device cuda was requested but no CUDA GPU is visible; use --device cpu (or auto)")
    if requested == "mps" and not has_mps:
        raise StrataError("--device mps was requested but Apple MPS is not available; use --device cpu (or auto)")
    return requested


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """True on x86 CPUs with AMX tiles for bf16 (Sapphire Rapids and later), read from /proc/cpuinfo's flags."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return any(line.startswith("flags") and "amx_bf16" in line.split() for line in cpuinfo.splitlines())


def resolve_precision(requested: str, device: str) -> str:
    """auto: bf16 (or fp16) on CUDA; on a CPU bf16 only with AMX, where bf16 matmuls are several times faster.

    AVX512-BF16 alone is not enough (oneDNN calls such a CPU bf16-capable): on a 2-core AVX512-BF16 EPYC
    without AMX (2026-12-01) the default job took 65-68 s in bf16 autocast against 52-61 s in fp32 over 3
    seeds, and reached accuracy 0.64/0.98/0.98 against 0.94/0.99/0.88. On AVX2-only CPUs a bf16 step
    takes minutes. `--precision bf16` still asks for it anywhere.
    """
    if requested == "auto":
        if device == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device == "cpu":
            return "bf16" if cpu_has_amx() else "fp32"
        return "fp32"
    if requested == "fp16" and device != "cuda":
        raise StrataError(f"--precision fp16 needs CUDA (device is {device}); use --precision bf16 or fp32")
    if requested == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise StrataError("this GPU does not support bf16; use --precision fp16 or fp32")
    return requested


_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.uint8: "4-bit",
                torch.int8: "int8"}


def describe_precision(precision: str, model: torch.nn.Module) -> str:
    """Name what Trainer will do with ``precision`` and what the weights are stored in.

    Trainer's ``bf16=True``/``fp16=True`` is autocast: matmuls run in half precision while the weights
    (and optimizer state) stay in the dtype they were loaded in, so "bf16" alone would overstate it.
    """
    dtypes: dict[str, int] = {}
    for param in model.parameters():
        name = _DTYPE_NAMES.get(param.dtype, str(param.dtype).removeprefix("torch."))
        dtypes[name] = dtypes.get(name, 0) + param.numel()
    weights = "+".join(sorted(dtypes, key=lambda n: -dtypes[n])) or "no"
    if precision == "fp32":
        return f"fp32 compute, {weights} weights"
    scaling = " with loss scaling" if precision == "fp16" else ""
    return f"{precision} autocast{scaling}, {weights} weights"


# ---------------------------------------------------------------------------- configs
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


def _auto_class(kind: str):
    return AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM


def count_parameters_from_config(config: PretrainedConfig, kind: str) -> int | None:
    """Exact parameter count without allocating weights (built on the meta device)."""
    model = meta_model(config, kind)
    return None if model is None else sum(p.numel() for p in model.parameters())


def meta_model(config: PretrainedConfig, kind: str) -> PreTrainedModel | None:
    """The model built on the meta device (shapes, no memory), or None where the config cannot build one."""
    register_strata_models()
    try:
        with torch.device("meta"):
            return _auto_class(kind).from_config(config)
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


# ---------------------------------------------------------------------------- models
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
    """Refuse encoder-only models, and packing where it would leak, from the config alone (no data, no weights)."""
    config = config_from_flags(args, mirror)
    if config is None:
        return
    kind = architecture_kind(config)
    if use_packing:
        from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

        model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None) if kind == "causal" else None
        if not getattr(model_class, "_supports_attention_backend", False):
            raise StrataError(f"--use_packing needs a decoder whose attention honours packed position_ids; "
                              f"{config.model_type} does not (its state would leak across examples): "
                              "drop --use_packing")


def plan_model(args: ModelArguments, vocab_size: int, tokenizer: PreTrainedTokenizerBase,
               mirror: str | None, dropout: float | None = None) -> ModelPlan:
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
    if args.match_params:
        config = _match_params(config)
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


def _match_params(config: PretrainedConfig) -> PretrainedConfig:
    if config.model_type != "stratified" or config.stratified_type != "none":
        raise StrataError("--match_params widens the dense stratified baseline to a routing variant's size; "
                          "use it with --stratified_type none (or a stratified-none-* preset)")
    from strata.models.stratified import match_params

    routed = type(config)(**{**config.to_dict(), "stratified_type": "routing"})
    target = count_parameters_from_config(routed, "causal")
    return match_params(config, target) if target else config


def _set_dropout(config: PretrainedConfig, dropout: float) -> None:
    for key in ("dropout", "attention_dropout", "hidden_dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop",
                "dropout_rate", "attention_probs_dropout_prob", "hidden_dropout_prob"):
        if hasattr(config, key):
            setattr(config, key, dropout)


def instantiate(plan: ModelPlan, attn: str, quantization: QuantPlan | None = None, auto_attention: bool = True,
                device: str = "cpu") -> PreTrainedModel:
    """Build (scratch) or load (pretrained) the model; fall back from sdpa to eager only under auto."""
    auto_class = _auto_class(plan.kind)

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


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) weights; 4/8-bit storage counts the weights it holds, not its packed bytes."""
    sizes = logical_numel(model)
    total = sum(sizes.get(id(p), p.numel()) for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def load_for_training(args: ModelArguments, mirror: str | None, *, train_texts: list[str] | None = None,
                      tokenizer_dir: Path | None = None, dropout: float | None = None,
                      seed: int = 0, log=print) -> LoadedModel:
    """The whole model path of ``strata train``: decide, check, report, then build."""
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    attention = resolve_attention(args, device)
    if attention.fallback:
        logger.warning("--use_flash_attention: %s; using %s attention instead", attention.fallback,
                       attention.implementation)
    attn = attention.implementation
    preset, path, _init = resolve_model_source(args, mirror)
    trained = args.train_tokenizer
    if trained is None and args.tokenizer is None and preset is not None and preset.tokenizer.startswith("bpe:"):
        trained = preset.tokenizer
    if trained:
        if not train_texts or tokenizer_dir is None:
            raise StrataError("--train_tokenizer needs training text; it is trained on the training split")
        tokenizer, tok_source = train_bpe_tokenizer(trained, train_texts, tokenizer_dir), \
            f"trained {trained} on the training split"
    else:
        tokenizer, tok_source = load_tokenizer(args, path, preset, mirror)
    plan = plan_model(args, len(tokenizer), tokenizer, mirror, dropout=dropout)
    quantization = check_quantization(args, plan, device, precision)
    size = describe_size(plan.num_params)
    if quantization is not None:
        import_bitsandbytes()
        size += "; " + describe_quantized_size(meta_model(plan.config, plan.kind), quantization)
    log(f"model {plan.source} ({plan.kind}, init {plan.init}{', MoE' if plan.is_moe else ''}); {size}")
    torch.manual_seed(seed)
    model = instantiate(plan, attn, quantization, auto_attention=args.attn_implementation == "auto",
                        device=device)
    notes = [f"tokenizer: {tok_source}"]
    if quantization is not None:
        quant_notes = prepare_quantized(model, quantization)
        notes += quant_notes
        for line in quant_notes:
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
    total, trainable = count_parameters(model)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, kind=plan.kind, source=plan.source, init=plan.init,
                         device=device, precision=precision, attn_requested=attention.requested,
                         attn_implementation=actual_attention(model), is_moe=plan.is_moe, total_params=total,
                         trainable_params=trainable, notes=notes, attn_fallback=attention.fallback,
                         quantization=quantization)
    log(f"trainable parameters: {trainable:,} of {total:,} ({loaded.trainable_percent:.2f}%); "
        f"attention {loaded.attention_description}; device {device}; "
        f"precision {loaded.precision_description}")
    return loaded


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
        auto_class = _auto_class(architecture_kind(base_config))
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
        model = _auto_class(architecture_kind(config)).from_pretrained(resolved)
    tokenizer = _finish_tokenizer(AutoTokenizer.from_pretrained(str(folder) if folder.is_dir() else path))
    if quantization is None:  # bitsandbytes placed quantized weights already
        model.to(resolve_device(device))
    model.eval()
    return model, tokenizer

