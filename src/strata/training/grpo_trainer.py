"""TRL's ``GRPOTrainer`` as Strata runs it: an in-memory KL reference, ``--data_seed`` prompt order, and the
text recipe's tokens/s and device telemetry (``MeteredTraining``; what a step's tokens are: ``step_tokens``).

The first two fill gaps of TRL 1.16's public API and are kept here, small and checked, so a TRL upgrade that
moves them fails loudly (tests/test_rl_flags.py) instead of silently training against the wrong
reference or order.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Iterator
from typing import Any


def frozen_copy(model: Any) -> Any:
    """The KL reference: a copy of the policy as it is now, in eval mode, with no gradients."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


@contextlib.contextmanager
def reference_is(reference: Any | None) -> Iterator[list[str]]:
    """While TRL's ``GRPOTrainer.__init__`` runs, make its reference loader return ``reference``.

    TRL 1.16 has no ``ref_model`` argument: with beta > 0 and no PEFT it always builds the reference
    with ``create_model_from_path(get_config_model_id(model.config), ...)`` (``config._name_or_path``),
    i.e. it reloads weights from disk. A model built from a config (``--init scratch``: the path is a
    folder with only config.json, or nothing) or changed in memory has no such weights. Upstream:
    huggingface/trl#2746 (a ``ref_model`` argument, closed unmerged) and huggingface/trl#3948 (open:
    custom models cannot build the reference). The public alternative, saving the policy and
    pointing ``config.name_or_path`` at it, writes and reloads every weight and needs the
    architecture to load through the Auto classes (quantized and custom models do not always), so
    this patches that name in TRL's trainer module (a private path) for the constructor only; strata
    never writes ``_name_or_path``. TRL then treats the copy like its own reference (dropout, fused
    LM head, ``accelerator.prepare``). Yields the ids TRL asked for, so the caller can check the patch
    was used (build_grpo_trainer raises if it was not: a TRL upgrade fails loudly).
    """
    import trl.trainer.grpo_trainer as grpo_module

    asked: list[str] = []
    if reference is None:
        yield asked
        return

    def load(model_id: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(model_id)
        return reference

    original = grpo_module.create_model_from_path
    grpo_module.create_model_from_path = load
    try:
        yield asked
    finally:
        grpo_module.create_model_from_path = original


def _seeded_sampler(sampler: Any, seed: int | None) -> Any:
    """Reseed TRL's prompt sampler with ``--data_seed`` (TRL seeds it with ``args.seed``, ignoring ``data_seed``)."""
    if seed is None or not getattr(sampler, "shuffle", False):
        return sampler
    import torch

    if not isinstance(getattr(sampler, "generator", None), torch.Generator):
        raise RuntimeError(
            f"TRL's {type(sampler).__name__} has no torch generator to seed with --data_seed; this TRL "
            "release is not supported by strata's RL mode"
        )
    sampler.seed = seed
    sampler.generator.manual_seed(seed)
    return sampler


@functools.cache
def grpo_trainer_class() -> type:
    """``GRPOTrainer`` whose train/eval prompt order follows ``args.data_seed`` (else ``args.seed``)."""
    from trl import GRPOTrainer

    from strata.training.telemetry import MeteredTraining

    class StrataGRPOTrainer(MeteredTraining, GRPOTrainer):
        mfu_not_reported = ("MFU is not reported for GRPO: generation runs forward only, token by token, and the "
                            "reference/old-policy forwards come on top, so the training FLOPs per counted token are "
                            "not the work done (tokens/s still are)")

        def step_tokens(self, inputs: dict[str, Any]) -> tuple[int, int] | None:
            """(prompt + completion tokens, completion tokens) of one training micro-batch, as the policy's
            training forward sees them: ``prompt_mask`` + ``completion_mask`` are its attention mask, so left
            padding and everything after a completion's EOS are not counted. Each training pass counts (with
            ``num_iterations`` > 1 a generation is counted once per pass); generation itself and the reference /
            old-policy forwards over the same tokens are not counted again (their time is in the seconds).

            TRL's own ``num_tokens`` (``state.num_input_tokens_seen``) is not reused: it is the sum over all
            processes, counted once per generation, so it has no per-device split; with ``num_iterations=1`` and
            no ``mask_truncated_completions`` (Strata's defaults) the two totals are equal, which the tests check.
            """
            prompt, completion = inputs.get("prompt_mask"), inputs.get("completion_mask")
            if prompt is None or completion is None:
                return None
            loss = completion if inputs.get("tool_mask") is None else completion * inputs["tool_mask"]
            return int(prompt.sum()) + int(completion.sum()), int(loss.sum())

        def _get_train_sampler(self, dataset: Any = None) -> Any:
            return _seeded_sampler(super()._get_train_sampler(dataset), self.args.data_seed)

        def _get_eval_sampler(self, eval_dataset: Any) -> Any:
            return _seeded_sampler(super()._get_eval_sampler(eval_dataset), self.args.data_seed)

    return StrataGRPOTrainer
