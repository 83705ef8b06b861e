"""Built-in GRPO rewards, one small function per task family, registered by name.

Every reward has TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]``:
TRL passes each extra dataset column (``reference``, ``label``, ``label_words``, ...) as a keyword
holding one value per completion. A reward returns ``None`` for a row it cannot judge (e.g. a
math reward on a classification row of a mixture); TRL turns that into NaN and leaves it out
of the means, so mixed-task datasets work without special cases.

Label words reach the classification reward either per row (a ``label_words`` column, which
``strata.training.rl.prepare_rl_dataset`` can add) or through the closure ``make_reward(...,
label_words=...)``; the column wins when both are present.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from strata.errors import StrataError
from strata.evaluation.answers import (
    extract_number,
    first_label_word,
    has_final_answer_line,
    numbers_match,
    token_f1,
)
from strata.training.code_programs import (
    code_candidates,
    defines_function,
    entry_point_name,
    unittest_program,
    with_code_prompt,
)

RewardFunc = Callable[..., list[float | None]]

MATH_REL_TOL = 1e-4
NO_LABEL_PENALTY = -0.5
CODE_TIMEOUT_S = 10.0
MC_LETTERS = "ABCDEFGHIJ"


# --------------------------------------------------------------------------------------------- helpers


def completion_text(completion: Any) -> str:
    """The generated text of one completion, whether a string or a conversational message list."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, Sequence):
        # Conversational: [{"role": "assistant", "content": ...}, ...]; join the assistant turns.
        parts = [
            _content_text(m.get("content"))
            for m in completion
            if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        ]
        return "\n".join(p for p in parts if p)
    return str(completion)


def _content_text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content blocks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return str(content)


def prompt_text(prompt: Any) -> str:
    """A prompt as text (conversational prompts: all message contents joined)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        return "\n".join(_content_text(m.get("content")) for m in prompt if isinstance(m, dict))
    return "" if prompt is None else str(prompt)


def _column(kwargs: dict[str, Any], name: str, n: int) -> list[Any]:
    """The per-completion values of dataset column ``name``, or ``[None] * n`` when it is absent."""
    values = kwargs.get(name)
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


# --------------------------------------------------------------------------------------------- math


def math_answer(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when the completion's final number matches the reference's (relative tolerance), else 0.0.

    The final number is the one after ``####``, else the last number; commas, ``$`` and units are
    ignored. Rows whose reference holds no number get None (not judged).
    """
    refs = _column(kwargs, "reference", len(completions))
    out: list[float | None] = []
    for completion, ref in zip(completions, refs):
        gold = extract_number(str(ref)) if ref is not None else None
        if gold is None:
            out.append(None)
            continue
        pred = extract_number(completion_text(completion))
        out.append(1.0 if numbers_match(pred, gold, rel_tol=MATH_REL_TOL) else 0.0)
    return out


def format_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when the completion states its answer on a ``#### N`` line, else 0.0 (shapes the output format)."""
    return [1.0 if has_final_answer_line(completion_text(c)) else 0.0 for c in completions]


format_reward.__name__ = "format"  # TRL logs rewards/<__name__>/mean; match the flag name
format_reward.__qualname__ = "format"


# --------------------------------------------------------------------------------------------- classification


def _gold_label(label: Any, reference: Any, words: list[str]) -> str | None:
    """The right label word of a row: the reference's label word, else ``words[label]``.

    The reference comes first so a mixture can pass the union of its label sets as ``words``.
    """
    if reference is not None and str(reference).strip():
        from_reference = first_label_word(str(reference), words)
        if from_reference is not None:
            return from_reference
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(words):
        return words[label]
    return None


