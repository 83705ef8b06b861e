"""Harmonize raw rows to one schema and format them as prompt/completion (sft, rl) or text (pretrain).

Every sft/rl example has exactly ``prompt``, ``completion``, ``label``, ``reference`` and ``domain``, whatever
the source dataset, so tokenization, mixing and evaluation never look at dataset-specific columns.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from strata.data import prompts, sources
from strata.data.local_files import spec_for_local
from strata.data.registry import MODES, REGISTRY, DatasetSpec, get_spec, unsupported_refusal
from strata.errors import StrataError

SFT_COLUMNS = ("prompt", "completion", "label", "reference", "domain")
# Fixed features so formatted datasets from different sources can be concatenated and mixed.
SFT_FEATURES = datasets.Features(
    {name: datasets.Value("int64" if name == "label" else "string") for name in SFT_COLUMNS}
)
TEXT_FEATURES = datasets.Features({"text": datasets.Value("string")})
_GSM8K_FINAL = re.compile(r"####\s*(.+?)\s*$", re.S)


@dataclass
class FormattedDataset:
    """A formatted split plus what downstream code needs to know about it."""

    dataset: datasets.Dataset
    spec: DatasetSpec
    config: str | None
    split: str
    family: str
    label_words: list[str] | None
    tag: str
    split_note: str = ""  # how the rows were chosen when it is more than the split expression (carves)


def label_id(spec: DatasetSpec, raw: Any) -> int:
    """The label as an index into the spec's label words; -1 means unlabelled (hidden test labels)."""
    words = spec.label_words or ()
    if raw is None:
        return -1
    if spec.score_thresholds is not None:
        low, high = spec.score_thresholds
        score = float(raw)
        return 0 if score < low else (2 if score > high else 1)
    if isinstance(raw, str):
        if raw in words:
            return words.index(raw)
        if raw.strip().lstrip("-").isdigit():
            raw = int(raw)
        else:
            raise StrataError(
                f"{spec.id}: label '{raw}' is not one of the label words {list(words)}; pass --label_names"
            )
    label = int(raw)
    if label != -1 and not 0 <= label < len(words):
        raise StrataError(
            f"{spec.id}: label {label} is out of range for {len(words)} label words {list(words)}; "
            "fix --label_names (one name per label id, in id order)"
        )
    return label


def _text(example: dict, column: str | None) -> str:
    """A column as prompt text; a list (FinanceMath's markdown tables) becomes its items, one block each."""
    value = example.get(column) if column else None
    if isinstance(value, (list, tuple)):
        return "\n\n".join(str(item).strip() for item in value if item is not None and str(item).strip())
    return "" if value is None else str(value).strip()


def _domain(spec: DatasetSpec, example: dict) -> str:
    if spec.domain_column and example.get(spec.domain_column):
        return f"{spec.domain}:{example[spec.domain_column]}"
    return spec.domain


def _reference_answer(spec: DatasetSpec, example: dict) -> tuple[str, str]:
    """(completion, reference) for generative families: the completion is what the model learns to write,
    the reference is the gold answer evaluation compares against (GSM8K: the number after ``####``)."""
    answer = example.get(spec.answer_column) if spec.answer_column else None
    if spec.options_column and isinstance(answer, int) and example.get(spec.options_column):
        answer = example[spec.options_column][answer]
    if isinstance(answer, (list, dict)):
        answer = json.dumps(answer, ensure_ascii=False)
    full = "" if answer is None else str(answer).strip()
    final = _GSM8K_FINAL.search(full)
    return full, (final.group(1).strip() if final else full)


def _multiple_choice(spec: DatasetSpec, example: dict) -> tuple[str, int]:
    options = list(example.get(spec.options_column) or [])
    raw = example.get(spec.answer_column)
    label = prompts.LETTERS.index(raw.strip()) if isinstance(raw, str) else int(raw)
    if not 0 <= label < len(options):
        raise StrataError(f"{spec.id}: answer {raw!r} is not one of the {len(options)} options")
    subject = _text(example, spec.subject_column).replace("_", " ")
    prompt = prompts.render(
        spec.prompt_template,
        question=_text(example, spec.question_column),
        options=prompts.letter_options(options),
        subject=f" about {subject}" if subject else "",
    )
    return prompt, label


