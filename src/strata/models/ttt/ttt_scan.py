"""The state-independent half of the TTT mini-batch scan: span planning, per-span inputs, checkpointed runs.

``TTTBase._scan`` (ttt_layer.py) splits a call's tokens into spans of whole mini-batches, precomputes here what
does not depend on the inner state, and loops over the mini-batches. Imports only torch and its siblings
(relative): copied next to a saved checkpoint for ``trust_remote_code``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

from .ttt_cache import _SeqInfo
from .ttt_ops import TTTState


def _mini_batch_spans(info: _SeqInfo, L: int, K: int) -> list[tuple[int, int, int, bool | torch.Tensor]]:
    """Split [0, L) into spans of N equal mini-batches (s tokens each) aligned with the mini-batch grid.

    Each span is (start, N, s, closes the mini-batch: True / False / [B] bools for per-row offsets).
    """
    spans: list[tuple[int, int, int, bool | torch.Tensor]] = []
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
    return spans


def _span_complete(
    info: _SeqInfo, closes: bool | torch.Tensor, start: int, n: int, s: int, H: int
) -> bool | torch.Tensor:
    """Which rows close their mini-batch at the end of each chunk: True / False / [BH, N] bools."""
    complete: bool | torch.Tensor = closes
    if info.valid is not None and closes is not False:
        last_valid = info.valid[:, start + s - 1 : start + n * s : s]  # [B, N]
        complete = last_valid if closes is True else closes[:, None] & last_valid
    elif isinstance(closes, torch.Tensor):
        complete = closes[:, None]
    if isinstance(complete, torch.Tensor):
        complete = complete.repeat_interleave(H, dim=0)  # [BH, N]
    return complete


def _span_inputs(
    xq: torch.Tensor,
    xk: torch.Tensor,
    gt: torch.Tensor,
    lr: torch.Tensor,
    tau: torch.Tensor,
    tau_last: torch.Tensor,
    n: int,
    s: int,
    close: bool,
) -> dict[str, torch.Tensor]:
    """Everything of a span that does not depend on the inner state, for all its N mini-batches at once."""
    q = xq.unflatten(1, (n, s))  # [BH, N, s, d]
    k = xk.unflatten(1, (n, s))
    lr_c = lr.unflatten(1, (n, s))  # [BH, N, s]
    tau_c = tau.unflatten(1, (n, s))  # [BH|1, N, s]
    eta = torch.tril(tau_c[..., :, None] * lr_c[..., None, :])  # eta[i, j] = tau_i lr_j (j <= i)
    w = (tau_last * lr_c if close else lr_c)[..., None, :]  # [BH, N, 1, s]
    return {
        "q": q,
        "kq": torch.cat([k, q], dim=2),  # [BH, N, 2s, d]: one matmul with W for both
        "gt": gt.unflatten(1, (n, s)),
        "eta": eta,
        # the dual form's "attention" for W (q.k) and for b (+1); eta is lower-triangular
        "A": eta * (q @ k.transpose(-1, -2) + 1.0),  # [BH, N, s, s]
        "w": w,
        "wk_t": (w.transpose(-1, -2) * k).transpose(-1, -2),  # [BH, N, d, s]: (lr_j k_j)^T
        "tau": tau_c[..., None],  # [BH|1, N, s, 1]
    }


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
