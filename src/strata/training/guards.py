"""The non-finite guard: a NaN/inf loss or gradient never reaches the weights, and never passes silently.

Trainer on its own keeps going after a NaN: it logs the average of earlier losses in its place
(`logging_nan_inf_filter`), applies the NaN update, and saves NaN weights with exit code 0. The guard runs
between the gradient clipping and the optimizer step (`on_pre_optimizer_step`), where the accumulated
gradients are final, and

* `stop` (default): drops the update, ends training at that step, and keeps anything from being saved at or
  after it; the recipe then writes `metrics.json` with `"status": "diverged"` and exits non-zero;
* `skip_step`: drops the update (every gradient set to None, so the optimizer leaves weights and moments as
  they were; the learning-rate schedule still advances), counts it, and stops as above after `skip_limit`
  non-finite steps in a row.

Under DDP/FSDP every rank must take the same decision, so the flag is all-reduced (one scalar per step).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from strata.errors import RunFailed
from strata.training.run_folder import RunFolder, latest_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class Divergence:
    step: int  # the optimizer step whose update was dropped
    reason: str


@dataclass
class NonFiniteGuard(TrainerCallback):
    policy: str = "stop"
    skip_limit: int = 3
    skipped: int = 0
    consecutive: int = 0
    divergence: Divergence | None = None
    _loss_not_finite: bool = field(default=False, repr=False)

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Called by the trainer with every micro-batch loss of the current optimizer step."""
        if not bool(torch.isfinite(loss.detach()).all()):
            self._loss_not_finite = True

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        params = [p for p in model.parameters() if p.grad is not None] if model is not None else []
        # fp16: an inf gradient is the loss scaler's business (it skips that step and lowers the scale),
        # so only a non-finite loss counts there.
        grads_finite = getattr(args, "fp16", False) or _all_finite(p.grad for p in params)
        bad = _any_rank(self._loss_not_finite or not grads_finite)
        loss_bad = self._loss_not_finite
        self._loss_not_finite = False
        if not bad:
            self.consecutive = 0
            return control
        for p in params:  # the optimizer skips parameters without a gradient: no update, moments untouched
            p.grad = None
        step = state.global_step + 1
        what = "loss" if loss_bad else "gradient"
        self.consecutive += 1
        if self.policy == "skip_step" and self.consecutive < self.skip_limit:
            self.skipped += 1
            logger.warning("step %d: non-finite %s, update skipped (%d so far, %d in a row of at most %d)",
                           step, what, self.skipped, self.consecutive, self.skip_limit)
            return control
        in_a_row = f" ({self.consecutive} steps in a row)" if self.policy == "skip_step" else ""
        self.divergence = Divergence(step=step, reason=f"non-finite {what}{in_a_row}")
        control.should_training_stop = True
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if self.divergence is not None:  # nothing from the diverged step is evaluated or saved
            control.should_save = False
            control.should_evaluate = False
        return control


def _any_rank(flag: bool) -> bool:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    backend = torch.distributed.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def _all_finite(tensors) -> bool:
    """One device sync for the whole set, not one per tensor."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors]
    return bool(torch.stack(flags).all()) if flags else True


def all_finite(model: torch.nn.Module) -> bool:
    """True when every parameter is finite: the last check before weights are written to final/."""
    return _all_finite(model.parameters())


def finite_or_none(value):
    """metrics.json stays valid JSON: NaN/inf become null (json.dumps would write the non-standard NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    return value


def stop_diverged(guard: NonFiniteGuard, folder: RunFolder, is_main: bool, train_metrics: dict) -> None:
    """metrics.json says what happened; final/ is not written; one line names the step and what is left."""
    divergence = guard.divergence
    newest = latest_checkpoint(folder.root)  # complete checkpoints only: all saved before the bad step
    last = str(newest) if newest else None
    if is_main:
        folder.write_metrics({
            "status": "diverged", "diverged_at_step": divergence.step, "reason": divergence.reason,
            "last_checkpoint": last, "nonfinite_skips": guard.skipped,
            "train": finite_or_none(dict(train_metrics)),
        })
    kept = f"the last finite checkpoint is {last}" if last else "no checkpoint was saved before it"
    raise RunFailed(
        f"training diverged at step {divergence.step} ({divergence.reason}); its update was dropped and "
        f"final/ was not written; {kept}; start again with a lower learning rate (or --max_grad_norm), "
        "or with --nan_policy skip_step"
    )
