"""One entry point for evaluation, used by the trainer (every ``eval_steps``) and ``strata eval``.

The model is run once per example; metrics (overall and per domain) are then computed from the
per-example records, so a per-domain breakdown costs no extra forwards. Results are plain
JSON: flat scalar keys for logging (``accuracy``, ``macro_f1``, ``exact_match``, ``token_f1``,
``perplexity`` ...) plus nested details.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from strata.errors import StrataError
from strata.evaluation.answers import token_f1
from strata.evaluation.generation import generate_texts, parse_label, score_math_answer
from strata.evaluation.metrics import classification_metrics, normalize_answer
from strata.evaluation.model_io import is_encoder_decoder, pad_id
from strata.evaluation.perplexity import sequence_nll, summarize_nll, text_windows
from strata.evaluation.scoring import score_choices

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "FAMILIES", "METHODS", "evaluate_dataset"]

FAMILIES = ("classification", "multiple_choice", "math", "qa", "instruction", "code", "pretrain")
METHODS = ("loglik", "generate")
_LABEL_SLACK_TOKENS = 8  # room for markup or whitespace before the label word when generating labels
_N_SAMPLES = 3  # generations kept in the result so a log shows what the model actually says
DEFAULT_MAX_NEW_TOKENS = 32  # what training's evaluations generate; `strata eval RUN` uses it to match them


def evaluate_dataset(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    family: str,
    label_words: list[str] | None,
    *,
    method: str = "loglik",
    batch_size: int = 8,
    max_length: int = 512,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    max_examples: int | None = None,
) -> dict:
    """Evaluate ``model`` on formatted examples (``prompt``, ``completion``, ``label``, ``reference``, ``domain``).

    - classification / multiple_choice: ``method="loglik"`` picks the label word with the highest
      summed log-probability (``accuracy_norm`` uses per-character normalisation);
      ``"generate"`` parses the first generated word; unparseable counts as wrong
      (``parse_failure_rate``); generation is capped at the longest label's tokens + 8.
      Needs ``label_words``.
    - math: greedy generation, numeric answer extraction, ``exact_match``.
    - qa / instruction / code: greedy generation; ``token_f1`` and ``exact_match`` against
      ``reference`` (else ``completion``). Code is not executed.
    - pretrain: perplexity of ``text`` (else ``prompt + completion``).
    ``method`` matters only for classification / multiple_choice. ``max_examples`` keeps the
    first rows. With several ``domain`` values, ``per_domain`` repeats the metrics per domain.
    """
    if family not in FAMILIES:
        raise StrataError(f"unknown evaluation family {family!r}; use one of {', '.join(FAMILIES)}")
    if method not in METHODS:
        raise StrataError(f"unknown evaluation method {method!r}; use one of {', '.join(METHODS)}")
    if max_examples is not None and max_examples < len(dataset):
        dataset = dataset.select(range(max(0, max_examples)))
    if len(dataset) == 0:
        raise StrataError("the evaluation dataset is empty; check the split and max_examples")
    columns = set(dataset.column_names)

    if family in ("classification", "multiple_choice"):
        records, aggregate, extra = _run_classification(
            model, tokenizer, dataset, columns, label_words, method, batch_size, max_length, max_new_tokens
        )
    elif family == "math":
        records, aggregate, extra = _run_math(
            model, tokenizer, dataset, columns, batch_size, max_length, max_new_tokens
        )
    elif family == "pretrain":
        records, aggregate, extra = _run_pretrain(model, tokenizer, dataset, columns, batch_size, max_length)
    else:
        records, aggregate, extra = _run_text(
            model, tokenizer, dataset, columns, batch_size, max_length, max_new_tokens
        )

    all_rows = list(range(len(records)))
    result: dict[str, Any] = {"family": family, "method": _method_used(family, method), **aggregate(all_rows)}
    result.update(extra)
    domains = [str(d) for d in dataset["domain"]] if "domain" in columns else []
    if len(set(domains)) > 1:
        result["per_domain"] = _per_domain(domains, records, aggregate)
    return result


def _per_domain(domains: list[str], records: list[dict], aggregate: Callable[[list[int]], dict]) -> dict:
    """The metrics again over each domain's scored records (``domains`` is per dataset row)."""
    out = {}
    for domain in sorted(set(domains)):
        rows = [i for i, record in enumerate(records) if domains[record["row"]] == domain]
        if rows:
            out[domain] = aggregate(rows)
    return out


