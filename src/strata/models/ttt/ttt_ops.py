"""Numerical building blocks of the TTT layers: LayerNorm and its fused L2 gradient, RoPE, causal convolution.

Same formulas as the official code, so float32 results agree with it to ~1e-6. Imports only torch: this file is
copied next to a saved checkpoint (``trust_remote_code``), so it must not import ``strata``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# A TTT state: inner-model parameters at the start of the current mini-batch ("W1", "b1", ...) and, for a
# mini-batch that is only partly consumed, the learning-rate-weighted gradient sum so far ("W1_grad", ...; None = 0).
TTTState = dict[str, torch.Tensor | None]


def ln_fwd(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm over the last dim (biased variance), with per-head scale/shift broadcast by the caller."""
    mu = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    x_hat = (x - mu) / torch.sqrt(var + eps)
    return gamma * x_hat + beta


def ln_fused_l2_bwd(
    x: torch.Tensor, target: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Exact gradient of ``0.5 * ||LN(x) - target||^2`` w.r.t. ``x`` (analytic, no autograd inside the loop)."""
    D = x.shape[-1]
    mu = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, unbiased=False)
    std = torch.sqrt(var + eps)
    x_hat = (x - mu) / std
    grad_x_hat = (gamma * x_hat + beta - target) * gamma
    return (
        D * grad_x_hat
        - grad_x_hat.sum(dim=-1, keepdim=True)
        - x_hat * (grad_x_hat * x_hat).sum(dim=-1, keepdim=True)
    ) / (D * std)


def apply_rotary_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (2i, 2i+1) of ``x`` [B, H, L, d] by angles given as cos/sin [B|1, 1, L, d/2].

    This equals the reference's ``permute_qk -> rotate_half RoPE -> undo_permute_qk`` (a JAX-layout artefact).
    """
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)  # [B, H, L, d/2] each
    return torch.stack((x0 * cos - x1 * sin, x1 * cos + x0 * sin), dim=-1).flatten(-2)


def causal_depthwise_conv(
    x: torch.Tensor,
    conv: nn.Conv1d,
    state: torch.Tensor | None,
    n_valid: torch.Tensor | None,
    want_state: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Causal depthwise convolution of ``x`` [B, L, C], continuing from ``state`` [B, C, k-1] (None = zeros).

    Returns the output [B, L, C] and, if ``want_state``, the last k-1 inputs of each row ending at its
    ``n_valid``-th token (rows are packed: valid tokens first), which is the state for the next call.
    """
    B, L, C = x.shape
    km1 = conv.kernel_size[0] - 1
    xt = x.transpose(1, 2)  # [B, C, L]
    if state is None:
        full = F.pad(xt, (km1, 0))  # [B, C, k-1+L]
    else:
        full = torch.cat([state.to(xt.dtype), xt], dim=-1)
    y = F.conv1d(full, conv.weight, conv.bias, groups=C).transpose(1, 2)  # [B, L, C]
    new_state = None
    if want_state:
        if n_valid is None:
            new_state = full[..., full.shape[-1] - km1 :]
        else:  # the window ends right after the last valid token of each row
            idx = n_valid[:, None] + torch.arange(km1, device=x.device)  # [B, k-1]
            new_state = full.gather(-1, idx[:, None, :].expand(B, C, km1))
        new_state = new_state.detach().clone() if not torch.is_grad_enabled() else new_state
    return y, new_state
