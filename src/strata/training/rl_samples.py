"""Sample completions of a GRPO run, written as TensorBoard text: what the reward functions were given.

TRL 1.16 keeps its latest generation batch in ``GRPOTrainer._logs`` (private) and only prints it or
sends it to wandb/trackio (``log_completions``). The public route is the reward function itself: TRL
calls every reward with the batch's ``prompts`` and ``completions`` (``_calculate_rewards``), so a thin
wrapper records exactly those texts and the reward each function returned.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback


def reward_name(func: Any) -> str:
    """The name TRL gives a reward function (``trl.trainer.utils.get_callable_name``): partials unwrapped."""
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", type(func).__name__)


def _is_async(func: Any) -> bool:
    while isinstance(func, functools.partial):
        func = func.func
    method = vars(type(func)).get("__call__")  # a callable instance: its class's method (as TRL checks)
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(method)


class SampleRecorder:
    """The latest batch the reward functions saw: prompts, completions and each function's rewards."""

    def __init__(self) -> None:
        self.prompts: list[Any] = []
        self.completions: list[Any] = []
        self.rewards: dict[str, list[float]] = {}
        self._batch: Any = None  # the prompts list of the batch being scored (TRL passes one list to all)

    def wrap(self, func: Any) -> Any:
        """``func`` recording what it is given (async functions are passed through unrecorded)."""
        return func if _is_async(func) else RecordingReward(func, self)

    def record(self, name: str, prompts: Any, completions: Any, rewards: Any) -> None:
        if prompts is not self._batch:  # a new batch: every reward of one batch gets the same list
            self._batch = prompts
            self.prompts, self.completions, self.rewards = list(prompts), list(completions), {}
        self.rewards[name] = [math.nan if r is None else float(r) for r in rewards]

    def samples(self, count: int, max_chars: int) -> list[dict[str, Any]]:
        """The last ``count`` (prompt tail, completion head, rewards) of the latest batch."""
        out = []
        for i in range(max(0, len(self.completions) - count), len(self.completions)):
            out.append({
                "prompt": str(self.prompts[i])[-max_chars:],
                "completion": str(self.completions[i])[:max_chars],
                "rewards": {n: v[i] for n, v in self.rewards.items() if i < len(v)},
            })
        return out


class RecordingReward:
    """A reward function that records its inputs and outputs; TRL sees the wrapped function's name."""

    def __init__(self, func: Any, recorder: SampleRecorder) -> None:
        self.func = func
        self.recorder = recorder
        self.__name__ = reward_name(func)

    def __call__(self, prompts: Any, completions: Any, **kwargs: Any) -> Any:
        rewards = self.func(prompts=prompts, completions=completions, **kwargs)
        self.recorder.record(self.__name__, prompts, completions, rewards)
        return rewards


class CompletionSamplesCallback(TrainerCallback):
    """Writes a few (prompt, completion, rewards) samples as TensorBoard text after each evaluation and at
    train end, and keeps them in ``self.history`` (step, tag, samples) for metrics.json and tests.

    Writes to ``writer`` when given, else to the trainer's ``TensorBoardCallback`` writer if it has one.
    """

    def __init__(self, recorder: SampleRecorder, num_samples: int = 4, max_chars: int = 400,
                 writer: Any = None) -> None:
        self.recorder = recorder
        self.num_samples = num_samples
        self.max_chars = max_chars
        self.writer = writer
        self.trainer: Any = None
        self.history: list[tuple[int, str, list[dict[str, Any]]]] = []

    def attach(self, trainer: Any) -> None:
        """The trainer whose TensorBoardCallback writer is used when no writer was given."""
        self.trainer = trainer

    def _writer(self) -> Any:
        if self.writer is not None:
            return self.writer
        for callback in getattr(getattr(self.trainer, "callback_handler", None), "callbacks", []):
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                return callback.tb_writer
        return None

    def _record(self, state: Any, tag: str) -> None:
        samples = self.recorder.samples(self.num_samples, self.max_chars)
        if not samples:
            return
        self.history.append((state.global_step, tag, samples))
        writer = self._writer() if state.is_world_process_zero else None
        if writer is None:
            return
        blocks = []
        for s in samples:
            scores = ", ".join(f"{n}={v:.3g}" for n, v in s["rewards"].items())
            blocks.append(f"**prompt** (tail)\n\n    {s['prompt']!r}\n\n**completion**\n\n    {s['completion']!r}\n\n"
                          f"**rewards** {scores}")
        writer.add_text(tag, "\n\n---\n\n".join(blocks), state.global_step)
        writer.flush()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record(state, "rl/eval_samples")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._record(state, "rl/train_samples")