def format_example(spec: DatasetSpec, config: str | None, example: dict, mode: str) -> dict:
    """One raw row → the common schema (sft/rl) or ``{"text": ...}`` (pretrain)."""
    spec = spec.for_config(config)
    if spec.family == "pretrain":
        if mode != "pretrain":
            raise StrataError(f"dataset '{spec.id}' is raw text: it supports only --mode pretrain")
        return {"text": _text(example, spec.text_column)}

    label, reference = -1, ""
    if spec.family == "classification":
        label = label_id(spec, example.get(spec.label_column))
        words = list(spec.label_words or ())
        prompt = prompts.render(
            spec.prompt_template,
            text=_text(example, spec.text_column),
            text2=_text(example, spec.text_pair_column),
            choices=prompts.quote_choices(words),
        )
        reference = words[label] if label >= 0 else ""
        completion = prompts.completion_for(reference) if reference else ""
    elif spec.family == "multiple_choice":
        prompt, label = _multiple_choice(spec, example)
        reference = prompts.LETTERS[label]
        completion = prompts.completion_for(reference)
    else:
        question = _text(example, spec.question_column)
        context = _text(example, spec.context_column)
        template = spec.prompt_template
        if spec.family == "instruction" and not context:
            template = "instruction_no_input"
        elif context and spec.family != "instruction" and "{input}" not in prompts.template_text(template):
            question = f"{question}\n\n{context}"
        prompt = prompts.render(template, question=question, instruction=question, input=context)
        completion, reference = _reference_answer(spec, example)
        if spec.completion_column:  # FinanceMath: the program, then its result as GSM8K writes a final answer
            solution = _text(example, spec.completion_column)
            completion = f"{solution}\n#### {reference}" if reference else solution
        if spec.family == "code" and "code_prompt" in spec.reward_columns:
            # BigCodeBench's canonical_solution is only the body: imports and signature are in code_prompt.
            body = str(example.get(spec.answer_column) or "") if spec.answer_column else ""
            completion = reference = (str(example.get("code_prompt") or "") + body).rstrip()
        if spec.family != "code" and not prompt.endswith("\n"):
            completion = " " + completion

    if mode == "pretrain":
        return {"text": prompt + completion}
    row = {
        "prompt": prompt,
        "completion": completion,
        "label": label,
        "reference": reference,
        "domain": _domain(spec, example),
    }
    for column in spec.reward_columns:  # e.g. BigCodeBench's code_prompt, entry_point, test for the code reward
        value = example.get(column)
        row[column] = "" if value is None else str(value)
    return row


