"""4/8-bit loading through bitsandbytes (QLoRA), on CUDA or on a CPU.

transformers' bitsandbytes quantizer replaces ``nn.Linear`` layers only. In transformers 5 the experts of an
MoE model (Mixtral's ``MixtralExperts``) are fused 3-D parameters, not linears, so they would silently stay at
full precision; we quantize them ourselves after loading (4-bit: bitsandbytes' NF4 parametrization; 8-bit:
bitsandbytes' row-wise int8 quantization behind a torch parametrization). Routers (``mlp.gate``; a
``MixtralTopKRouter``, not a linear, in transformers 5) and the LM head are never quantized.

Compute dtype: the dtype the quantized matmuls run in. On a CPU it follows the resolved precision: fp32 unless
bf16 was chosen (``--precision auto`` picks bf16 only with AMX, where bf16 matmuls pay; elsewhere bf16 is slow).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from strata.errors import StrataError
from strata.models.bnb_notices import quiet_bitsandbytes_notices

logger = logging.getLogger(__name__)

QUANT_FLAGS = ("load_in_4bit", "load_in_8bit", "moe_load_in_4bit", "moe_load_in_8bit")
# Modules never quantized under the moe_* flags: routers decide which expert runs, and a rounded router
# flips routing decisions. Matched by transformers as a name suffix (``mlp.gate``, not ``mlp.gate_proj``).
ROUTER_PATTERNS = ["gate", "router"]
NF4_BLOCKSIZE = 64  # bitsandbytes' default 4-bit block: one fp32 absmax per 64 weights


@dataclass(frozen=True)
class QuantPlan:
    """What a 4/8-bit flag asked for, decided before any weights load."""

    flag: str
    bits: int
    moe: bool  # routers kept full precision (the moe_* flags)
    compute_dtype: torch.dtype
    skip_modules: list[str] | None  # None: transformers' defaults (the LM head / tied output embeddings)

    def bnb_config(self):
        from transformers import BitsAndBytesConfig

        if self.bits == 4:
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=self.compute_dtype,
                                      bnb_4bit_quant_type="nf4", llm_int8_skip_modules=self.skip_modules)
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=self.skip_modules)

    @property
    def description(self) -> str:
        kind = "4-bit NF4" if self.bits == 4 else "8-bit int8"
        dtype = str(self.compute_dtype).removeprefix("torch.")
        kept = "routers and lm_head" if self.moe else "lm_head"
        return f"{kind} (bitsandbytes), compute {dtype}, {kept} full precision"


def requested_flag(args) -> str | None:
    return next((name for name in QUANT_FLAGS if getattr(args, name)), None)


def compute_dtype_for(precision: str) -> torch.dtype:
    """fp32 unless the run's precision is half: the matmuls then run in that half type anyway."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def bitsandbytes_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def import_bitsandbytes():
    quiet_bitsandbytes_notices()
    import bitsandbytes

    return bitsandbytes


def check_quantization_flags(args, device: str, init: str | None, moe: bool | None) -> str | None:
    """The checks that need no weights (preflight and load): returns the flag, or None when none is set.

    ``init``/``moe`` are None when the model is a hub id not available locally (decided at load time).
    """
    flag = requested_flag(args)
    if flag is None:
        return None
    if device not in ("cuda", "cpu"):
        raise StrataError(f"--{flag}: bitsandbytes runs on CUDA or a CPU, not {device}; pass --device cpu "
                          "or drop the flag")
    if init == "scratch":
        raise StrataError(f"--{flag} quantizes pretrained weights; a model built from its config (scratch) has none "
                          "to quantize before it is trained: drop the flag, or pass a model folder with weights")
    if flag.startswith("moe_") and moe is False:
        raise StrataError(f"--{flag} is for MoE models and {args.model} has no experts; use --{flag[4:]}")
    if not args.use_lora:
        raise StrataError(f"--{flag} freezes the quantized weights (they cannot take gradient steps); add "
                          "--use_lora to train LoRA adapters on top (QLoRA)")
    if args.merge_lora:
        raise StrataError(f"--merge_lora with --{flag} would merge the adapters into rounded weights; drop "
                          "--merge_lora and merge final/ into the full-precision base afterwards")
    if not bitsandbytes_available():
        raise StrataError(f"--{flag} needs bitsandbytes: pip install 'strata[quant]' (or pip install bitsandbytes)")
    return flag