def _method_used(family: str, method: str) -> str:
    if family in ("classification", "multiple_choice"):
        return method
    return "perplexity" if family == "pretrain" else "generate"


def _column(dataset: Any, columns: set[str], name: str, default: str = "") -> list[str]:
    return (
        [str(v) if v is not None else default for v in dataset[name]]
        if name in columns
        else [default] * len(dataset)
    )


def _samples(
    prompts: Sequence[str], generations: Sequence[str], targets: Sequence[str]
) -> list[dict[str, str]]:
    return [
        {"prompt": p[-300:], "generation": g[:300], "target": t[:300]}
        for p, g, t in list(zip(prompts, generations, targets))[:_N_SAMPLES]
    ]


def _gold_labels(dataset: Any, columns: set[str], label_words: list[str]) -> tuple[list[int], list[int]]:
    """The rows with a usable gold label and that label: the ``label`` column, else the label word the
    completion names; a one-line refusal when no row has one."""
    completions = _column(dataset, columns, "completion")
    labels = [int(v) for v in dataset["label"]] if "label" in columns else [-1] * len(dataset)
    keep: list[int] = []
    gold: list[int] = []
    for i, (label, completion) in enumerate(zip(labels, completions)):
        if not 0 <= label < len(label_words):  # fall back to the completion text naming the label
            label = parse_label(completion, label_words) if completion.strip() else None
            label = -1 if label is None else label
        if label >= 0:
            keep.append(i)
            gold.append(label)
    if not keep:
        raise StrataError(
            "no example has a gold label among label_words; check the 'label' column and label_words"
        )
    return keep, gold


def _generate_labels(model: Any, tokenizer: Any, prompts: list[str], label_words: list[str], batch_size: int,
                     max_length: int, max_new_tokens: int) -> list[str]:
    """Greedy generations just long enough to hold a label word (only the first word(s) are parsed)."""
    longest = max(
        len(ids) for ids in tokenizer([" " + w for w in label_words], add_special_tokens=False)["input_ids"]
    )
    return generate_texts(
        model,
        tokenizer,
        prompts,
        max_new_tokens=min(max_new_tokens, longest + _LABEL_SLACK_TOKENS),
        batch_size=batch_size,
        max_length=max_length,
    )


def _run_classification(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    columns: set[str],
    label_words: list[str] | None,
    method: str,
    batch_size: int,
    max_length: int,
    max_new_tokens: int,
) -> tuple[list[dict], Callable[[list[int]], dict], dict]:
    """Predict a label per example; rows without a usable gold label are skipped and counted."""
    if not label_words:
        raise StrataError(
            "classification / multiple_choice evaluation needs label_words; set them in the dataset config"
        )
    label_words = [str(w) for w in label_words]
    prompts = _column(dataset, columns, "prompt")
    keep, gold = _gold_labels(dataset, columns, label_words)
    kept_prompts = [prompts[i] for i in keep]
    extra: dict[str, Any] = {"n_unlabelled": len(dataset) - len(keep)}

    if method == "loglik":
        scores = score_choices(
            model,
            tokenizer,
            kept_prompts,
            [" " + w for w in label_words],
            batch_size=batch_size,
            max_length=max_length,
        )
        preds = scores.loglik.argmax(-1).tolist()
        preds_norm = scores.per_char.argmax(-1).tolist()
        records = [
            {"row": i, "gold": g, "pred": p, "pred_norm": q}
            for i, g, p, q in zip(keep, gold, preds, preds_norm)
        ]
    else:
        generations = _generate_labels(model, tokenizer, kept_prompts, label_words, batch_size, max_length,
                                       max_new_tokens)
        parsed = [parse_label(text, label_words) for text in generations]
        records = [
            {"row": i, "gold": g, "pred": -1 if p is None else p} for i, g, p in zip(keep, gold, parsed)
        ]
        extra["samples"] = _samples(kept_prompts, generations, [label_words[g] for g in gold])

    def aggregate(rows: list[int]) -> dict:
        y_true = [records[r]["gold"] for r in rows]
        y_pred = [records[r]["pred"] for r in rows]
        out = classification_metrics(y_true, y_pred, label_words)
        if method == "loglik":
            out["accuracy_norm"] = float(
                np.mean([records[r]["pred_norm"] == records[r]["gold"] for r in rows])
            )
        else:
            out["parse_failure_rate"] = out["n_invalid"] / out["n"] if out["n"] else 0.0
        return out

    return records, aggregate, extra


