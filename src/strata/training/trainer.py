"""``StrataTrainer``: transformers' Trainer plus generative evaluation, aux-loss and throughput logging.

Trainer's own evaluation only reports the loss; classification-as-generation needs the label-word
likelihood metrics (accuracy, macro-F1) *inside* ``evaluate()`` so that ``--metric_for_best_model
eval_accuracy`` and early stopping see them. Everything else (optimizer, schedule, checkpoints,
resume, DDP) is Trainer's.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from transformers import Trainer

from strata.training.guards import NonFiniteGuard

logger = logging.getLogger(__name__)


def scalar_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten nested metric dicts to loggable scalars (``per_domain.sst2.accuracy`` ...)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[name] = float(value)
        elif isinstance(value, dict) and key in ("per_domain", "precision", "recall", "f1"):
            out.update(scalar_metrics(value, prefix=f"{name}/"))
    return out


class StrataTrainer(Trainer):
    """Trainer whose ``evaluate`` adds task metrics computed by :mod:`strata.evaluation`."""

    def __init__(self, *args, task_eval: list[dict[str, Any]] | None = None,
                 nan_guard: NonFiniteGuard | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.nan_guard = nan_guard or NonFiniteGuard()
        self.add_callback(self.nan_guard)
        # task_eval: one dict per evaluation source: name, dataset (formatted), family, label_words,
        # method, batch_size, max_length, max_examples.
        self.task_eval = task_eval or []
        self.last_task_metrics: dict[str, dict[str, Any]] = {}
        self._aux_losses: list[float] = []
        self._last_log_time: float | None = None
        self._last_log_tokens = 0

    # --- losses -----------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        aux = outputs.get("aux_loss") if isinstance(outputs, dict) else getattr(outputs, "aux_loss", None)
        if aux is not None and model.training:
            self._aux_losses.append(float(aux.detach().float().mean()))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.nan_guard.observe_loss(loss)
        return loss

    # --- logging ----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add throughput, router aux loss, skipped non-finite steps
            if self.nan_guard.skipped:
                logs["nonfinite_skips"] = self.nan_guard.skipped
            now = time.perf_counter()
            tokens = int(self.state.num_input_tokens_seen or 0)
            if self._last_log_time is not None and now > self._last_log_time:
                logs["tokens_per_second"] = (tokens - self._last_log_tokens) / (now - self._last_log_time)
            self._last_log_time, self._last_log_tokens = now, tokens
            if self._aux_losses:
                logs["aux_loss"] = sum(self._aux_losses) / len(self._aux_losses)
                self._aux_losses.clear()
        super().log(logs, start_time)

    def _inner_training_loop(self, *args, **kwargs):
        self._last_log_time = time.perf_counter()
        self._last_log_tokens = int(self.state.num_input_tokens_seen or 0)
        return super()._inner_training_loop(*args, **kwargs)

    # --- evaluation -------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.eval_dataset is not None or eval_dataset is not None:
            metrics.update(super().evaluate(eval_dataset, ignore_keys, metric_key_prefix))
            if f"{metric_key_prefix}_loss" in metrics:
                metrics[f"{metric_key_prefix}_perplexity"] = math.exp(min(50.0, metrics[f"{metric_key_prefix}_loss"]))
        if self.task_eval:
            flat: dict[str, float] = {}
            single = len(self.task_eval) == 1
            for spec in self.task_eval:
                task = self.run_task_evaluation(spec)
                prefix = f"{metric_key_prefix}_" if single else f"{metric_key_prefix}_{spec['name']}/"
                flat.update({f"{prefix}{k}": v for k, v in scalar_metrics(task).items()})
            if not single:  # a mixture: also the unweighted mean over its sources
                for name in ("accuracy", "macro_f1", "exact_match"):
                    values = [self.last_task_metrics[s["name"]].get(name) for s in self.task_eval]
                    values = [v for v in values if isinstance(v, (int, float))]
                    if values:
                        flat[f"{metric_key_prefix}_{name}"] = sum(values) / len(values)
            self.log(flat)
            metrics.update(flat)
        return metrics

    def task_eval_details(self) -> dict[str, Any]:
        """Full (nested) metrics of the last task evaluation, for metrics.json."""
        return dict(self.last_task_metrics)

    @torch.no_grad()
    def run_task_evaluation(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Label-likelihood / generation metrics on one formatted evaluation set."""
        from strata.evaluation import evaluate_dataset
        from strata.training.stratum_sources import source_strata

        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        # Scored in fp32 (autocast off) so `strata eval` on final/ reproduces the number exactly. A `domain`
        # stratified model gets this source's index (task_eval follows --datasets order) as its stratum.
        source = next((i for i, s in enumerate(self.task_eval) if s is spec), None)
        with torch.autocast(device_type=self.args.device.type, enabled=False), source_strata(model, source):
            metrics = evaluate_dataset(model, self.processing_class, spec["dataset"], spec["family"],
                                       spec["label_words"], method=spec["method"],
                                       batch_size=spec["batch_size"], max_length=spec["max_length"],
                                       max_examples=spec["max_examples"])
        model.train(was_training)
        self.last_task_metrics[spec["name"]] = metrics
        return metrics