def classification(
    prompts: list[Any],
    completions: list[Any],
    *,
    default_label_words: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 for the right label word first, 0.0 for another valid label, -0.5 for no valid label.

    The first generated word is lower-cased and stripped of punctuation before matching, so
    " Positive." counts as "positive". Rows without label words or a gold label get None.
    """
    n = len(completions)
    refs = _column(kwargs, "reference", n)
    labels = _column(kwargs, "label", n)
    row_words = _column(kwargs, "label_words", n)
    out: list[float | None] = []
    for completion, ref, label, words in zip(completions, refs, labels, row_words):
        words = list(words) if words else list(default_label_words or [])
        gold = _gold_label(label, ref, words) if words else None
        if gold is None:
            out.append(None)
            continue
        pred = first_label_word(completion_text(completion), words)
        if pred is None:
            out.append(NO_LABEL_PENALTY)
        else:
            out.append(1.0 if pred == gold else 0.0)
    return out


# --------------------------------------------------------------------------------------------- multiple choice

_MC_ANSWER = re.compile(r"(?i:answer)\s*(?:(?i:is)\s*)?[:\-]?\s*[\(\[]?([A-J])(?![A-Za-z])")
_MC_FIRST = re.compile(r"^\s*[\(\[\*]*([A-Ja-j])(?![A-Za-z])")


def extract_choice(text: str, letters: str = MC_LETTERS) -> str | None:
    """The option letter a text chooses: an "Answer: X"/"answer is (X)" statement, else a leading letter."""
    if not text:
        return None
    match = _MC_ANSWER.search(text) or _MC_FIRST.search(text)
    if match is None:
        return None
    letter = match.group(1).upper()
    return letter if letter in letters else None


def multiple_choice(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 for the right option letter, 0.0 for another letter, -0.5 when no letter is chosen.

    The gold letter comes from the ``reference`` column ("B", "(B)", "Answer: B"), else from an
    integer ``label`` (0 -> A) when there is no reference. Rows with neither get None.
    """
    n = len(completions)
    refs = _column(kwargs, "reference", n)
    labels = _column(kwargs, "label", n)
    out: list[float | None] = []
    for completion, ref, label in zip(completions, refs, labels):
        has_ref = ref is not None and str(ref).strip() != ""
        gold = extract_choice(str(ref)) if has_ref else None
        # An integer label counts only without a reference: a classification row's label is no letter.
        if not has_ref and isinstance(label, int) and 0 <= label < len(MC_LETTERS):
            gold = MC_LETTERS[label]
        if gold is None:
            out.append(None)
            continue
        pred = extract_choice(completion_text(completion))
        out.append(NO_LABEL_PENALTY if pred is None else float(pred == gold))
    return out


# --------------------------------------------------------------------------------------------- code

def run_code_sandboxed(source: str, timeout_s: float = CODE_TIMEOUT_S) -> bool:
    """Run ``source`` in the bubblewrap sandbox (strata.training.sandbox); True when it exits 0 in time."""
    from strata.training.sandbox import run_sandboxed

    return run_sandboxed(source, timeout_s)


def code(
    prompts: list[Any],
    completions: list[Any],
    *,
    code_execution: bool = False,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the completion parses (``ast``) and defines the required function, else 0.0.

    The function name comes from an ``entry_point`` column, else the reference's first ``def``,
    else the prompt's last ``def``, else ``task_func``. A ``code_prompt`` column (BigCodeBench: the
    imports and the signature) is put in front of the completion, so a body or a function without its
    imports is judged as the program it belongs to. Code is never executed unless ``code_execution``
    is on; then the definitions (plus a ``test`` column's code, if any, its unittest cases run) must
    also run to exit status 0 in the bubblewrap sandbox (no network, no host files) with a timeout.
    """
    n = len(completions)
    refs = _column(kwargs, "reference", n)
    entry_points = _column(kwargs, "entry_point", n)
    tests = _column(kwargs, "test", n)
    code_prompts = _column(kwargs, "code_prompt", n)
    out: list[float | None] = []
    for prompt, completion, ref, entry, test, code_prompt in zip(
        prompts, completions, refs, entry_points, tests, code_prompts
    ):
        ptext = prompt_text(prompt)
        name = entry_point_name(entry, ref, ptext)
        text = completion_text(completion)
        candidates = with_code_prompt(code_candidates(text, ptext), text, code_prompt, name)
        source = next((c for c in candidates if defines_function(c, name)), None)
        if source is None:
            out.append(0.0)
        elif not code_execution:
            out.append(1.0)
        else:
            program = source + ("\n\n" + unittest_program(test) if test else "")
            out.append(1.0 if run_code_sandboxed(program) else 0.0)
    return out


# --------------------------------------------------------------------------------------------- qa / instruction


def token_f1_reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float | None]:
    """SQuAD-style token F1 of the completion against the ``reference`` column (None without one)."""
    refs = _column(kwargs, "reference", len(completions))
    return [
        None if ref is None else token_f1(completion_text(c), str(ref)) for c, ref in zip(completions, refs)
    ]


token_f1_reward.__name__ = "token_f1"
token_f1_reward.__qualname__ = "token_f1"


# --------------------------------------------------------------------------------------------- registry

REWARD_FUNCS: dict[str, RewardFunc] = {
    "math_answer": math_answer,
    "format": format_reward,
    "classification": classification,
    "multiple_choice": multiple_choice,
    "code": code,
    "token_f1": token_f1_reward,
}

# Weight used when --reward_weights is not given: shaping rewards count less than correctness.
DEFAULT_WEIGHTS: dict[str, float] = {"format": 0.2}

FAMILY_REWARDS: dict[str, list[str]] = {
    "math": ["math_answer", "format"],
    "classification": ["classification"],
    "multiple_choice": ["multiple_choice"],
    "code": ["code"],
    "qa": ["token_f1"],
    "instruction": ["token_f1"],
}


def default_rewards_for_family(family: str) -> list[str]:
    """The reward names used for a task family when --reward_funcs is not given ([] when none fits)."""
    return list(FAMILY_REWARDS.get((family or "").lower(), []))


def make_reward(
    name: str, *, label_words: Sequence[str] | None = None, code_execution: bool = False
) -> RewardFunc:
    """The reward registered as ``name``, with dataset-level settings bound.

    Returns a ``functools.partial`` when something is bound, which TRL names after the wrapped
    function, so metrics stay ``rewards/<name>/mean``.
    """
    if name not in REWARD_FUNCS:
        raise StrataError(f"unknown reward {name!r}; choose from {', '.join(REWARD_FUNCS)}")
    func = REWARD_FUNCS[name]
    if name == "classification":
        if not label_words:
            raise StrataError(
                "the classification reward needs label words; use a classification dataset or pass --label_names"
            )
        return functools.partial(func, default_label_words=list(label_words))
    if name == "code" and code_execution:
        from strata.training.sandbox import require_sandbox

        require_sandbox()  # no sandbox, no execution: never a weaker fallback
        return functools.partial(func, code_execution=True)
    return func


def _split_names(names: Sequence[str]) -> list[str]:
    """Accept ["a,b"] as well as ["a", "b"]."""
    return [part.strip() for item in names for part in str(item).split(",") if part.strip()]


def resolve_rewards(
    names: list[str] | None,
    weights: list[float] | None,
    family: str,
    label_words: Sequence[str] | None,
    *,
    code_execution: bool = False,
    has_reward_model: bool = False,
) -> tuple[list[RewardFunc], list[float]]:
    """Turn --reward_funcs/--reward_weights into reward callables and one weight each.

    Without names, the family's defaults are used (or none, when a --reward_model is given).
    Weights follow the functions in order; with a reward model, one more weight for the model
    comes last (default 1.0). Missing weights default to 1.0 (0.2 for ``format``).
    """
    if names:
        chosen = _split_names(names)
        unknown = [n for n in chosen if n not in REWARD_FUNCS]
        if unknown:
            raise StrataError(
                f"unknown reward(s) {', '.join(unknown)}; --reward_funcs takes {', '.join(REWARD_FUNCS)}"
            )
    elif has_reward_model:
        chosen = []
    else:
        chosen = default_rewards_for_family(family)
        if not chosen:
            raise StrataError(
                f"no built-in reward applies to task family {family!r}; pass --reward_funcs "
                f"({', '.join(REWARD_FUNCS)}) or --reward_model PATH"
            )
    if len(set(chosen)) != len(chosen):
        raise StrataError(f"--reward_funcs lists a reward twice: {', '.join(chosen)}")
    funcs = [make_reward(n, label_words=label_words, code_execution=code_execution) for n in chosen]
    expected = len(funcs) + (1 if has_reward_model else 0)
    if weights is None:
        resolved = [DEFAULT_WEIGHTS.get(n, 1.0) for n in chosen] + ([1.0] if has_reward_model else [])
    else:
        resolved = [float(w) for w in weights]
        if len(resolved) != expected:
            what = ", ".join(chosen + (["reward model"] if has_reward_model else []))
            raise StrataError(
                f"--reward_weights has {len(resolved)} value(s) but there are {expected} rewards ({what}); "
                "pass one weight per reward, in the same order"
            )
    return funcs, resolved
