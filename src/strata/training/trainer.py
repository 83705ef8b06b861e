"""``StrataTrainer``: transformers' Trainer plus generative evaluation, aux-loss and throughput logging.

Trainer's own evaluation only reports the loss; classification-as-generation needs the label-word
likelihood metrics (accuracy, macro-F1) *inside* ``evaluate()`` so that ``--metric_for_best_model
eval_accuracy`` and early stopping see them. Everything else (optimizer, schedule, checkpoints,
resume, DDP) is Trainer's, except the checkpoints of a model Strata sharded (fsdp_checkpoint.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import EvalLoopOutput

from strata.evaluation.task_metrics import scalar_metrics, task_metric_names
from strata.training.fsdp_checkpoint import FsdpCheckpointing
from strata.training.guards import NonFiniteGuard
from strata.training.sparse_loss import LossPositionsOnly
from strata.training.telemetry import DeviceTelemetry, MeteredTraining
from strata.training.throughput import (
    FlopCounter,
    ThroughputMeter,
    batch_counts,
    measure_peak_flops,
    mfu_unavailable_reason,
)

__all__ = ["StrataTrainer", "scalar_metrics"]  # run.py takes scalar_metrics from here

logger = logging.getLogger(__name__)


class StrataTrainer(FsdpCheckpointing, Trainer):
    """Trainer whose ``evaluate`` adds task metrics computed by :mod:`strata.evaluation`; checkpoints of an
    FSDP-sharded model go through :class:`~strata.training.fsdp_checkpoint.FsdpCheckpointing`."""

    def __init__(self, *args, task_eval: list[dict[str, Any]] | None = None,
                 nan_guard: NonFiniteGuard | None = None, loss_positions_only: bool = True,
                 eval_loss: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loss_positions = LossPositionsOnly(enabled=loss_positions_only)
        self.nan_guard = nan_guard or NonFiniteGuard()
        self.add_callback(self.nan_guard)
        # task_eval: one dict per evaluation source: name, dataset (formatted), family, label_words,
        # method, batch_size, max_length, max_examples.
        self.task_eval = task_eval or []
        self.eval_loss = eval_loss  # the token-loss pass even when task metrics exist (see loss_pass_wanted)
        self.last_task_metrics: dict[str, dict[str, Any]] = {}
        self._task_prefix: str | None = None  # set while evaluate() runs: evaluation_loop adds task metrics
        self._aux_losses: list[float] = []
        self.throughput: ThroughputMeter | None = None  # built at train start, after the peak probe
        self.telemetry: DeviceTelemetry | None = None  # per-device memory and tokens/s, with the meter
        # Where the LM head runs, for the FLOP count: "loss" when compute_loss projects only loss positions.
        self.lm_head_positions = "all"
        self.run_board: Any = None  # the run's TensorBoard writer (strata.training.tensorboard.RunBoard), set by run.py

    # --- losses -----------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # In training, the LM head + cross-entropy run only where a label is set (same loss, see sparse_loss.py).
        loss, outputs = self.loss_positions.run(
            model, self.accelerator.unwrap_model(model), inputs,
            self.label_smoother is not None or self.compute_loss_func is not None,
            lambda: super(StrataTrainer, self).compute_loss(model, inputs, return_outputs=True,
                                                            num_items_in_batch=num_items_in_batch))
        if model.training:
            self.lm_head_positions = "loss" if self.loss_positions.last_call_sparse else "all"
        aux = outputs.get("aux_loss") if isinstance(outputs, dict) else getattr(outputs, "aux_loss", None)
        if aux is not None and model.training:
            self._aux_losses.append(float(aux.detach().float().mean()))
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        counts = batch_counts(inputs, getattr(self.processing_class, "pad_token_id", None),
                              bool(getattr(self.model.config, "is_encoder_decoder", False)))
        loss = super().training_step(model, inputs, num_items_in_batch)
        self.nan_guard.observe_loss(loss)
        if self.throughput is not None and counts is not None:  # after the step: compute_loss sets
            non_pad, loss_tokens, seq_len = counts  # lm_head_positions
            self.throughput.observe(non_pad, loss_tokens, self.lm_head_positions, seq_len)
        return loss

    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self):
        # Trainer 5.24's own version (used for a model marked as sharded, see training/parallel.py) reads
        # model.config.distributed_config, which only from_pretrained(distributed_config=...) sets: hold every
        # reduction (HSDP's all-reduce too) until the last micro-batch of the accumulation window.
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    # --- logging ----------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add throughput, router aux loss, skipped non-finite steps
            if self.nan_guard.skipped:
                logs["nonfinite_skips"] = self.nan_guard.skipped
            if self.throughput is not None:  # tokens/s, loss tokens/s, MFU since the last training log
                logs.update(self.throughput.close_window(self._sum_over_processes))
                if self.telemetry is not None:  # device{r}/memory_*, device{r}/tokens_per_second, the total
                    logs.update(self.telemetry.log_entries(*self.throughput.last_local, self._gather_rows))
            if self._aux_losses:
                logs["aux_loss"] = sum(self._aux_losses) / len(self._aux_losses)
                self._aux_losses.clear()
        super().log(logs, start_time)

    def train(self, *args, **kwargs):
        # The throughput meter (a callback) is built here, before Trainer's clock starts: the peak FLOP/s
        # probe must not count as training time, and on_train_begin must already reach the meter.
        if self.throughput is None:
            self.throughput = self._throughput_meter()
            self.add_callback(self.throughput)
            self.telemetry = DeviceTelemetry(self.args.device, self.accelerator.num_processes)
        return super().train(*args, **kwargs)

    def _throughput_meter(self) -> ThroughputMeter:
        """FLOP counter + measured peak (before the clock starts); MFU's absence is said once, with why."""
        reason = mfu_unavailable_reason(self.model)
        peak = None
        if reason is None:
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32
            peak = measure_peak_flops(self.args.device, dtype)
            logger.info("peak %.3g FLOP/s for MFU: %s", peak.flops_per_second, peak.how)
        elif self.is_world_process_zero():
            logger.warning(reason)
        return ThroughputMeter(FlopCounter.from_model(self.model), peak, reason, self.accelerator.num_processes)

    # The process reductions and metrics.json ``run.telemetry`` are the GRPO and vision trainers' (telemetry.py)
    _sum_over_processes = MeteredTraining._sum_over_processes
    _gather_rows = MeteredTraining._gather_rows
    throughput_summary = MeteredTraining.throughput_summary  # run-level tokens/s, FLOPs per token, MFU
    telemetry_summary = MeteredTraining.telemetry_summary

    # --- evaluation -------------------------------------------------------------------------
    # Task metrics join the metrics inside Trainer.evaluate (through evaluation_loop), so the one
    # `self.log` of an evaluation, the `on_evaluate` callbacks (EarlyStoppingCallback) and
    # `_determine_best_metric` (load_best_model_at_end) all see `eval_accuracy` and its kin.
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        if (self.eval_dataset is None and eval_dataset is None) or not self.loss_pass_wanted():
            if not self.task_eval:
                return {}
            # No token-loss pass: do what Trainer.evaluate does after its loop, with task metrics only.
            started = time.perf_counter()
            metrics = self.task_metrics(metric_key_prefix)
            metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - started, 4)
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics
        self._task_prefix = metric_key_prefix
        try:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        finally:
            self._task_prefix = None

    def loss_pass_wanted(self) -> bool:
        """Whether evaluate() runs Trainer's token-loss loop over the eval set (``eval_loss``).

        With task metrics it repeats the forwards scoring already did (about 30% of an evaluation), so
        only when asked: ``--eval_loss``, or a loss-based ``--metric_for_best_model`` (also Trainer's
        ``loss`` default under ``--load_best_model_at_end``). Without task metrics it is the evaluation.
        """
        metric = self.args.metric_for_best_model or ""
        metric = metric[len("eval_"):] if metric.startswith("eval_") else metric
        return not self.task_eval or self.eval_loss or metric in ("loss", "perplexity")

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix: str = "eval") -> EvalLoopOutput:
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                         metric_key_prefix)
        if self._task_prefix != metric_key_prefix:  # predict(), not evaluate(): the loop's metrics only
            return output
        loss_key = f"{metric_key_prefix}_loss"
        if loss_key in output.metrics:
            output.metrics[f"{metric_key_prefix}_perplexity"] = math.exp(min(50.0, output.metrics[loss_key]))
        output.metrics.update(self.task_metrics(metric_key_prefix))
        return output

    def task_metrics(self, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Scalar task metrics of every evaluation source: ``eval_accuracy`` for one source; for a mixture
        ``eval_<source>/accuracy`` per source plus their unweighted mean as ``eval_accuracy``."""
        per_source = {spec["name"]: self.run_task_evaluation(spec) for spec in self.task_eval}
        return task_metric_names(per_source, metric_key_prefix) if per_source else {}

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
