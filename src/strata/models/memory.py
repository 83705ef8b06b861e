"""Training memory from a config alone: the largest batch that fits a device (``strata models --fit``).

An estimate with its assumptions said (:func:`assumptions`), not a measurement: Trainer's
``--auto_find_batch_size`` finds the real number by trying. Pure functions of a config and numbers.

* **Weights and optimizer** (Trainer's AdamW, weights in fp32 under bf16 autocast, as Strata runs them):
  full 16 bytes per parameter (weights 4, gradients 4, AdamW's two moments 8); LoRA 4 per frozen base parameter
  + 16 per adapter parameter (rank r on every linear layer, ``nn.Linear`` or GPT-2's ``Conv1D``, but the LM
  head: peft's ``all-linear``); QLoRA the same with the matmul weights in NF4, 0.5 byte + one fp32 absmax per
  64 weights (0.5625 bytes), embeddings, LM head and norms in fp32 (transformers' bitsandbytes quantizer and
  ``models/quantization.py``).
* **Activations** per token and layer, no recomputation, 16-bit (Korthikanti et al. 2022, "Reducing Activation
  Recomputation in Large Transformer Models", section 4.1, generalised from a 4h GELU MLP to the model's
  intermediate size I): attention 11h, two norms 4h, MLP 2h + 4I + h (GELU) or 2h + 8I (gated SwiGLU),
  per active expert for MoE. Their 5·a·s attention-score term is dropped: SDPA's flash / memory-efficient
  kernels keep no score matrix (eager attention would add 5·heads·L bytes per token and layer). With
  gradient checkpointing only each layer's 2h-byte input is kept, plus one layer's activations recomputed.
* **LM head**: 8·V bytes per token (fp32 logits and their log-softmax for the loss), at every position
  (Strata's sparse LM head runs only at loss-bearing positions, so SFT needs less: this is an upper bound).
* **Margin**: 10% of the device for allocator fragmentation, and 0.75 GiB for the CUDA context and kernels.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

MODES = ("full", "lora", "qlora")
ADAMW_BYTES = 16.0  # fp32 weight 4 + gradient 4 + exp_avg 4 + exp_avg_sq 4
FROZEN_BYTES = 4.0  # an fp32 weight with no gradient and no optimizer state
NF4_BYTES = 0.5 + 4.0 / 64  # 4 bits + one fp32 absmax per block of 64 (bitsandbytes' default blocksize)
HEAD_BYTES_PER_VOCAB = 8.0  # fp32 logits + log-softmax, per vocabulary entry and token
OVERHEAD_FRACTION = 0.10
CONTEXT_BYTES = 0.75 * 2**30
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``24GB`` (10^9), ``80GiB`` (2^30), ``512MiB`` -> bytes; a number without a unit is refused."""
    from strata.errors import StrataError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]+)\s*", text or "")
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS:
        raise StrataError(f"--fit {text!r}: give a size with its unit, e.g. 24GB, 80GiB or 16000MiB")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a model: parameters by role and the activation dimensions."""

    total: int
    matmul: int  # >= 2-D weights outside embeddings and the LM head (quantized under QLoRA)
    lora: int  # adapter parameters at rank r on every linear layer outside the LM head
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    gated: bool  # SwiGLU-style MLP (gate and up projections)
    active_experts: int  # MLPs a token runs per layer (1 for dense models)


def model_shape(model: torch.nn.Module, config: Any, lora_r: int = 16) -> ModelShape:
    """Parameters by role from a (meta-device) model, dimensions from its config."""
    embedding = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    matmul = sum(p.numel() for p in model.parameters()
                 if p.dim() >= 2 and id(p) not in embedding and id(p) not in head_ids)
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers, which peft's all-linear adapts too

    lora = sum(lora_r * sum(m.weight.shape) for m in model.modules()
               if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head)
    hidden = _first(config, "hidden_size", "n_embd", "d_model")
    gated = any(name.endswith(("gate_proj", "w1", "gate_up_proj")) for name, _ in model.named_modules()) \
        or any("gate_up_proj" in name for name, _ in model.named_parameters())
    return ModelShape(total=model.num_parameters(), matmul=matmul, lora=lora,
                      layers=_first(config, "num_hidden_layers", "n_layer", "num_layers"),
                      hidden=hidden, intermediate=_first(config, "intermediate_size", "n_inner", "d_ff") or 4 * hidden,
                      vocab=int(config.vocab_size), gated=gated,
                      active_experts=int(getattr(config, "num_experts_per_tok", None) or 1))


def _first(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if value:
            return int(value)
    return 0


def static_bytes(shape: ModelShape, mode: str) -> float:
    """Weights, gradients and AdamW state of a ``mode`` run, in bytes."""
    if mode == "full":
        return ADAMW_BYTES * shape.total
    adapters = ADAMW_BYTES * shape.lora
    if mode == "lora":
        return FROZEN_BYTES * shape.total + adapters
    if mode == "qlora":
        return NF4_BYTES * shape.matmul + FROZEN_BYTES * (shape.total - shape.matmul) + adapters
    raise ValueError(f"mode must be one of {MODES}, not {mode!r}")


def layer_activation_bytes(shape: ModelShape, activation_bytes: int = 2) -> float:
    """Activations one layer keeps per token for the backward pass (the module docstring's formula)."""
    h, i = shape.hidden, shape.intermediate
    mlp = (2 * h + 8 * i) if shape.gated else (2 * h + 4 * i + h)
    sixteen_bit = 11 * h + 4 * h + mlp * shape.active_experts
    return sixteen_bit * activation_bytes / 2


def activation_bytes_per_token(shape: ModelShape, gradient_checkpointing: bool = False,
                               activation_bytes: int = 2) -> float:
    """Bytes per token of a training step's activations (layers + LM head)."""
    layer = layer_activation_bytes(shape, activation_bytes)
    if gradient_checkpointing:
        body = shape.layers * shape.hidden * activation_bytes + layer
    else:
        body = shape.layers * layer
    return body + HEAD_BYTES_PER_VOCAB * shape.vocab


def usable_bytes(memory: float) -> float:
    return memory * (1 - OVERHEAD_FRACTION) - CONTEXT_BYTES


def largest_batch(shape: ModelShape, mode: str, memory: float, length: int,
                  gradient_checkpointing: bool = False) -> int:
    """The largest per-device batch of ``length``-token rows that fits ``memory`` bytes (0: none fits)."""
    free = usable_bytes(memory) - static_bytes(shape, mode)
    per_row = activation_bytes_per_token(shape, gradient_checkpointing) * length
    return max(0, int(free // per_row)) if free > 0 else 0


def assumptions(memory: float, length: int, gradient_checkpointing: bool, lora_r: int) -> str:
    """The assumptions as printed under the table."""
    checkpointing = ("on: 2h bytes per layer and token kept, one layer recomputed" if gradient_checkpointing
                     else "off (--gradient_checkpointing keeps only each layer's input)")
    return "\n".join([
        f"assumptions: {memory / 2**30:.1f} GiB per device, rows of {length} tokens, AdamW, bf16 autocast "
        "with fp32 weights (Strata's --precision auto on CUDA)",
        "  bytes per parameter: full 16 (weights 4 + grads 4 + AdamW 8); LoRA 4 per frozen parameter + 16 per "
        f"adapter parameter (r={lora_r}, every linear layer but the LM head); QLoRA matmul weights 0.5625 (NF4 + "
        "absmax per 64), embeddings/head/norms 4, adapters 16",
        "  activations per token and layer (Korthikanti et al. 2022, 16-bit): 11h attention + 4h norms + MLP "
        "(2h + 4I + h GELU, 2h + 8I gated; x active experts); no attention-score matrix (SDPA flash/"
        "memory-efficient kernels; eager attention adds 5*heads*L)",
        f"  gradient checkpointing {checkpointing}",
        "  LM head: 8 x vocab bytes per token (fp32 logits + log-softmax) at every position (an upper bound "
        "for SFT, where only loss positions are projected)",
        f"  margin: {OVERHEAD_FRACTION:.0%} of the device + {CONTEXT_BYTES / 2**30:.2f} GiB CUDA context; "
        "an estimate: --auto_find_batch_size finds the real batch by trying",
    ])
