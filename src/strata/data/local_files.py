"""A dataset spec for a local jsonl/csv/parquet file or folder, decided by ``--task`` and the file's columns.

Registered datasets carry their family in the registry; a local file says it by its columns and the
flags: ``--task classification`` (the default for ``auto``) needs a text and a label column, ``--task
qa`` a question and an answer column, ``--task pretrain`` (the default for ``auto`` in ``--mode
pretrain`` when there is no label column) only a text column.
"""

from __future__ import annotations

from pathlib import Path

from strata.data import prompts, sources
from strata.data.spec import DatasetSpec, EvalCarve
from strata.errors import StrataError

LOCAL_TASKS = ("classification", "qa", "pretrain")


def spec_for_local(
    path: str,
    text_column: str | None = None,
    label_column: str | None = None,
    label_names: list[str] | str | None = None,
    prompt_template: str | None = None,
    *,
    task: str = "auto",
    mode: str = "sft",
) -> DatasetSpec:
    """The spec of a local file or folder, checked against the file's real columns.

    Classification labels may be ints (ids into ``label_names``) or strings (the names themselves).
    Without ``label_names`` the names are taken from the data: sorted distinct strings, or "0".."n-1"
    for ints; given names must match the labels present.
    """
    available = sources.available_splits(path)
    sample_split = "train" if "train" in available else available[0]
    data = sources.load_split(path, None, sample_split)
    columns = list(data.column_names)
    family = _family(task, mode, label_column, columns, path)

    def need(role: str, column: str) -> str:
        if column not in columns:
            raise StrataError(f"{path} has no column '{column}' ({role}, for --task {family}); its columns are "
                              f"{', '.join(columns)}")
        return column

    eval_split = next((s for s in ("validation", "test") if s in available), sample_split)
    stem = Path(path).stem if Path(path).is_file() else Path(path).name
    common = dict(hub_id=str(path), local_path=str(path), family=family, description=f"local file {path}",
                  domain=stem, tag=stem, train_split=sample_split, eval_split=eval_split,
                  eval_carve=EvalCarve(sample_split, 0.1, 0) if eval_split == sample_split else None,
                  status="verified_offline", schema_source=f"local file {path} (columns checked)")
    template = prompts.check_template(prompt_template) if prompt_template else None
    if family == "pretrain":
        if label_names:
            raise StrataError("--label_names is for classification; a --task pretrain file has only text")
        return DatasetSpec(**common, text_column=need("--text_column", text_column or "text"),
                           modes=("pretrain",))
    if family == "qa":
        if label_names:
            raise StrataError("--label_names is for classification; --task qa answers are free text")
        return DatasetSpec(**common, text_column=None, question_column=need("--text_column", text_column or "question"),
                           answer_column=need("--label_column", label_column or "answer"),
                           prompt_template=template or "qa")
    text = need("--text_column", text_column or "text")
    label = need("--label_column", label_column or "label")
    names = label_names_for(label_names, data[label], path, label)
    return DatasetSpec(**common, text_column=text, label_column=label, label_words=tuple(names),
                       prompt_template=template or "generic_classification")


def _family(task: str, mode: str, label_column: str | None, columns: list[str], path: str) -> str:
    if task == "auto":
        if mode == "pretrain" and (label_column or "label") not in columns:
            return "pretrain"
        return "classification"
    if task not in LOCAL_TASKS:
        raise StrataError(f"--task {task} is not available for a local file ({path}); use one of "
                          f"{', '.join(LOCAL_TASKS)}, or register the dataset (docs/ARCHITECTURE.md)")
    if task == "pretrain" and mode != "pretrain":
        raise StrataError(f"--task pretrain trains on raw text: use --mode pretrain (not --mode {mode})")
    return task


def label_names_for(given: list[str] | str | None, values: list, path: str, column: str) -> list[str]:
    """The label words of a classification file: given (and checked against the data) or inferred."""
    if isinstance(given, str):
        given = [name.strip() for name in given.split(",") if name.strip()]
    present = {v for v in values if v is not None}
    strings = all(isinstance(v, str) for v in present)
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in present)
    if not (strings or ints):
        raise StrataError(f"{path}: column '{column}' mixes label types; pass --label_names a,b,c")
    if given:
        given = list(given)
        if len(set(given)) != len(given):
            raise StrataError(f"--label_names {','.join(given)} repeats a name; give each label once")
        if strings and present - set(given):
            raise StrataError(f"{path}: labels {sorted(present - set(given))} of column '{column}' are not among "
                              f"--label_names {','.join(given)}; add them or fix the column")
        if strings and set(given) - present:
            raise StrataError(f"--label_names {','.join(given)} names {sorted(set(given) - present)}, which column "
                              f"'{column}' of {path} never holds; drop them")
        if ints and len(given) != max(present, default=-1) + 1:
            raise StrataError(f"--label_names gives {len(given)} names but column '{column}' of {path} holds label "
                              f"ids 0..{max(present, default=-1)}; give exactly {max(present, default=-1) + 1} names")
        return given
    if strings:
        return sorted(present)
    return [str(i) for i in range(max(present, default=0) + 1)]
