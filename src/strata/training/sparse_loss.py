"""LM head and cross-entropy only at loss positions (``--sparse_lm_head auto``).

In SFT only the answer tokens carry loss (~2 of ~40 per SST-2 row), yet a causal LM projects every
position onto the whole vocabulary: most of a step is the LM head and a softmax whose result is thrown
away. Here the model runs exactly as Trainer calls it (same inputs, ``labels``, ``num_items_in_batch``),
but for that one call

* its output head first gathers the hidden states whose *shifted* label is not -100 ([B, T, H] ->
  [1, N, H]) and projects only those, and
* its ``loss_function`` (transformers' ``ForCausalLMLoss``) gets those N target ids as ``shift_labels``.

Everything else stays the model's and Trainer's own: the reduction (sum / ``num_items_in_batch`` or
mean), router aux losses (Mixtral, our stratified model: they read ``labels`` and ``attention_mask``,
which are unchanged), gradient-accumulation scaling and ``average_tokens_across_devices``. When there are
more than ``chunk_tokens`` loss positions (pretraining: every position), the head + cross-entropy run
chunk by chunk under ``torch.utils.checkpoint``, so the [tokens x vocab] logits are never held whole.

Where this cannot be done exactly (encoder-decoder, another loss function, label smoothing, a model
that post-processes its logits or labels) the normal full-logits path runs, with the reason logged once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers.loss.loss_utils import LOSS_MAPPING

__all__ = ["LossPositionsOnly", "SparseLossMismatch", "loss_positions"]

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
CHUNK_TOKENS = 1024  # loss positions per head + cross-entropy chunk: [1024 x 50,257] fp32 logits = 206 MB
_CAUSAL_LM_LOSS = LOSS_MAPPING["ForCausalLM"]
_LOSS_FUNCTION_PROPERTY = PreTrainedModel.__dict__["loss_function"]  # settable: the loss is swapped through it


class SparseLossMismatch(RuntimeError):
    """The model did not call its head / loss the way the sparse path relies on; use the full path."""


def loss_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, T], targets [N]) of positions whose next-token label is not -100, as ForCausalLMLoss shifts."""
    shifted = nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    mask = shifted != IGNORE_INDEX
    return mask, shifted[mask]


