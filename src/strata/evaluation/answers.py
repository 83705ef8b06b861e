"""Answer extraction shared by evaluation metrics and RL rewards.

Evaluation and GRPO rewards must agree on what counts as "the model's answer", otherwise a
reward can be maximised without moving the reported metric. Everything here is pure string
processing: no model, no tokenizer, cheap enough to call per completion.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

__all__ = [
    "extract_number",
    "numbers_match",
    "first_label_word",
    "has_final_answer_line",
    "normalize_answer",
    "token_f1",
]

# A number as people (and GSM8K) write it: optional sign and currency, thousands separators,
# decimals, an optional "/denominator". A "-" counts as a sign only when it does not follow a
# word or a closing bracket, so "3-5" reads as 3 and 5, not 3 and -5.
_NUMBER = re.compile(
    r"(?P<sign>(?<![\w)\]])-)?"
    r"(?:\$\s?(?P<sign2>-)?)?"
    r"(?P<num>(?<![\d.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\d.])\.\d+)"
    r"(?:\s?/\s?(?P<den>\d+(?:\.\d+)?)(?![\d/]))?"
)
_FINAL_MARK = "####"
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_FINAL_LINE = re.compile(r"(?m)^[ \t]*####[ \t]*-?[ \t]*\$?[ \t]*-?[ \t]*\.?\d")
# Label words: ASCII punctuation plus curly quotes and dashes ("“Positive”" -> "positive").
_PUNCT_TABLE = str.maketrans("", "", string.punctuation + "\u201c\u201d\u2018\u2019\u2014\u2013")
# SQuAD answers: exactly the official script's set (string.punctuation), so EM/F1 are comparable with it.
_SQUAD_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def _numbers_in(text: str) -> list[float]:
    """All numbers in ``text`` in order, as floats (fractions divided out)."""
    values: list[float] = []
    for match in _NUMBER.finditer(text):
        try:
            value = float(match.group("num").replace(",", ""))
        except ValueError:  # pragma: no cover - the regex only admits valid literals
            continue
        den = match.group("den")
        if den is not None:
            den_value = float(den)
            if den_value != 0:
                value /= den_value
        if match.group("sign") or match.group("sign2"):
            value = -value
        values.append(value)
    return values


def extract_number(text: str) -> float | None:
    """The final numeric answer in ``text``, or None when it has no number.

    Priority: the number after the last ``####`` (GSM8K's convention), then the last
    ``\\boxed{...}``, then the last number anywhere. Commas, ``$``, ``%``, trailing units
    ("5 dollars", "12kg"), negatives, decimals and simple fractions ("3/4") are handled.
    """
    if not text:
        return None
    if _FINAL_MARK in text:
        tail = text.rsplit(_FINAL_MARK, 1)[1]
        found = _numbers_in(tail)
        if found:
            return found[0]
    boxed = _BOXED.findall(text)
    if boxed:
        found = _numbers_in(boxed[-1])
        if found:
            return found[-1]
    found = _numbers_in(text)
    return found[-1] if found else None


def numbers_match(pred: float | None, gold: float | None, rel_tol: float = 1e-4) -> bool:
    """Whether two extracted answers agree within ``rel_tol`` (with a tiny absolute floor so 0 == 0.0).

    Two whole numbers must be equal: the tolerance absorbs decimal rounding ("0.33" vs 1/3 is
    still a miss at the default, "2.50000001" vs 2.5 a hit), never an off-by-one on a large count.
    """
    if pred is None or gold is None:
        return False
    if math.isnan(pred) or math.isnan(gold) or math.isinf(pred) or math.isinf(gold):
        return False
    if float(pred).is_integer() and float(gold).is_integer():
        return pred == gold
    return math.isclose(pred, gold, rel_tol=rel_tol, abs_tol=1e-9)


def _words(text: str) -> list[str]:
    """Lower-cased whitespace tokens with punctuation stripped; empty tokens dropped."""
    out = []
    for token in text.lower().split():
        token = token.translate(_PUNCT_TABLE)
        if token:
            out.append(token)
    return out


def first_label_word(text: str, label_words: list[str]) -> str | None:
    """The label word the generation starts with, or None.

    The first generated word is lower-cased and stripped of punctuation ("**Positive.**" ->
    "positive") and compared with each normalised label word; multi-word labels match on the
    leading words, the longest match wins. Returns the label word as given in ``label_words``.
    """
    words = _words(text or "")
    if not words:
        return None
    best: str | None = None
    best_len = 0
    for label in label_words:
        label_tokens = _words(str(label))
        n = len(label_tokens)
        if n and words[:n] == label_tokens and n > best_len:
            best, best_len = label, n
    return best


def has_final_answer_line(text: str) -> bool:
    """Whether ``text`` contains a ``#### <number>`` line, the GSM8K final-answer format."""
    return bool(text) and _FINAL_LINE.search(text) is not None


def normalize_answer(text: str) -> str:
    """The official SQuAD v1.1 normalisation (lower case, punctuation removed, then the articles
    a/an/the, whitespace collapsed), in its order, so exact match and token F1 are SQuAD's numbers.

    The one normaliser of answers: ``metrics.exact_match``, ``token_f1`` and the RL rewards use it.
    """
    text = (text or "").lower().translate(_SQUAD_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between a prediction and a reference (1.0 when both are empty)."""
    pred_tokens = normalize_answer(prediction).split()
    ref_tokens = normalize_answer(reference).split()
    if not pred_tokens or not ref_tokens:
        return float(pred_tokens == ref_tokens)
    common = Counter(pred_tokens) & Counter(ref_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)
