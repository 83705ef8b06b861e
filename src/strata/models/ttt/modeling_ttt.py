"""TTT language models: RNN layers whose hidden state is a model trained by gradient descent on the sequence.

Reimplementation of "Learning to (Learn at Test Time): RNNs with Expressive Hidden States" (Sun et al., 2024),
parameter-compatible with the official ``TTTForCausalLM`` (``test-time-training/ttt-lm-pytorch``): a checkpoint of
the official code loads here with ``strict=True`` and gives the same logits (checked against a fixture in the tests).

Notation used in the shape comments: B batch, L sequence length, C hidden size, H heads, d = C / H head dim,
K mini-batch size, N number of mini-batches in a span, s tokens per mini-batch of a span (s <= K), F = 4d (TTT-MLP).

What differs from the reference (on purpose):
* the inner loop runs in float32 (or float64 for a float64 model; the reference uses the model dtype), so bf16
  models stay stable;
* ``attention_mask`` is honoured: a masked token is removed from its row (see ``TTTModel.forward``);
* the cache ([`TTTCache`]) supports any chunk length at any offset, per-row offsets, and beam reordering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.utils import logging

from strata.models.ttt.configuration_ttt import TTTConfig

logger = logging.get_logger(__name__)

# A TTT state: inner-model parameters at the start of the current mini-batch ("W1", "b1", ...) and, for a
# mini-batch that is only partly consumed, the learning-rate-weighted gradient sum so far ("W1_grad", ...; None = 0).
TTTState = dict[str, torch.Tensor | None]


# --------------------------------------------------------------------------------------------------------------
# Small numerical helpers (same formulas as the reference, so the float32 results agree to ~1e-6)
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------------------


class TTTCache:
    """Recurrent state of a [`TTTForCausalLM`] for incremental decoding; what ``generate()`` carries along.

    Not a ``transformers.Cache`` (those hold keys/values per layer): it stores, per layer, the inner-model state
    (parameters at the start of the current mini-batch plus the partial gradient sum of the tokens already seen in
    it) and the convolution windows (Mamba backbone), plus per row the number of real (unmasked) tokens seen. It
    implements the methods ``generate()`` calls on a cache: ``get_seq_length``, ``reorder_cache`` (beam search),
    ``batch_repeat_interleave`` / ``batch_select_indices``, and the ``is_compileable`` / ``is_croppable`` flags.
    It cannot be cropped, so assisted/speculative decoding is not supported (the model is ``_is_stateful``).
    """

    is_compileable = False
    is_croppable = False

    def __init__(self, config: TTTConfig, batch_size: int, device: torch.device | str | None = None):
        self.config = config
        self.batch_size = batch_size
        self.mini_batch_size = config.mini_batch_size
        self.ttt_states: list[TTTState | None] = [None] * config.num_hidden_layers
        self.conv_states: list[dict[str, torch.Tensor]] = [{} for _ in range(config.num_hidden_layers)]
        # Number of real tokens consumed by each row (its in-mini-batch position is this mod K).  [B]
        self.seen_tokens = torch.zeros(batch_size, dtype=torch.long, device=device)
        # Number of columns (real or padding) fed so far; what `generate` compares with the attention mask.
        self.seqlen_offset = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seqlen_offset

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        for i, state in enumerate(self.ttt_states):
            if state is not None:
                self.ttt_states[i] = {k: (fn(v) if v is not None else None) for k, v in state.items()}
        self.conv_states = [{k: fn(v) for k, v in states.items()} for states in self.conv_states]
        self.seen_tokens = fn(self.seen_tokens)
        self.batch_size = self.seen_tokens.shape[0]

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map(lambda t: t[indices.to(t.device)])

    def reset(self) -> None:
        self.ttt_states = [None] * len(self.ttt_states)
        self.conv_states = [{} for _ in self.conv_states]
        self.seen_tokens = torch.zeros_like(self.seen_tokens)
        self.seqlen_offset = 0

    def __repr__(self) -> str:
        return f"TTTCache(batch_size={self.batch_size}, seqlen_offset={self.seqlen_offset})"


@dataclass
class _SeqInfo:
    """Where the tokens of this call sit, shared by all layers of one forward."""

    pos: torch.Tensor  # [B|1, L] position of each token inside its mini-batch (also the RoPE position)
    offset: int | None  # common in-mini-batch offset of the first token; None = per-row offsets (then L == 1)
    valid: torch.Tensor | None  # [B, L] bool, valid tokens packed first; None = all valid
    n_valid: torch.Tensor | None  # [B] number of valid tokens per row; None = all L


# --------------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------------


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


class TTTBase(nn.Module):
    """Shared part of a TTT layer: projections, RoPE, inner learning rates, the mini-batch scan and the output.

    Subclasses define the inner model: its parameters (``inner_param_names``) and ``_step`` (one mini-batch in
    the dual form). Everything that does not depend on the inner state (Q.K^T, eta, targets) is computed in
    ``_scan`` for all mini-batches of a span at once, so the Python loop over mini-batches only runs ~15 ops.
    """

    inner_param_names: tuple[str, ...] = ()

    def __init__(self, config: TTTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.width = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.width // self.num_heads
        self.mini_batch_size = config.mini_batch_size
        self.share_qk = config.share_qk
        self.use_gate = config.use_gate

        # Per-position scale offsets: tau_i = max(0, 1/(i+1) + learnable_token_idx[i]).  [K]
        self.learnable_token_idx = nn.Parameter(torch.zeros(self.mini_batch_size))

        self.q_proj = nn.Linear(self.width, self.width, bias=False)
        if not self.share_qk:
            self.k_proj = nn.Linear(self.width, self.width, bias=False)
        self.v_proj = nn.Linear(self.width, self.width, bias=False)
        self.o_proj = nn.Linear(self.width, self.width, bias=False)
        if self.share_qk:
            conv_kwargs = dict(
                kernel_size=config.conv_kernel, groups=self.width, padding=config.conv_kernel - 1
            )
            self.conv_q = nn.Conv1d(self.width, self.width, bias=True, **conv_kwargs)
            self.conv_k = nn.Conv1d(self.width, self.width, bias=True, **conv_kwargs)

        # Inner learning-rate gate, one linear map C -> 1 per head.  [H, 1, C] and [H, 1]
        self.learnable_ttt_lr_weight = nn.Parameter(
            torch.normal(0, 0.02, size=(self.num_heads, 1, self.width))
        )
        self.learnable_ttt_lr_bias = nn.Parameter(torch.zeros(self.num_heads, 1))
        # LayerNorm inside the inner model f, per head.  [H, d]
        self.ttt_norm_weight = nn.Parameter(torch.ones(self.num_heads, self.head_dim))
        self.ttt_norm_bias = nn.Parameter(torch.zeros(self.num_heads, self.head_dim))

        if self.use_gate:
            self.g_proj = nn.Linear(self.width, self.width, bias=False)
        self.post_norm = nn.LayerNorm(self.width, eps=1e-6)

    # ---- inner-model interface -------------------------------------------------------------------------------

    def _step(
        self, state: TTTState, x: dict[str, torch.Tensor], close: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One mini-batch (s tokens) in the dual form; tensors are [BH, ...] (batch and heads flattened).

        Returns the pre-LayerNorm output f_{W_i}(q_i) [BH, s, d] and either, if ``close`` (every row closes the
        mini-batch and nothing is carried; ``x["w"]`` already holds tau_{K-1} * lr), the next state, or else the
        learning-rate-weighted gradient sums including the carried ones (applied by ``_apply_update``).
        """
        raise NotImplementedError

    # ---- helpers ---------------------------------------------------------------------------------------------

    def _initial_state(self, batch_size: int, dtype: torch.dtype = torch.float32) -> TTTState:
        state: TTTState = {}
        for name in self.inner_param_names:
            state[name] = getattr(self, name).to(dtype).repeat(batch_size, 1, 1)  # [H, a, b] -> [BH, a, b]
            state[f"{name}_grad"] = None
        return state

    @staticmethod
    def _apply_update(
        state: TTTState, sums: dict[str, torch.Tensor], complete: bool | torch.Tensor, tau_last: torch.Tensor
    ) -> TTTState:
        """Close the mini-batch where ``complete`` (W <- W - tau_{K-1} * sum), else carry the partial sum."""
        new: TTTState = {}
        for name, g in sums.items():
            p = state[name]
            if complete is True:
                new[name], new[f"{name}_grad"] = p - tau_last * g, None
            elif complete is False:
                new[name], new[f"{name}_grad"] = p, g
            else:
                m = complete.view(-1, 1, 1)  # [BH, 1, 1]
                new[name] = torch.where(m, p - tau_last * g, p)
                new[f"{name}_grad"] = torch.where(m, torch.zeros_like(g), g)
        return new

    def _ln_l2_bwd(self, z: torch.Tensor, gt: torch.Tensor, gamma2: torch.Tensor) -> torch.Tensor:
        """``ln_fused_l2_bwd`` with gamma^2 and gamma * (beta - target) precomputed outside the loop (fewer ops)."""
        d = z.shape[-1]
        # (not torch.native_layer_norm: autograd ignores the gradient flowing into its rstd output)
        var, mu = torch.var_mean(z, dim=-1, keepdim=True, correction=0)
        rstd = torch.rsqrt(var + 1e-6)
        x_hat = (z - mu) * rstd
        grad_x_hat = torch.addcmul(gt, gamma2, x_hat)  # gamma * (gamma * x_hat + beta - target)
        s1 = grad_x_hat.sum(dim=-1, keepdim=True)
        s2 = (grad_x_hat * x_hat).sum(dim=-1, keepdim=True)
        return torch.addcmul(grad_x_hat * d - s1, x_hat, s2, value=-1) * (rstd / d)

    def _scan(
        self,
        xq: torch.Tensor,
        xk: torch.Tensor,
        xv: torch.Tensor,
        lr: torch.Tensor,
        tau: torch.Tensor,
        tau_last: torch.Tensor,
        state: TTTState,
        info: _SeqInfo,
    ) -> tuple[torch.Tensor, TTTState]:
        """Mini-batch TTT over L tokens. xq/xk/xv [BH,L,d], lr [BH,L], tau [BH|1,L] -> Z [BH,L,d], state."""
        BH, L, d = xq.shape
        H, K = self.num_heads, self.mini_batch_size
        gamma = self.ttt_norm_weight.to(xq.dtype).repeat(BH // H, 1)[:, None]  # [BH, 1, d]
        beta = self.ttt_norm_bias.to(xq.dtype).repeat(BH // H, 1)[:, None]
        gamma2 = gamma * gamma
        gt = gamma * (beta - (xv - xk))  # gamma * (beta - residual target)  [BH, L, d]
        consts = {"gamma2": gamma2, "one": torch.ones((), device=xq.device, dtype=xq.dtype)}

        # Split [0, L) into spans of N equal mini-batches (s tokens each) aligned with the mini-batch grid.
        spans: list[tuple[int, int, int, bool | torch.Tensor]] = []  # (start, N, s, closes the mini-batch)
        if info.offset is None:  # single token per row with per-row offsets
            spans.append((0, 1, L, info.pos[:, -1] == K - 1))
        else:
            start = 0
            if info.offset:
                first = min(L, K - info.offset)
                spans.append((0, 1, first, info.offset + first == K))
                start = first
            if (n_full := (L - start) // K) > 0:
                spans.append((start, n_full, K, True))
                start += n_full * K
            if start < L:
                spans.append((start, 1, L - start, False))

        outputs = []
        for start, n, s, closes in spans:
            # Which rows close their mini-batch at the end of each chunk: True / False / [B, N] bools.
            complete: bool | torch.Tensor = closes
            if info.valid is not None and closes is not False:
                last_valid = info.valid[:, start + s - 1 : start + n * s : s]  # [B, N]
                complete = last_valid if closes is True else closes[:, None] & last_valid
            elif isinstance(closes, torch.Tensor):
                complete = closes[:, None]
            if isinstance(complete, torch.Tensor):
                complete = complete.repeat_interleave(H, dim=0)  # [BH, N]
            close = complete is True and all(state[f"{p}_grad"] is None for p in self.inner_param_names)

            sl = slice(start, start + n * s)
            q = xq[:, sl].unflatten(1, (n, s))  # [BH, N, s, d]
            k = xk[:, sl].unflatten(1, (n, s))
            lr_c = lr[:, sl].unflatten(1, (n, s))  # [BH, N, s]
            tau_c = tau[:, sl].unflatten(1, (n, s))  # [BH|1, N, s]
            eta = torch.tril(tau_c[..., :, None] * lr_c[..., None, :])  # eta[i, j] = tau_i lr_j (j <= i)
            w = (tau_last * lr_c if close else lr_c)[..., None, :]  # [BH, N, 1, s]
            pre = {
                "q": q,
                "kq": torch.cat([k, q], dim=2),  # [BH, N, 2s, d]: one matmul with W for both
                "gt": gt[:, sl].unflatten(1, (n, s)),
                "eta": eta,
                # the dual form's "attention" for W (q.k) and for b (+1); eta is lower-triangular
                "A": eta * (q @ k.transpose(-1, -2) + 1.0),  # [BH, N, s, s]
                "w": w,
                "wk_t": (w.transpose(-1, -2) * k).transpose(-1, -2),  # [BH, N, d, s]: (lr_j k_j)^T
                "tau": tau_c[..., None],  # [BH|1, N, s, 1]
            }
            keys = list(pre)
            per_step = list(zip(*(pre[key].unbind(1) for key in keys)))

            def run(
                i0: int,
                i1: int,
                state: TTTState,
                per_step=per_step,
                keys=keys,
                complete=complete,
                close=close,
            ) -> tuple[list, TTTState]:
                outs = []
                for i in range(i0, i1):
                    x = {**consts, **dict(zip(keys, per_step[i]))}
                    z, new = self._step(state, x, close)
                    if not close:
                        c = complete if isinstance(complete, bool) else complete[:, i]
                        new = self._apply_update(state, new, c, tau_last)
                    state = new
                    outs.append(z)
                return outs, state

            group = self.config.scan_checkpoint_group_size
            if group > 0 and self.training and torch.is_grad_enabled() and n > group:
                for i0 in range(0, n, group):
                    outs, state = _checkpointed_run(run, i0, min(n, i0 + group), state)
                    outputs.extend(outs)
            else:
                outs, state = run(0, n, state)
                outputs.extend(outs)
        return torch.cat(outputs, dim=1), state  # [BH, L, d]

    def _qk(self, hidden_states: torch.Tensor, info: _SeqInfo, cache: TTTCache | None):
        if not self.share_qk:
            return self.q_proj(hidden_states), self.k_proj(hidden_states)
        xqk = self.q_proj(hidden_states)
        state = cache.conv_states[self.layer_idx].get("qk") if cache is not None else None
        want = cache is not None
        xq, new_state = causal_depthwise_conv(xqk, self.conv_q, state, info.n_valid, want_state=want)
        xk, _ = causal_depthwise_conv(xqk, self.conv_k, state, info.n_valid, want_state=False)
        if cache is not None:
            cache.conv_states[self.layer_idx]["qk"] = new_state
        return xq, xk

    def forward(
        self, hidden_states: torch.Tensor, info: _SeqInfo, cache: TTTCache | None = None
    ) -> torch.Tensor:
        B, L, C = hidden_states.shape
        H, d, K = self.num_heads, self.head_dim, self.mini_batch_size

        xq, xk = self._qk(hidden_states, info, cache)
        xv = self.v_proj(hidden_states)
        # Inner learning rate eta_t,h = base_lr * sigmoid(x_t . w_h + b_h) / d; zero on masked tokens.  [B, H, L]
        lr_logits = torch.einsum(
            "blc,hc->bhl", hidden_states, self.learnable_ttt_lr_weight[:, 0].to(hidden_states)
        )

        # The inner loop runs in float32 (at least), also under autocast.
        dt = torch.promote_types(hidden_states.dtype, torch.float32)
        with torch.autocast(hidden_states.device.type, enabled=False):
            # [B, L, C] -> [B, H, L, d]
            xq, xk, xv = (t.to(dt).unflatten(-1, (H, d)).transpose(1, 2) for t in (xq, xk, xv))

            # RoPE on Q and K with the in-mini-batch position (t mod K).
            inv_freq = 1.0 / (
                self.config.rope_theta ** (torch.arange(0, d, 2, device=xq.device, dtype=dt) / d)
            )
            angles = info.pos[:, None, :, None].to(dt) * inv_freq  # [B|1, 1, L, d/2]
            cos, sin = angles.cos(), angles.sin()
            xq, xk = apply_rotary_interleaved(xq, cos, sin), apply_rotary_interleaved(xk, cos, sin)

            lr = torch.sigmoid(lr_logits.to(dt) + self.learnable_ttt_lr_bias.to(dt)[None])
            lr = lr * (self.config.ttt_base_lr / d)
            if info.valid is not None:
                lr = lr * info.valid[:, None, :]

            # Per-position scale tau_i = max(0, 1/(i+1) + learnable_token_idx[i]).
            base = 1.0 / torch.arange(1, K + 1, device=xq.device, dtype=dt)
            tau_table = torch.clamp_min(base + self.learnable_token_idx.to(dt), 0.0)  # [K]
            tau = tau_table[info.pos]  # [B|1, L]
            tau = tau.repeat_interleave(H, dim=0) if tau.shape[0] > 1 else tau  # [BH|1, L]

            state = cache.ttt_states[self.layer_idx] if cache is not None else None
            if state is None:
                state = self._initial_state(B, dt)
            else:  # cached as [B, H, ...]
                state = {k: (v.flatten(0, 1) if v is not None else None) for k, v in state.items()}
            # heads folded into the batch: [B, H, L, d] -> [BH, L, d]
            z, state = self._scan(
                xq.flatten(0, 1),
                xk.flatten(0, 1),
                xv.flatten(0, 1),
                lr.flatten(0, 1),
                tau,
                tau_table[K - 1],
                state,
                info,
            )
            if cache is not None:
                cache.ttt_states[self.layer_idx] = {
                    k: (v.unflatten(0, (B, H)) if v is not None else None) for k, v in state.items()
                }

            # Output: residual of f, out = q + LN(f_W(q)).  [B, H, L, d] -> [B, L, C]
            z = F.layer_norm(z.unflatten(0, (B, H)), (d,), eps=1e-6)
            out = xq + z * self.ttt_norm_weight.to(dt)[:, None] + self.ttt_norm_bias.to(dt)[:, None]
            out = out.transpose(1, 2).reshape(B, L, C).to(hidden_states.dtype)
        out = self.post_norm(out)
        if self.use_gate:
            out = F.gelu(self.g_proj(hidden_states), approximate="tanh") * out
        return self.o_proj(out)


def _checkpointed_run(run: Callable, i0: int, i1: int, state: TTTState) -> tuple[list, TTTState]:
    """Run mini-batches [i0, i1) of a scan under activation checkpointing (``scan_checkpoint_group_size``)."""
    keys = [k for k, v in state.items() if v is not None]

    def fn(*values: torch.Tensor):
        outs, new = run(i0, i1, {**{k: None for k in state}, **dict(zip(keys, values))})
        new_keys = [k for k, v in new.items() if v is not None]
        return (torch.stack(outs), new_keys, *[new[k] for k in new_keys])

    stacked, new_keys, *new_values = checkpoint(fn, *[state[k] for k in keys], use_reentrant=False)
    new_state: TTTState = {k: None for k in state}
    new_state.update(zip(new_keys, new_values))
    return list(stacked.unbind(0)), new_state


class TTTLinear(TTTBase):
    """TTT-Linear: the hidden state is a linear model f(k) = LN(k W1 + b1) per head."""

    inner_param_names = ("W1", "b1")

    def __init__(self, config: TTTConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.W1 = nn.Parameter(torch.normal(0, 0.02, size=(self.num_heads, self.head_dim, self.head_dim)))
        self.b1 = nn.Parameter(torch.zeros(self.num_heads, 1, self.head_dim))

    def _step(self, state, x, close):
        W, b = state["W1"], state["b1"]  # [BH, d, d], [BH, 1, d]
        s = x["q"].shape[1]
        z = torch.baddbmm(b, x["kq"], W)  # [BH, 2s, d]: k W + b and q W + b
        # Gradient of the inner loss at the state from the start of the mini-batch.  [BH, s, d]
        grad = self._ln_l2_bwd(z[:, :s], x["gt"], x["gamma2"])
        # Dual form: q_i (W - tau_i sum_{j<=i} lr_j k_j^T g_j) + b - tau_i sum_{j<=i} lr_j g_j
        out = torch.baddbmm(z[:, s:], x["A"], grad, alpha=-1)
        if close:  # W <- W - tau_{K-1} sum_j lr_j k_j^T g_j (tau_{K-1} is folded into x["w"])
            return out, {
                "W1": torch.baddbmm(W, x["wk_t"], grad, alpha=-1),
                "b1": torch.baddbmm(b, x["w"], grad, alpha=-1),
                "W1_grad": None,
                "b1_grad": None,
            }
        sums = {"W1": x["wk_t"] @ grad, "b1": x["w"] @ grad}
        if state["W1_grad"] is not None:  # continuing a partly consumed mini-batch (cache)
            out = out - x["tau"] * torch.baddbmm(state["b1_grad"], x["q"], state["W1_grad"])
            sums = {name: g + state[f"{name}_grad"] for name, g in sums.items()}
        return out, sums


class TTTMLP(TTTBase):
    """TTT-MLP: the hidden state is a two-layer MLP f(k) = LN(gelu(k W1 + b1) W2 + b2) per head (hidden 4d)."""

    inner_param_names = ("W1", "b1", "W2", "b2")

    def __init__(self, config: TTTConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        d = self.head_dim
        self.W1 = nn.Parameter(torch.normal(0, 0.02, size=(self.num_heads, d, 4 * d)))
        self.b1 = nn.Parameter(torch.zeros(self.num_heads, 1, 4 * d))
        self.W2 = nn.Parameter(torch.normal(0, 0.02, size=(self.num_heads, 4 * d, d)))
        self.b2 = nn.Parameter(torch.zeros(self.num_heads, 1, d))

    def _step(self, state, x, close):
        W1, b1, W2, b2 = state["W1"], state["b1"], state["W2"], state["b2"]
        s = x["q"].shape[1]
        z1 = torch.baddbmm(b1, x["kq"], W1)  # [BH, 2s, F]
        z1k, z1q = z1[:, :s], z1[:, s:]
        x2 = F.gelu(z1k, approximate="tanh")
        grad_z2 = self._ln_l2_bwd(torch.baddbmm(b2, x2, W2), x["gt"], x["gamma2"])  # [BH, s, d]
        # back through W2 and the GELU  [BH, s, F]
        grad_z1 = torch.ops.aten.gelu_backward(grad_z2 @ W2.transpose(-1, -2), z1k, approximate="tanh")

        carried = state["W1_grad"] is not None
        z1_bar = torch.baddbmm(z1q, x["A"], grad_z1, alpha=-1)
        if carried:
            z1_bar = z1_bar - x["tau"] * torch.baddbmm(state["b1_grad"], x["q"], state["W1_grad"])
        x2_bar = F.gelu(z1_bar, approximate="tanh")
        a2 = x["eta"] * torch.baddbmm(x["one"], x2_bar, x2.transpose(-1, -2))  # [BH, s, s]
        z2_bar = torch.baddbmm(torch.baddbmm(b2, x2_bar, W2), a2, grad_z2, alpha=-1)
        if carried:
            z2_bar = z2_bar - x["tau"] * torch.baddbmm(state["b2_grad"], x2_bar, state["W2_grad"])

        wx2_t = (x["w"].transpose(-1, -2) * x2).transpose(-1, -2)  # [BH, F, s]: (lr_j x2_j)^T
        if close:
            return z2_bar, {
                "W1": torch.baddbmm(W1, x["wk_t"], grad_z1, alpha=-1),
                "b1": torch.baddbmm(b1, x["w"], grad_z1, alpha=-1),
                "W2": torch.baddbmm(W2, wx2_t, grad_z2, alpha=-1),
                "b2": torch.baddbmm(b2, x["w"], grad_z2, alpha=-1),
                "W1_grad": None,
                "b1_grad": None,
                "W2_grad": None,
                "b2_grad": None,
            }
        sums = {
            "W1": x["wk_t"] @ grad_z1,
            "b1": x["w"] @ grad_z1,
            "W2": wx2_t @ grad_z2,
            "b2": x["w"] @ grad_z2,
        }
        if carried:
            sums = {name: g + state[f"{name}_grad"] for name, g in sums.items()}
        return z2_bar, sums


TTT_LAYER_CLASSES: dict[str, type[TTTBase]] = {"linear": TTTLinear, "mlp": TTTMLP}


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


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------


class TTTPreTrainedModel(PreTrainedModel):
    config: TTTConfig
    config_class = TTTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TTTBlock"]
    _skip_keys_device_placement = ["cache"]
    # The recurrent state cannot be rolled back: no assisted generation.
    _is_stateful = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # `generate` must not build a key/value DynamicCache: the model creates its own TTTCache on the first call.
        return False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv1d):
            # PyTorch's default conv init (the reference leaves convs at their default), not normal(0.02).
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1] * module.weight.shape[2])
                init.uniform_(module.bias, -bound, bound)
            return
        super()._init_weights(module)  # Linear/Embedding: normal(initializer_range); norms: ones/zeros
        if isinstance(module, TTTBase):
            init.zeros_(module.learnable_token_idx)
            init.normal_(module.learnable_ttt_lr_weight, mean=0.0, std=0.02)
            init.zeros_(module.learnable_ttt_lr_bias)
            init.ones_(module.ttt_norm_weight)
            init.zeros_(module.ttt_norm_bias)
            for name in module.inner_param_names:
                param = getattr(module, name)
                if name.startswith("W"):
                    init.normal_(param, mean=0.0, std=0.02)
                else:
                    init.zeros_(param)


class TTTModel(TTTPreTrainedModel):
    """Embedding + TTT blocks + final RMSNorm."""

    def __init__(self, config: TTTConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([TTTBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = TTTRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: TTTCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast | tuple:
        r"""
        attention_mask (`torch.Tensor` of shape `(batch_size, past_length + sequence_length)` or
            `(batch_size, sequence_length)`, *optional*): 1 for real tokens, 0 for padding. Only the last
            `sequence_length` columns are read. A masked token is *removed* from its row: it gets no inner-loop
            update (zero learning rate), is not seen by later tokens, and does not advance the mini-batch position
            or RoPE position of the tokens after it; the outputs of the remaining tokens equal those of the row
            with the masked tokens deleted. Outputs at masked positions are unspecified (finite).
        position_ids: accepted for API compatibility and ignored. As in the reference, positions are implicit:
            a token's RoPE position and per-position scale come from the number of real tokens before it, mod K.
        cache ([`TTTCache`], *optional*): the state returned by a previous call (`use_cache=True`).
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        B, L, C = inputs_embeds.shape
        K = self.config.mini_batch_size

        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        if self.gradient_checkpointing and self.training and (use_cache or cache is not None):
            logger.warning_once("TTT: the cache is incompatible with gradient checkpointing; not using it.")
            use_cache, cache = False, None
        if cache is None and use_cache:
            cache = TTTCache(self.config, B, device=inputs_embeds.device)

        mask = None
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError("TTT models take a 2D attention_mask [batch, length] of 0/1 values")
            mask = attention_mask[:, -L:].bool()
            if bool(mask.all()):
                mask = None

        # In-mini-batch offset of the first new token; rows can differ after a padded prefill.
        offset: int | None = 0
        if cache is not None:
            offsets = cache.seen_tokens % K
            offsets_list = offsets.tolist()
            if len(set(offsets_list)) == 1:
                offset = offsets_list[0]
            elif L == 1:
                offset = None
            else:  # rare: multi-token continuation with per-row offsets; feed one column at a time
                return self._forward_column_by_column(
                    inputs_embeds, mask, cache, output_hidden_states, return_dict
                )

        hidden_states = inputs_embeds
        order = valid = n_valid = None
        if mask is not None:
            # Pack each row: real tokens first (in order), padding after. Unpacked again at the end.
            order = torch.argsort((~mask).to(torch.int32), dim=1, stable=True)  # [B, L]
            hidden_states = hidden_states.gather(1, order[..., None].expand(B, L, C))
            valid = mask.gather(1, order)
            n_valid = valid.sum(1)
        elif cache is not None:
            n_valid = torch.full((B,), L, dtype=torch.long, device=inputs_embeds.device)

        arange = torch.arange(L, device=inputs_embeds.device)
        if offset is None:
            pos = offsets[:, None]  # [B, 1]
        else:
            pos = ((offset + arange) % K)[None]  # [1, L]
        info = _SeqInfo(pos=pos, offset=offset, valid=valid, n_valid=n_valid if cache is not None else None)

        def unpack(h: torch.Tensor) -> torch.Tensor:
            if order is None:
                return h
            return torch.empty_like(h).scatter_(1, order[..., None].expand(B, L, h.shape[-1]), h)

        all_hidden_states = () if output_hidden_states else None
        for layer in self.layers:
            if output_hidden_states:
                all_hidden_states += (unpack(hidden_states),)
            hidden_states = layer(hidden_states, info=info, cache=cache)
        hidden_states = unpack(self.norm(hidden_states))
        if output_hidden_states:
            all_hidden_states += (hidden_states,)

        if cache is not None:
            cache.seen_tokens = cache.seen_tokens + n_valid
            cache.seqlen_offset += L
        out = BaseModelOutputWithPast(
            last_hidden_state=hidden_states, cache=cache, hidden_states=all_hidden_states
        )
        return out if return_dict else out.to_tuple()

    def _forward_column_by_column(
        self,
        inputs_embeds: torch.Tensor,
        mask: torch.Tensor | None,
        cache: TTTCache,
        output_hidden_states: bool,
        return_dict: bool,
    ) -> BaseModelOutputWithPast | tuple:
        outs = [
            self(
                inputs_embeds=inputs_embeds[:, t : t + 1],
                attention_mask=None if mask is None else mask[:, t : t + 1],
                cache=cache,
                use_cache=True,
                output_hidden_states=output_hidden_states,
                return_dict=True,
            )
            for t in range(inputs_embeds.shape[1])
        ]
        hidden = None
        if output_hidden_states:
            hidden = tuple(torch.cat(per_layer, dim=1) for per_layer in zip(*(o.hidden_states for o in outs)))
        out = BaseModelOutputWithPast(
            last_hidden_state=torch.cat([o.last_hidden_state for o in outs], dim=1),
            cache=cache,
            hidden_states=hidden,
        )
        return out if return_dict else out.to_tuple()


class TTTForCausalLM(TTTPreTrainedModel, GenerationMixin):
    """TTT model with a (tied) language-modelling head. Logits are returned in float32."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: TTTConfig):
        super().__init__(config)
        self.model = TTTModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        # Official configs say `use_cache: false` (meaning: forward returns no cache by default). Without a cache,
        # generate() would re-read the whole prefix at every step, so decoding uses the recurrent cache anyway;
        # `generate(..., use_cache=False)` still turns it off.
        if self.generation_config is not None:
            self.generation_config.use_cache = True

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: TTTCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): next-token targets,
            shifted inside (`labels = input_ids` is fine); -100 is ignored. Extra loss kwargs such as
            `num_items_in_batch` (passed by the Trainer) go to `self.loss_function`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :]).float()

        loss = None
        if labels is not None:
            loss_kwargs = {k: v for k, v in kwargs.items() if k in ("num_items_in_batch", "ignore_index")}
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **loss_kwargs
            )

        out = CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
        )
        return out if return_dict else out.to_tuple()


__all__ = ["TTTCache", "TTTForCausalLM", "TTTLinear", "TTTMLP", "TTTModel", "TTTPreTrainedModel"]
