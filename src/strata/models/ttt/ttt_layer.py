"""The TTT sequence-modelling layers: shared projections and mini-batch scan (TTTBase), TTT-Linear and TTT-MLP.

Imports only torch and its siblings (relative): copied next to a saved checkpoint for ``trust_remote_code``.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_ttt import TTTConfig
from .ttt_cache import TTTCache, _SeqInfo
from .ttt_ops import TTTState, apply_rotary_interleaved, causal_depthwise_conv
from .ttt_scan import _checkpointed_run, _mini_batch_spans, _span_complete, _span_inputs


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
        H = self.num_heads
        gamma = self.ttt_norm_weight.to(xq.dtype).repeat(BH // H, 1)[:, None]  # [BH, 1, d]
        beta = self.ttt_norm_bias.to(xq.dtype).repeat(BH // H, 1)[:, None]
        gamma2 = gamma * gamma
        gt = gamma * (beta - (xv - xk))  # gamma * (beta - residual target)  [BH, L, d]
        consts = {"gamma2": gamma2, "one": torch.ones((), device=xq.device, dtype=xq.dtype)}

        outputs = []
        for start, n, s, closes in _mini_batch_spans(info, L, self.mini_batch_size):
            complete = _span_complete(info, closes, start, n, s, H)
            close = complete is True and all(state[f"{p}_grad"] is None for p in self.inner_param_names)
            sl = slice(start, start + n * s)
            pre = _span_inputs(xq[:, sl], xk[:, sl], gt[:, sl], lr[:, sl], tau[:, sl], tau_last, n, s, close)
            keys = list(pre)
            per_step = list(zip(*(pre[key].unbind(1) for key in keys)))
            run = partial(self._run_steps, per_step, keys, consts, complete, close, tau_last)

            group = self.config.scan_checkpoint_group_size
            if group > 0 and self.training and torch.is_grad_enabled() and n > group:
                for i0 in range(0, n, group):
                    outs, state = _checkpointed_run(run, i0, min(n, i0 + group), state)
                    outputs.extend(outs)
            else:
                outs, state = run(0, n, state)
                outputs.extend(outs)
        return torch.cat(outputs, dim=1), state  # [BH, L, d]

    def _run_steps(
        self,
        per_step: list[tuple[torch.Tensor, ...]],
        keys: list[str],
        consts: dict[str, torch.Tensor],
        complete: bool | torch.Tensor,
        close: bool,
        tau_last: torch.Tensor,
        i0: int,
        i1: int,
        state: TTTState,
    ) -> tuple[list, TTTState]:
        """Mini-batches [i0, i1) of one span, one `_step` each (the only Python loop of the scan)."""
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