def _base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (its head and loss_function are the ones called)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class LossPositionsOnly:
    """Decides whether the sparse path is exact for a model and a batch, and runs one forward through it."""

    def __init__(self, enabled: bool = True, chunk_tokens: int = CHUNK_TOKENS) -> None:
        self.enabled = enabled
        self.chunk_tokens = chunk_tokens
        self.last_call_sparse = False
        self._refused: dict[int, str] = {}  # id(base model) -> why the sparse path does not apply to it
        self._worked: set[tuple[int, bool]] = set()  # (id(base model), chunked) that ran the sparse path fine

    # --- validity --------------------------------------------------------------------------
    def model_reason(self, base: nn.Module) -> str | None:
        """Why the sparse path is not exact for this model, or None."""
        if not isinstance(base, PreTrainedModel):
            return f"{type(base).__name__} is not a transformers PreTrainedModel"
        if getattr(base.config, "is_encoder_decoder", False):
            return "encoder-decoder models shift decoder labels themselves"
        if inspect.getattr_static(type(base), "loss_function", None) is not _LOSS_FUNCTION_PROPERTY:
            return "it overrides loss_function"
        if base.loss_function is not _CAUSAL_LM_LOSS:
            return f"its loss is {getattr(base.loss_function, '__name__', base.loss_function)}, not ForCausalLMLoss"
        head = base.get_output_embeddings()
        if not isinstance(head, nn.Module):
            return "it has no output embeddings module"
        return None

    def batch_reason(self, inputs: dict[str, Any], trainer_custom_loss: bool) -> str | None:
        """Why this batch must take the full path, or None."""
        if trainer_custom_loss:
            return "label smoothing / compute_loss_func read the full logits"
        labels = inputs.get("labels")
        if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
            return "the batch has no [batch, seq] labels"
        for key in ("shift_labels", "logits_to_keep"):
            if key in inputs:
                return f"the batch sets {key}"
        return None

    def applies(self, base: nn.Module, inputs: dict[str, Any], trainer_custom_loss: bool) -> bool:
        """True when the sparse path runs; logs the reason once per model when it does not."""
        if not self.enabled:
            return False
        key = id(base)
        if key not in self._refused:
            reason = self.model_reason(base)
            if reason is None:
                self._refused[key] = ""
            else:
                self._refused[key] = reason
                logger.info("--sparse_lm_head auto: full LM head for %s: %s", type(base).__name__, reason)
        if self._refused[key]:
            return False
        reason = self.batch_reason(inputs, trainer_custom_loss)
        if reason is not None:
            logger.debug("--sparse_lm_head auto: full LM head for this batch: %s", reason)
        return reason is None

    def refuse(self, base: nn.Module, reason: str) -> None:
        """Turn the sparse path off for this model (after a mismatch found mid-forward)."""
        self._refused[id(base)] = reason
        logger.warning("--sparse_lm_head auto: full LM head for %s from now on: %s", type(base).__name__, reason)

    # --- the patched forward ---------------------------------------------------------------
    @contextmanager
    def patched(self, base: PreTrainedModel, batch_labels: torch.Tensor):
        """Within: ``base``'s head projects only the loss positions, its loss uses their target ids."""
        mask, targets = loss_positions(batch_labels)
        n = int(targets.numel())
        chunked = n > self.chunk_tokens
        head = base.get_output_embeddings()
        head_forward = head.forward  # bound method, or an instance override (accelerate hooks)
        had_instance_forward = "forward" in head.__dict__
        state: dict[str, Any] = {"calls": 0, "loss_calls": 0}

        def sparse_head(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            state["calls"] += 1
            if args or kwargs or hidden.shape[:-1] != mask.shape:
                raise SparseLossMismatch(f"the head got input of shape {tuple(hidden.shape)}, labels are "
                                         f"{tuple(mask.shape)}")
            gathered = hidden[mask.to(hidden.device)]  # [N, H]
            if not chunked:
                out = head_forward(gathered[None])  # [1, N, V]
                state["logits"] = out
                return out
            state["hidden"] = gathered
            vocab = int(getattr(base.config, "vocab_size", 0) or getattr(head, "out_features", 0))
            # Stand-in logits that own no memory; the loss below reads state["hidden"] instead.
            out = gathered.new_zeros((), dtype=torch.float32).expand(1, n, vocab)
            state["logits"] = out
            return out

        def sparse_loss(logits: torch.Tensor, labels: torch.Tensor | None = None, vocab_size: int | None = None,
                        num_items_in_batch: torch.Tensor | int | None = None, ignore_index: int = IGNORE_INDEX,
                        **kwargs: Any) -> torch.Tensor:
            state["loss_calls"] += 1
            if state["calls"] != 1:
                raise SparseLossMismatch(f"the head ran {state['calls']} times in one forward")
            # Elementwise post-processing (.float(), softcapping) keeps the gathered layout; anything that
            # changes the shape, or any change at all to the memory-less stand-in, does not.
            if logits is not state["logits"] and (chunked or logits.shape[:-1] != (1, n)):
                raise SparseLossMismatch("the model changed its logits between head and loss")
            same_labels = labels is batch_labels or (
                isinstance(labels, torch.Tensor) and labels.shape == batch_labels.shape
                and torch.equal(labels.to(batch_labels.device), batch_labels))  # e.g. moved by DDP
            if not same_labels or ignore_index != IGNORE_INDEX or "shift_labels" in kwargs:
                raise SparseLossMismatch("the model changed the labels it passes to its loss")
            if not chunked:
                return _CAUSAL_LM_LOSS(logits, labels, vocab_size, num_items_in_batch=num_items_in_batch,
                                       ignore_index=ignore_index, shift_labels=targets[None].to(logits.device),
                                       **kwargs)
            plain = type(head) is nn.Linear and not had_instance_forward and not (
                head._forward_hooks or head._forward_pre_hooks)
            return self._chunked_cross_entropy(head if plain else head_forward, state["hidden"], targets,
                                               num_items_in_batch)

        had_loss_function = "_loss_function" in base.__dict__
        previous_loss_function = base.__dict__.get("_loss_function")
        head.forward = sparse_head
        base.loss_function = sparse_loss
        try:
            yield state
        finally:
            if had_instance_forward:
                head.forward = head_forward
            else:
                del head.forward
            if had_loss_function:
                base.loss_function = previous_loss_function
            else:
                del base._loss_function
            state.clear()

    def _chunked_cross_entropy(self, head: nn.Linear | Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                               targets: torch.Tensor, num_items_in_batch: torch.Tensor | int | None) -> torch.Tensor:
        """CE summed over chunks of loss positions, reduced like transformers' fixed_cross_entropy.

        A plain ``nn.Linear`` head uses :class:`_LinearCrossEntropy` (gradients made chunk by chunk in the
        forward: no recomputation); any other head (LoRA on the head, hooks) is recomputed per chunk in backward.
        """
        targets = targets.to(hidden.device)
        if num_items_in_batch is None:
            denominator: torch.Tensor | int = targets.numel()  # cross_entropy's "mean" over non-ignored targets
        elif torch.is_tensor(num_items_in_batch):
            denominator = num_items_in_batch.to(hidden.device)
        else:
            denominator = num_items_in_batch
        if isinstance(head, nn.Linear):
            return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, self.chunk_tokens, denominator)

        def chunk_loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(head(h).float(), t, reduction="sum")

        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.shape[0], self.chunk_tokens):
            h, t = hidden[start:start + self.chunk_tokens], targets[start:start + self.chunk_tokens]
            total = total + checkpoint(chunk_loss, h, t, use_reentrant=False)
        return total / denominator

    def run(self, model: nn.Module, unwrapped: nn.Module, inputs: dict[str, Any], trainer_custom_loss: bool,
            call: Callable[[], Any]) -> Any:
        """``call()`` (Trainer's compute_loss) through the sparse path where it applies, else as is.

        Until the sparse path has once worked for a model (per plain / chunked variant), any error in it reruns
        the batch on the full path and turns it off for that model: a model that computes its loss some other
        way (and trips over the gathered logits) trains as before instead of crashing.
        """
        base = _base_model(unwrapped)
        self.last_call_sparse = False  # read by the FLOP count: where did the LM head run?
        if not model.training or not self.applies(base, inputs, trainer_custom_loss):
            return call()
        labels = inputs["labels"]
        variant = (id(base), int((labels[..., 1:] != IGNORE_INDEX).sum()) > self.chunk_tokens)
        try:
            with self.patched(base, labels) as state:
                result = call()
                if state.get("loss_calls") != 1:
                    raise SparseLossMismatch("the model did not compute its loss through loss_function")
        except Exception as err:  # noqa: BLE001 - see the docstring: rerun in full, then stop trying
            if not isinstance(err, SparseLossMismatch) and variant in self._worked:
                raise
            self.refuse(base, f"{type(err).__name__}: {err}")
            return call()
        self._worked.add(variant)
        self.last_call_sparse = True
        return result


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(h_i W^T + b, t_i) / denominator, [chunk x vocab] logits at a time.

    The gradient of a summed CE w.r.t. the logits is softmax - onehot, known in the forward; so each chunk's
    logits are turned into its share of dL/dh, dL/dW, dL/db at once and dropped. Backward only scales them.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, denominator):  # noqa: D102 - see the class docstring
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], bias is not None and ctx.needs_input_grad[2])
        grad_h = torch.zeros_like(hidden, dtype=torch.float32) if need[0] else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need[1] else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need[2] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            h, t = hidden[start:start + chunk], targets[start:start + chunk]
            logits = nn.functional.linear(h, weight, bias).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
            if any(need):
                d_logits = torch.exp(logits.sub_(lse[:, None]))  # softmax, in place of the logits
                d_logits[torch.arange(t.numel(), device=t.device), t] -= 1.0
                if need[0]:
                    grad_h[start:start + chunk] = d_logits.to(weight.dtype) @ weight
                if need[1]:
                    grad_w.addmm_(d_logits.t(), h.float())
                if need[2]:
                    grad_b += d_logits.sum(0)
            del logits
        ctx.save_for_backward(*(g for g in (grad_h, grad_w, grad_b) if g is not None))
        ctx.need = need
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.denominator = denominator
        return total / denominator

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        scale = grad_output.float() / ctx.denominator
        saved = iter(ctx.saved_tensors)
        grads = [(next(saved) * scale).to(dtype) if need else None for need, dtype in zip(ctx.need, ctx.dtypes)]
        return grads[0], grads[1], grads[2], None, None, None
