"""RL prompts: a formatted dataset as GRPO reads it (the prompt, left-truncated, and the columns rewards read).

TRL 1.16 has no ``max_prompt_length``, so prompts are truncated here (from the left: the end holds the question
and the answer cue).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from datasets import Dataset

from strata.errors import StrataError

# Dataset columns the built-in rewards read (TRL passes every kept column to every reward).
REWARD_COLUMNS = ("reference", "label", "label_words", "domain", "entry_point", "test", "code_prompt")


def _truncate_text_left(text: str, tokenizer: Any, max_tokens: int) -> str:
    """Keep the last ``max_tokens`` tokens of ``text`` (the end holds the question and the answer cue)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[-max_tokens:], skip_special_tokens=True)


def _truncate_messages(
    messages: list[dict[str, Any]], tokenizer: Any, max_tokens: int
) -> list[dict[str, Any]]:
    """Shorten the last user message of a conversational prompt until the rendered prompt fits."""
    messages = [dict(m) for m in messages]

    def length() -> int:
        if getattr(tokenizer, "chat_template", None):
            rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        return sum(
            len(tokenizer(str(m.get("content", "")), add_special_tokens=False)["input_ids"]) for m in messages
        )

    excess = length() - max_tokens
    if excess <= 0:
        return messages
    users = [
        i for i, m in enumerate(messages) if m.get("role") == "user" and isinstance(m.get("content"), str)
    ]
    if not users:
        return messages
    last = users[-1]
    content_len = len(tokenizer(messages[last]["content"], add_special_tokens=False)["input_ids"])
    messages[last]["content"] = _truncate_text_left(
        messages[last]["content"], tokenizer, max(1, content_len - excess)
    )
    return messages


def prepare_rl_dataset(
    formatted: Dataset,
    tokenizer: Any,
    max_prompt_length: int | None,
    *,
    label_words: Sequence[str] | None = None,
) -> Dataset:
    """A GRPO-ready dataset: ``prompt`` (left-truncated to ``max_prompt_length`` tokens) and the reward columns.

    ``completion`` and other training-only columns are dropped; ``reference``, ``label``,
    ``label_words``, ``domain``, ``entry_point``, ``test`` and ``code_prompt`` are kept when present, because TRL
    hands every kept column to the reward functions. ``label_words`` adds that column to every
    row when the dataset lacks it (useful for mixtures; the closure in ``make_reward`` covers
    single datasets). Idempotent, so preparing twice is harmless.
    """
    if "prompt" not in formatted.column_names:
        raise StrataError(
            f"RL needs a 'prompt' column but the dataset has {formatted.column_names}; "
            "use a formatted (prompt/completion) dataset for --mode rl"
        )
    if max_prompt_length is not None and max_prompt_length < 1:
        raise StrataError(f"--max_prompt_length {max_prompt_length} must be at least 1")
    keep = ["prompt"] + [c for c in REWARD_COLUMNS if c in formatted.column_names]
    dataset = formatted.select_columns(keep)
    dataset = dataset.filter(lambda row: bool(row["prompt"]), desc="drop empty prompts")
    if len(dataset) == 0:
        raise StrataError(
            "every prompt of the RL dataset is empty; check --prompt_template and the text column"
        )

    if max_prompt_length is not None:

        def truncate(row: dict[str, Any]) -> dict[str, Any]:
            prompt = row["prompt"]
            if isinstance(prompt, str):
                return {"prompt": _truncate_text_left(prompt, tokenizer, max_prompt_length)}
            return {"prompt": _truncate_messages(prompt, tokenizer, max_prompt_length)}

        dataset = dataset.map(truncate, desc="truncate prompts")

    if label_words and "label_words" not in dataset.column_names:
        words = [str(w) for w in label_words]
        dataset = dataset.map(lambda _: {"label_words": words}, desc="add label words")
    return dataset