def _run_math(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    columns: set[str],
    batch_size: int,
    max_length: int,
    max_new_tokens: int,
) -> tuple[list[dict], Callable[[list[int]], dict], dict]:
    """Greedy generation graded by numeric exact match; references without a number are skipped."""
    prompts = _column(dataset, columns, "prompt")
    references = _column(dataset, columns, "reference")
    completions = _column(dataset, columns, "completion")
    targets = [ref if ref.strip() else comp for ref, comp in zip(references, completions)]
    generations = generate_texts(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=max_length
    )
    records = [
        {"row": i, **score_math_answer(gen, tgt)} for i, (gen, tgt) in enumerate(zip(generations, targets))
    ]

    def aggregate(rows: list[int]) -> dict:
        graded = [records[r] for r in rows if records[r]["gold"] is not None]
        n = len(graded)
        return {
            "exact_match": float(np.mean([rec["correct"] for rec in graded])) if n else 0.0,
            "extraction_failure_rate": float(np.mean([rec["pred"] is None for rec in graded])) if n else 0.0,
            "final_answer_format_rate": float(np.mean([rec["has_final_line"] for rec in graded]))
            if n
            else 0.0,
            "n": n,
            "n_no_gold_number": len(rows) - n,
        }

    return records, aggregate, {"samples": _samples(prompts, generations, targets)}


def _run_text(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    columns: set[str],
    batch_size: int,
    max_length: int,
    max_new_tokens: int,
) -> tuple[list[dict], Callable[[list[int]], dict], dict]:
    """Greedy generation graded by SQuAD token F1 and normalised exact match."""
    prompts = _column(dataset, columns, "prompt")
    references = _column(dataset, columns, "reference")
    completions = _column(dataset, columns, "completion")
    targets = [(ref if ref.strip() else comp).strip() for ref, comp in zip(references, completions)]
    generations = generate_texts(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=max_length
    )
    records = [
        {"row": i, "f1": token_f1(gen, tgt), "em": normalize_answer(gen) == normalize_answer(tgt)}
        for i, (gen, tgt) in enumerate(zip(generations, targets))
    ]

    def aggregate(rows: list[int]) -> dict:
        return {
            "token_f1": float(np.mean([records[r]["f1"] for r in rows])) if rows else 0.0,
            "exact_match": float(np.mean([records[r]["em"] for r in rows])) if rows else 0.0,
            "n": len(rows),
        }

    return records, aggregate, {"samples": _samples(prompts, generations, targets)}


def _run_pretrain(
    model: Any, tokenizer: Any, dataset: Any, columns: set[str], batch_size: int, max_length: int
) -> tuple[list[dict], Callable[[list[int]], dict], dict]:
    """Token-weighted perplexity per text, summed per example so domains can be split afterwards."""
    if is_encoder_decoder(model):
        raise StrataError("pretrain (perplexity) evaluation needs a decoder-only model")
    if "text" in columns:
        texts = _column(dataset, columns, "text")
    else:
        prompts = _column(dataset, columns, "prompt")
        completions = _column(dataset, columns, "completion")
        texts = [p + c for p, c in zip(prompts, completions)]
    windows, owners = text_windows(tokenizer, texts, max_length)
    sums, counts = sequence_nll(model, windows, batch_size=batch_size, pad_token_id=pad_id(tokenizer, model))
    if sum(counts) == 0:
        raise StrataError("no text has two or more tokens to score; check the 'text' column")
    records = [{"row": i, "nll": 0.0, "tokens": 0} for i in range(len(texts))]
    for owner, total, count in zip(owners, sums, counts):
        records[owner]["nll"] += total
        records[owner]["tokens"] += count

    def aggregate(rows: list[int]) -> dict:
        nll = [records[r]["nll"] for r in rows]
        tokens = [records[r]["tokens"] for r in rows]
        if sum(tokens) == 0:
            return {"mean_nll": 0.0, "perplexity": 0.0, "n_tokens": 0, "n": len(rows)}
        return {**summarize_nll(nll, tokens), "n": len(rows)}

    return records, aggregate, {}
