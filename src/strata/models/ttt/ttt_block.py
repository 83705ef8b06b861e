"""The TTT residual block and its backbone parts: RMSNorm, SwiGLU MLP, Mamba-style pre-convolution.

Module names follow the official code's ``Block`` (checkpoint compatibility). Imports only torch, transformers
and its siblings (relative): copied next to a saved checkpoint for ``trust_remote_code``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_ttt import TTTConfig
from .ttt_cache import TTTCache, _SeqInfo
from .ttt_layer import TTT_LAYER_CLASSES
from .ttt_ops import causal_depthwise_conv


class TTTRMSNorm(nn.Module):
    """RMSNorm computed in float32 (as Llama and the reference)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        input_dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
        return self.weight * hidden_states.to(input_dtype)


class TTTSwiGluMLP(nn.Module):
    def __init__(self, config: TTTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TTTConv(nn.Module):
    """Mamba-backbone pre-convolution: RMSNorm then a causal depthwise Conv1d (added residually by the block)."""

    def __init__(self, config: TTTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.norm = TTTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            bias=True,
            kernel_size=config.conv_kernel,
            groups=config.hidden_size,
            padding=config.conv_kernel - 1,  # unused (we pad explicitly); kept for parity with the reference
        )

    def forward(self, hidden_states: torch.Tensor, info: _SeqInfo, cache: TTTCache | None) -> torch.Tensor:
        x = self.norm(hidden_states)
        state = cache.conv_states[self.layer_idx].get("pre_conv") if cache is not None else None
        y, new_state = causal_depthwise_conv(x, self.conv, state, info.n_valid, want_state=cache is not None)
        if cache is not None:
            cache.conv_states[self.layer_idx]["pre_conv"] = new_state
        return y


class TTTBlock(GradientCheckpointingLayer):
    """Pre-norm residual block: [pre-conv] -> TTT layer -> SwiGLU (module names as the reference's ``Block``)."""

    def __init__(self, config: TTTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.pre_conv = config.pre_conv
        self.seq_modeling_block = TTT_LAYER_CLASSES[config.ttt_layer_type](config, layer_idx)
        self.mlp = TTTSwiGluMLP(config)
        if self.pre_conv:
            self.conv = TTTConv(config, layer_idx)
        self.seq_norm = TTTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = TTTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states: torch.Tensor, info: _SeqInfo, cache: TTTCache | None = None):
        if self.pre_conv:
            hidden_states = hidden_states + self.conv(hidden_states, info, cache)
        hidden_states = hidden_states + self.seq_modeling_block(
            self.seq_norm(hidden_states), info, cache
        )
        hidden_states = hidden_states + self.mlp(self.ffn_norm(hidden_states))
        return hidden_states
