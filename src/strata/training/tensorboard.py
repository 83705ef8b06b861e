"""A run's TensorBoard: one writer, one event file, the callbacks that share it, and the HParams tab.

transformers' ``TensorBoardCallback`` closes its writer at train end, so the final ``evaluate()``
after ``train()`` made it open a second writer (a second event file, or one under
``checkpoints/runs/`` in RL); and nothing wrote the HParams summaries, so that tab stayed empty.
Here the recipe opens the writer once (rank 0), the callbacks write through it, and
:meth:`RunBoard.finish` adds the run's hyperparameters with its final metrics and closes it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from strata.training.callbacks import RunMetadataCallback

# Where an hparams metric's value lives: a scalar with this tag prefix, written at the final step.
METRIC_PREFIX = "hparams/"

# Resolved values from metrics.json's "run" block that say more than the flag (None -> the value used).
_RESOLVED = {"tag": "dataset_tag", "learning_rate": "learning_rate", "precision": "precision",
             "world_size": "world_size", "model_source": "model_source",
             "total_parameters": "total_parameters", "trainable_parameters": "trainable_parameters"}


class SharedWriterCallback(TensorBoardCallback):
    """transformers' TensorBoard logging through the run's writer, which it leaves open at train end
    (the final evaluation still logs; :class:`RunBoard` closes it once)."""

    def on_train_end(self, args, state, control, **kwargs):
        if self.tb_writer is not None:
            self.tb_writer.flush()


class RunBoard:
    """The run's one ``SummaryWriter`` (rank 0 only; elsewhere every method does nothing)."""

    def __init__(self, log_dir: Path | None) -> None:
        self.writer = None
        if log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir))

    @classmethod
    def open(cls, log_dir: Path, is_main: bool) -> RunBoard:
        return cls(log_dir if is_main else None)

    def callbacks(self, scalars: dict[str, float], texts: dict[str, Any]) -> list[TrainerCallback]:
        """Run metadata at step 0 and Trainer's logs, both into this writer."""
        if self.writer is None:
            return []
        return [RunMetadataCallback(self.writer, scalars, texts), SharedWriterCallback(tb_writer=self.writer)]

    def finish(self, hparams: dict[str, Any], metrics: dict[str, float], step: int) -> None:
        """Write the HParams summaries (hyperparameters + final metrics) into the same file and close it.

        ``SummaryWriter.add_hparams`` would open a second writer in a sub-folder (torch's writer.py), so
        the three summaries from ``torch.utils.tensorboard.summary.hparams`` go through this writer's
        own file writer, and each metric is a scalar the HParams tab reads (tag ``hparams/<name>``).
        """
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        tagged = {METRIC_PREFIX + name: value for name, value in metrics.items()}
        for summary in hparams_summaries(hparams, tagged):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in tagged.items():
            self.writer.add_scalar(tag, value, step)
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _hparam_value(value: Any) -> bool | int | float | str | None:
    """A flag's value as the HParams tab holds it: scalars as they are, lists and dicts as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return json.dumps(value, sort_keys=True, default=str)


# Always in the HParams tab, whatever their value: the axes runs are usually compared on.
CORE_HPARAMS = ("mode", "model", "dataset", "dataset_config", "datasets", "mixture_rates", "init", "use_lora",
                "use_packing", "max_length", "learning_rate", "per_device_train_batch_size",
                "gradient_accumulation_steps", "max_steps", "num_train_epochs", "warmup_steps", "lr_scheduler_type",
                "weight_decay", "seed", "data_seed")


def _defaults(instance: Any) -> dict[str, Any]:
    """The dataclass defaults of ``instance``'s fields (default factories called)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(instance):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def run_hparams(config: Any, run: dict[str, Any]) -> dict[str, Any]:
    """The run's hyperparameters: the core axes, every other field set away from its default (a flag or
    --config; the mode's class holds ~150 TrainingArguments fields, most never touched), and the resolved
    values of ``metrics.json["run"]`` (learning rate and precision as used, dataset tag, world size, sizes)."""
    from strata.training.run_folder import NOT_TRAINING_CONFIG

    defaults = {**_defaults(config.data), **_defaults(config.model), **_defaults(config.train)}
    found: dict[str, Any] = {}
    for name, value in config.to_dict().items():
        if name in NOT_TRAINING_CONFIG or name.endswith("_token"):
            continue
        if name in CORE_HPARAMS or (name in defaults and value != defaults[name]):
            found[name] = _hparam_value(value)
    for key, name in _RESOLVED.items():
        if run.get(key) is not None:
            found[name] = _hparam_value(run[key])
    return {name: value for name, value in found.items() if value is not None}


def hparams_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers of metrics.json's ``train``, ``rl`` and ``eval`` blocks (later blocks win a shared name)."""
    flat: dict[str, float] = {}
    for block in ("train", "rl", "eval"):
        for name, value in (metrics.get(block) or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value is not None:
                flat[name] = float(value) if math.isfinite(value) else float("nan")
    return flat
