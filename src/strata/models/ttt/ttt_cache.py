"""The recurrent state a TTT model carries between calls, and where the tokens of one call sit.

Imports only torch and its siblings (relative): copied next to a saved checkpoint for ``trust_remote_code``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .configuration_ttt import TTTConfig
from .ttt_ops import TTTState


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