def check_quantization(args, plan, device: str, precision: str) -> QuantPlan | None:
    """Return the QuantPlan for the flags, or None; refuse impossible requests before loading."""
    flag = check_quantization_flags(args, device, plan.init, plan.is_moe)
    return None if flag is None else plan_for_flag(flag, precision)


def plan_for_flag(flag: str, precision: str) -> QuantPlan:
    """The QuantPlan of one flag (training, and `strata eval` of a run trained with it)."""
    moe = flag.startswith("moe_")
    # An explicit skip list replaces transformers' default one, so it must name the LM head itself.
    skip = [*ROUTER_PATTERNS, "lm_head"] if moe else None
    return QuantPlan(flag=flag, bits=4 if flag.endswith("4bit") else 8, moe=moe,
                     compute_dtype=compute_dtype_for(precision), skip_modules=skip)


# ---------------------------------------------------------------------------- fused MoE experts
def fused_expert_parameters(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, parameter name) of every 3-D expert weight (``experts.gate_up_proj`` ...)."""
    found = []
    for module_name, module in model.named_modules():
        if not module_name.split(".")[-1].startswith("experts"):
            continue
        for param_name, param in module.named_parameters(recurse=False):
            if param.ndim >= 3:
                found.append((module_name, module, param_name))
    return found


class Int8RowParametrization(nn.Module):
    """Dequantizes an int8 expert weight (one absmax scale per output row, LLM.int8()'s vector-wise scheme)."""

    def __init__(self, scales: torch.Tensor, shape: torch.Size, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("scales", scales)
        self.shape = shape
        self.dtype = dtype

    @torch.no_grad()
    def forward(self, quantized: torch.Tensor) -> torch.Tensor:
        from bitsandbytes import functional

        rows = functional.int8_vectorwise_dequant(quantized.reshape(-1, self.shape[-1]), self.scales)
        return rows.reshape(self.shape).to(self.dtype)


def _cache_during_forward(module: nn.Module) -> None:
    """Dequantize each expert tensor once per forward, not once per expert indexed."""
    from torch.nn.utils import parametrize

    def enable(_module, _inputs):
        parametrize._cache_enabled += 1

    def disable(_module, _inputs, _output):
        parametrize._cache_enabled = max(0, parametrize._cache_enabled - 1)
        if not parametrize._cache_enabled:
            parametrize._cache = {}

    module.register_forward_pre_hook(enable)
    module.register_forward_hook(disable, always_call=True)


def quantize_fused_experts(model: nn.Module, quant: QuantPlan) -> int:
    """Quantize the 3-D expert weights bitsandbytes' linear replacement cannot see; returns how many weights."""
    from torch.nn.utils import parametrize

    import_bitsandbytes()
    from bitsandbytes import functional
    from bitsandbytes.nn.parametrize import replace_parameter_4bit

    count = 0
    for _name, module, param_name in fused_expert_parameters(model):
        param = getattr(module, param_name)
        count += param.numel()
        # Dequantized experts come back in the dtype they were quantized from: make that the compute dtype,
        # whatever dtype the checkpoint or the loader left them in.
        param.data = param.data.to(quant.compute_dtype)
        if quant.bits == 4:
            replace_parameter_4bit(module, param_name, quant_type="nf4", blocksize=NF4_BLOCKSIZE)
            continue
        shape, dtype = param.shape, param.dtype
        quantized, scales, _ = functional.int8_vectorwise_quant(param.data.reshape(-1, shape[-1]).float())
        setattr(module, param_name, nn.Parameter(quantized.reshape(shape), requires_grad=False))
        parametrize.register_parametrization(module, param_name, Int8RowParametrization(scales, shape, dtype),
                                             unsafe=True)
        _cache_during_forward(module)
    return count


def prepare_quantized(model, quant: QuantPlan) -> list[str]:
    """After from_pretrained: quantize fused experts, then peft's k-bit preparation; returns log notes.

    prepare_model_for_kbit_training freezes every weight and upcasts fp16/bf16 non-quantized weights (norms,
    embeddings, routers) to fp32; we pass use_gradient_checkpointing=False because --gradient_checkpointing is
    the user's choice and is applied (non-reentrant) by the loader.
    """
    from peft import prepare_model_for_kbit_training

    bnb = import_bitsandbytes()
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            # On AVX512-BF16 CPUs the first no-grad eval forward repacks the weights in place for a bf16 gemv
            # kernel, and every later *training* forward then runs that inference kernel: bf16 instead of the
            # chosen compute dtype, and different gradients after the first evaluation. Keep the one path.
            module.support_avx512bf16_for_cpu = False
    experts = quantize_fused_experts(model, quant) if fused_expert_parameters(model) else 0
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    counts = quantized_layer_counts(model)
    notes = [f"quantization: {quant.description}; {counts['linear']} linear layers quantized"
             + (f", {experts:,} fused expert weights quantized" if experts else "")
             + f", {counts['full_linear']} linear layers full precision"]
    if quant.bits == 8 and next(model.parameters()).device.type == "cpu":
        notes.append("8-bit on a CPU: training matmuls dequantize the weights; evaluation runs bitsandbytes' "
                     "LLM.int8() matmul (inputs cast to fp16 and quantized per row), ~1% relative apart in logits")
    return notes


def quantized_layer_counts(model: nn.Module) -> dict[str, int]:
    bnb = import_bitsandbytes()
    linear = sum(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())
    full = sum(type(m) is nn.Linear for m in model.modules())
    return {"linear": linear, "full_linear": full}


def fused_expert_numel(model: nn.Module) -> dict[int, int]:
    """id(stored tensor) -> how many weights it holds, for the fused experts quantized by `quantize_fused_experts`
    (a parametrization over the stored tensor: 4-bit storage packs two weights per uint8)."""
    from torch.nn.utils import parametrize

    sizes: dict[int, int] = {}
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        for plist in module.parametrizations.values():
            for parametrization in plist:
                state = getattr(parametrization, "quant_state", None)
                shape = state.shape if state is not None else getattr(parametrization, "shape", None)
                if shape is not None:
                    sizes[id(plist.original)] = int(torch.Size(shape).numel())
    return sizes


# ---------------------------------------------------------------------------- memory
def quantized_weight_bytes(model: nn.Module, quant: QuantPlan) -> int:
    """Bytes the weights will take once loaded this way, from the model built on the meta device (no weights).

    Linears that transformers will convert, and fused experts, count their packed weights plus bitsandbytes'
    statistics (4-bit: one fp32 absmax per 64 weights; 8-bit: one fp32 scale per output row); everything else
    counts as fp32 (prepare_model_for_kbit_training upcasts half-precision leftovers).
    """
    from transformers.quantizers.quantizers_utils import should_convert_module

    skip = quant.skip_modules
    if skip is None:
        from transformers.quantizers.base import get_keys_to_not_convert

        skip = get_keys_to_not_convert(model)
    quantized: set[int] = set()
    total = 0.0

    def packed(weight: torch.Tensor) -> float:
        if quant.bits == 4:
            return weight.numel() * 0.5 + weight.numel() / NF4_BLOCKSIZE * 4
        return weight.numel() * 1.0 + weight.numel() / weight.shape[-1] * 4

    for name, module in model.named_modules():
        if type(module) is nn.Linear and should_convert_module(name, skip):
            total += packed(module.weight)
            quantized.add(id(module.weight))
    for _name, module, param_name in fused_expert_parameters(model):
        param = getattr(module, param_name)
        total += packed(param)
        quantized.add(id(param))
    seen: set[int] = set()
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) in quantized or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        total += tensor.numel() * 4
    return int(total)


def describe_quantized_size(model: nn.Module | None, quant: QuantPlan) -> str:
    """The log's size line for a 4/8-bit load: what the weights take as loaded, not per storage format."""
    if model is None:
        return f"as loaded ({quant.description}): size unknown"
    return f"as loaded ({quant.description}): {quantized_weight_bytes(model, quant) / 2**20:.3f} MiB of weights"


def quantization_record(quant: QuantPlan | None) -> dict[str, Any] | None:
    """What metrics.json and TensorBoard record about the quantization (None when the weights are not)."""
    if quant is None:
        return None
    return {"flag": f"--{quant.flag}", "bits": quant.bits, "description": quant.description,
            "compute_dtype": str(quant.compute_dtype).removeprefix("torch."),
            "skip_modules": quant.skip_modules or "transformers default (output embeddings)"}