def _sft_features(spec: DatasetSpec) -> datasets.Features:
    """The common schema, plus the string columns a reward needs (dropped when sources are mixed)."""
    if not spec.reward_columns:
        return SFT_FEATURES
    return datasets.Features({**SFT_FEATURES, **{c: datasets.Value("string") for c in spec.reward_columns}})


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split a very long text at paragraph breaks into pieces of at most about ``max_chars``.

    Hand-written because tiny_shakespeare stores each split as one row; packing after tokenization then
    still sees many examples, and max_examples means something.
    """
    pieces, current = [], ""
    for paragraph in text.split("\n\n"):
        candidate = f"{current}\n\n{paragraph}" if current else paragraph
        if len(candidate) <= max_chars or not current:
            current = candidate
        else:
            pieces.append(current)
            current = paragraph
        while len(current) > max_chars:  # a single paragraph longer than the limit
            pieces.append(current[:max_chars])
            current = current[max_chars:]
    if current.strip():
        pieces.append(current)
    return pieces


def _resolve_spec(
    dataset_id: str,
    text_column: str | None,
    label_column: str | None,
    label_names: list[str] | str | None,
    prompt_template: str | None,
    task: str = "auto",
    mode: str = "sft",
) -> DatasetSpec:
    local = Path(dataset_id).expanduser()
    # A local path wins, except a folder that merely shares its name with a registered hub id ("nyu-mll/glue").
    if local.is_file() or (local.is_dir() and sources.canonical_dataset_id(dataset_id) not in REGISTRY):
        return spec_for_local(dataset_id, text_column, label_column, label_names, prompt_template, task=task,
                              mode=mode)
    spec = get_spec(dataset_id)
    overrides: dict[str, Any] = {}
    if text_column:
        overrides["text_column"] = text_column
    if label_column:
        overrides["label_column"] = label_column
    if label_names:
        names = tuple(n.strip() for n in (label_names.split(",") if isinstance(label_names, str) else label_names))
        if spec.family != "classification" or spec.score_thresholds is not None:
            raise StrataError(f"--label_names renames classification labels; '{spec.id}' is {spec.family}"
                              + (" with labels binned from a score" if spec.score_thresholds else "")
                              + ": drop --label_names")
        overrides["label_words"] = names
    if prompt_template:
        overrides["prompt_template"] = prompts.check_template(prompt_template)
    if overrides:
        # User overrides apply to every config, so they must win over the per-config values.
        merged = {cfg: {**dict(values), **overrides} for cfg, values in spec.config_overrides.items()}
        spec = dataclasses.replace(spec, **overrides, config_overrides=merged)
    return spec


def _carve(
    data: datasets.Dataset, spec: DatasetSpec, split: str, purpose: str
) -> tuple[datasets.Dataset, str]:
    carve = spec.eval_carve
    if carve is None or split != carve.source_split:
        return data, ""
    # A seeded permutation then a contiguous cut: train and eval can never share a row.
    shuffled = data.shuffle(seed=carve.seed)
    cut = len(shuffled) - max(1, round(len(shuffled) * carve.fraction))
    rows = range(cut) if purpose == "train" else range(cut, len(shuffled))
    return shuffled.select(rows), carve.describe()


def checked_spec(
    dataset_id: str,
    config: str | None,
    mode: str,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: list[str] | str | None = None,
    prompt_template: str | None = None,
    task: str = "auto",
) -> tuple[DatasetSpec, str | None]:
    """The spec (with the user's overrides) and config of a request, refused in one line before any load.

    Shared by ``load_formatted`` and the streamed path, so both refuse the same mode, task and label flags.
    """
    if mode not in MODES:
        raise StrataError(f"unknown mode '{mode}'; use one of {', '.join(MODES)}")
    base = _resolve_spec(dataset_id, text_column, label_column, label_names, prompt_template, task, mode)
    config = config or base.default_config
    spec = base.for_config(config)
    refusal = unsupported_refusal(spec)
    if refusal:  # before anything is loaded
        raise StrataError(refusal)
    if label_names and spec.local_path is None:
        original = get_spec(dataset_id).for_config(config).label_words or ()
        if original and len(spec.label_words or ()) != len(original):
            raise StrataError(f"--label_names gives {len(spec.label_words or ())} names but '{spec.id}' "
                              f"({config}) has {len(original)} labels ({', '.join(original)}); give exactly "
                              f"{len(original)}, in label-id order")
    if mode not in spec.modes:
        raise StrataError(
            f"dataset '{spec.id}' does not support --mode {mode}; it supports {', '.join(spec.modes)}"
        )
    if task not in ("auto", spec.family):
        raise StrataError(
            f"dataset '{spec.id}' is a {spec.family} dataset, not {task}; use --task auto or --task {spec.family}"
        )
    return spec, config


def labelled_rows(raw: datasets.Dataset, spec: DatasetSpec, config: str | None, split: str) -> datasets.Dataset:
    """The raw rows checked against the spec's columns; for classification only the labelled ones.

    A schema that does not match the files fails here in one line, not as empty completions.
    """
    if len(raw) == 0:
        raise StrataError(
            f"split '{split}' of '{spec.id}' is empty; pick another with --train_split/--eval_split"
        )
    if spec.family != "classification":
        columns = spec.expected_columns if spec.family != "pretrain" else (spec.text_column,)
        missing = [c for c in columns if c and c not in raw.column_names]
        if missing:
            raise StrataError(
                f"'{spec.id}'" + (f" ({config})" if config else "") + f" has no column(s) {', '.join(missing)}; "
                f"its columns are {', '.join(raw.column_names)} (expected {', '.join(columns)})"
            )
        return raw
    wanted = (spec.text_column, spec.text_pair_column, spec.label_column)
    missing = [c for c in wanted if c and c not in raw.column_names]
    if missing:
        raise StrataError(
            f"'{spec.id}' has no column(s) {', '.join(missing)}; its columns are {', '.join(raw.column_names)}"
        )
    labels = [label_id(spec, value) for value in raw[spec.label_column]]  # also range-checks every label
    keep = [i for i, label in enumerate(labels) if label >= 0]
    if not keep:
        raise StrataError(f"split {split} of '{spec.id}' has no labels; use --eval_split validation")
    return raw.select(keep) if len(keep) < len(raw) else raw


def _format_rows(raw: datasets.Dataset, spec: DatasetSpec, config: str | None, mode: str,
                 max_examples: int | None) -> datasets.Dataset:
    """Map the raw rows to the common schema (or text), then cut long pretraining texts into chunks."""
    formatted = raw.map(
        lambda example: format_example(spec, config, example, mode),
        remove_columns=raw.column_names,
        features=TEXT_FEATURES if mode == "pretrain" or spec.family == "pretrain" else _sft_features(spec),
        desc=f"formatting {spec.tag}",
    )
    if mode == "pretrain" and spec.chunk_chars:
        chunk_chars = spec.chunk_chars
        formatted = formatted.map(
            lambda batch: {"text": [piece for text in batch["text"] for piece in chunk_text(text, chunk_chars)]},
            batched=True,
        )
        if max_examples is not None and max_examples < len(formatted):
            formatted = formatted.select(range(max_examples))
    return formatted


def load_formatted(
    dataset_id: str,
    config: str | None = None,
    split: str | None = None,
    mode: str = "sft",
    mirror: str | Path | None = None,
    *,
    purpose: str = "train",
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: list[str] | str | None = None,
    prompt_template: str | None = None,
    task: str = "auto",
    max_examples: int | None = None,
    seed: int = 0,
) -> FormattedDataset:
    """Resolve, load, harmonize and format one split of a dataset (local file, mirror, built-in or hub).

    ``split`` None takes the spec's default for ``purpose``. Single-split datasets are carved with a fixed
    seed (see ``EvalCarve``). ``max_examples`` takes a ``seed``-shuffled subset, so a small eval slice of a
    label-sorted split (rotten_tomatoes puts positives first) still has every label.
    """
    spec, config = checked_spec(dataset_id, config, mode, text_column=text_column, label_column=label_column,
                                label_names=label_names, prompt_template=prompt_template, task=task)
    split = split or spec.split_for(purpose)
    raw = labelled_rows(sources.load_split(spec.id, config, split, mirror), spec, config, split)
    raw, note = _carve(raw, spec, split, purpose)
    if max_examples is not None and max_examples < len(raw):
        raw = raw.shuffle(seed=seed).select(range(max_examples))
    formatted = _format_rows(raw, spec, config, mode, max_examples)
    if len(formatted) == 0:
        raise StrataError(f"split '{split}' of '{spec.id}' is empty after formatting")
    words = spec.label_words if spec.family in ("classification", "multiple_choice") else None
    return FormattedDataset(dataset=formatted, spec=spec, config=config, split=split, family=spec.family,
                            label_words=list(words) if words else None, tag=spec.tag, split_note=note)
