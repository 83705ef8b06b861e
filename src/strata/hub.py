"""Offline-first resolution of dataset and model ids: the bottom layer, importing nothing of ours but errors.

An id resolves, in order, to: a local path; the mirror folder (``--hub_mirror`` or ``STRATA_HUB_MIRROR``)
laid out like the hub, ``datasets/<owner>/<name>[/<config>]/<split>.jsonl|.json|.parquet|.csv`` and
``models/<owner>/<name>/``; and last the hub itself through ``datasets.load_dataset`` / ``from_pretrained``.
When the hub may not be used (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``) and nothing was found, the error is
one line naming the id, the places tried and how to mirror it.

What only the dataset registry knows (aliases, the built-in corpus, refusals, a Parquet revision) is decided
in ``strata.data.sources`` and passed down here as values.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from datasets.exceptions import DatasetGenerationError

from strata.errors import StrataError

MIRROR_ENV = "STRATA_HUB_MIRROR"
DATA_EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
SPLIT_ORDER = ("train", "validation", "test")

# Short model names used by the hub before it moved models under organisations.
MODEL_ALIASES: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "roberta-base": "FacebookAI/roberta-base",
    "t5-small": "google-t5/t5-small",
}

# "train-00000-of-00001.parquet" is how `hf download` names shards; the split is the part before the shard.
_SHARD_SUFFIX = re.compile(r"-\d{5}-of-\d{5}$")


def hub_offline() -> bool:
    """True when the user told huggingface_hub/datasets not to use the network."""
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def mirror_root(explicit: str | None = None) -> Path | None:
    """The mirror folder: ``explicit`` (``--hub_mirror``) else ``$STRATA_HUB_MIRROR``; None when neither is set.

    An explicit folder that does not exist is an error (a typo should not silently fall through to the hub);
    a stale environment variable is ignored so that unrelated commands keep working.
    """
    if explicit:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            raise StrataError(f"--hub_mirror {explicit} is not a folder; pass the folder that holds datasets/ and models/")
        return root
    env = os.environ.get(MIRROR_ENV, "").strip()
    if env and Path(env).expanduser().is_dir():
        return Path(env).expanduser()
    return None


def canonical_model_id(name: str) -> str:
    """Map a short model name (``gpt2``) to its current hub id (``openai-community/gpt2``)."""
    return MODEL_ALIASES.get(name.strip().lower(), name.strip())


@dataclass(frozen=True)
class DataSource:
    """Where a dataset's split files were found: kind is 'local', 'mirror', 'builtin' or 'hub'."""

    kind: str
    location: str  # the path, the mirror folder, or the hub id
    files: dict[str, list[str]] = field(default_factory=dict)
    tried: tuple[str, ...] = ()
    revision: str | None = None  # the hub revision to load (a registered Parquet revision of a script repo)


def _split_name(path: Path) -> str:
    stem = path.name[: -len(path.suffix)]
    return _SHARD_SUFFIX.sub("", stem)


def _split_files(folder: Path) -> dict[str, list[str]]:
    """Group the data files of one folder (and its ``data/`` subfolder) by split name, in a stable order."""
    found: dict[str, list[str]] = {}
    for sub in (folder, folder / "data"):
        if not sub.is_dir():
            continue
        for path in sorted(sub.iterdir()):
            if path.is_file() and path.suffix in DATA_EXTENSIONS:
                found.setdefault(_split_name(path), []).append(str(path))
    return dict(sorted(found.items(), key=lambda kv: (_split_rank(kv[0]), kv[0])))


def _split_rank(name: str) -> int:
    return SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER)


def _config_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "data" and _split_files(p))


def _files_in(folder: Path, config: str | None, dataset_id: str) -> dict[str, list[str]]:
    """Split files of a dataset folder, looking in ``<folder>/<config>`` first when a config is asked for."""
    if config and (folder / config).is_dir():
        return _split_files(folder / config)
    files = _split_files(folder)
    if files:
        return files
    configs = _config_folders(folder)
    if config is None and len(configs) == 1:
        return _split_files(folder / configs[0])
    if configs:
        wanted = f"config '{config}' is not there" if config else "it has several configs"
        raise StrataError(
            f"dataset '{dataset_id}' at {folder}: {wanted}; pass --dataset_config with one of {', '.join(configs)}"
        )
    return {}


def _mirror_folder(root: Path, hub_id: str) -> Path:
    return root / "datasets" / hub_id


def local_source(dataset_id: str, config: str | None = None) -> DataSource | None:
    """The dataset at a local file or folder path, None when ``dataset_id`` is not one."""
    local = Path(dataset_id).expanduser()
    if local.is_file():
        if local.suffix not in DATA_EXTENSIONS:
            raise StrataError(f"{dataset_id}: unsupported file type '{local.suffix}'; use .jsonl, .json, .csv or .parquet")
        return DataSource("local", str(local), {"train": [str(local)]})
    if local.is_dir():
        files = _files_in(local, config, dataset_id)
        if files:
            return DataSource("local", str(local), files)
        # A folder named like "owner/name" with no data in it is not what the user meant: fall through.
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", dataset_id):
            raise StrataError(f"folder {dataset_id} has no .jsonl/.json/.csv/.parquet files named <split>.<ext>")
    return None


def resolve_dataset(
    dataset_id: str,
    config: str | None = None,
    mirror: str | Path | None = None,
    *,
    hub_id: str | None = None,
    refusal: str | None = None,
    revision: str | None = None,
) -> DataSource:
    """Find where a dataset lives: local path, mirror, then (if allowed) the hub.

    ``hub_id`` is the canonical id an alias stands for (default: ``dataset_id``); ``refusal`` the one-line
    reason the hub may not be used for it (a script or gated repo), raised only once the mirror has no copy;
    ``revision`` the hub revision to load. The caller (``strata.data.sources``) takes them from the registry.
    """
    local = local_source(dataset_id, config)
    if local is not None:
        return local
    hub_id = hub_id or dataset_id.strip()
    tried = [f"local path '{dataset_id}'"]
    root = mirror_root(str(mirror) if mirror else None)
    if root is not None:
        folder = _mirror_folder(root, hub_id)
        where = folder / config if config else folder
        tried.append(f"mirror {where}")
        if folder.is_dir():
            files = _files_in(folder, config, hub_id)
            if files:
                return DataSource("mirror", str(folder), files, tuple(tried))
    else:
        tried.append(f"no mirror (--hub_mirror / ${MIRROR_ENV} not set)")
    if refusal:  # script repos and gated repos without a token: before any download
        raise StrataError(refusal)
    if hub_offline():
        suggestion = root if root is not None else "<mirror>"
        config_part = f" (config {config})" if config else ""
        raise StrataError(
            f"dataset '{hub_id}'{config_part} not found offline: tried {'; '.join(tried)}; the hub is off "
            f"(HF_HUB_OFFLINE). Mirror it with `hf download {hub_id} --repo-type dataset "
            f"--local-dir {suggestion}/datasets/{hub_id}` on a machine with internet, or pass a local .jsonl/.csv file"
        )
    return DataSource("hub", hub_id, tried=tuple(tried), revision=revision)


def split_names(split: str) -> list[str]:
    """Names of the splits used by a split expression ('train[:90%]+validation' → ['train', 'validation'])."""
    try:
        datasets.ReadInstruction.from_spec(split)  # the library validates the syntax
    except (ValueError, AssertionError) as err:
        raise StrataError(
            f"bad split '{split}': {err}; use e.g. 'train', 'test[:100]', 'train[:90%]' or 'train[90%:]'"
        ) from err
    # ReadInstruction keeps the parsed names private, so take them from the validated text.
    return [part.split("[", 1)[0].strip() for part in split.split("+")]


def _missing_split_error(dataset_id: str, config: str | None, missing: str, available: list[str]) -> StrataError:
    config_part = f" (config {config})" if config else ""
    return StrataError(
        f"split '{missing}' is not in dataset '{dataset_id}'{config_part}; available splits: "
        f"{', '.join(available) or 'none'} (choose one with --train_split/--eval_split)"
    )


def source_splits(source: DataSource, config: str | None = None) -> list[str]:
    """Split names of a resolved local, mirror or hub source (the hub is asked for its split names)."""
    if source.kind == "hub":
        return list(datasets.get_dataset_split_names(source.location, config, revision=source.revision))
    return list(source.files)


def load_source(source: DataSource, split: str, dataset_id: str, config: str | None = None) -> datasets.Dataset:
    """Load one split of a resolved source (datasets split syntax: ``test[:10000]``, ``train[:90%]``).

    A split that isn't there raises a StrataError naming the splits that are; ``dataset_id`` is the name
    the user gave, for the messages.
    """
    names = split_names(split)
    if source.kind == "hub":
        try:
            return datasets.load_dataset(source.location, config, split=split, revision=source.revision)
        except ValueError as err:
            if "Unknown split" in str(err):
                raise StrataError(f"dataset '{source.location}': {err}") from err
            raise
    for name in names:
        if name not in source.files:
            raise _missing_split_error(dataset_id, config, name, list(source.files))
    builders = {DATA_EXTENSIONS[Path(f).suffix] for name in names for f in source.files[name]}
    if len(builders) > 1:
        raise StrataError(f"dataset '{dataset_id}' mixes file types {sorted(builders)}; convert them to one format")
    data_files = {name: source.files[name] for name in dict.fromkeys(names)}
    files = [Path(f) for group in data_files.values() for f in group]
    for file in files:
        if file.is_file() and file.stat().st_size == 0:
            raise StrataError(f"{file} is empty; a data file needs at least one row")
    reader_log = logging.getLogger(f"datasets.packaged_modules.{next(iter(builders))}")
    level = reader_log.level
    # The file readers log a parse error before raising it; the error below names file and line instead.
    reader_log.setLevel(logging.CRITICAL)
    try:
        return datasets.load_dataset(builders.pop(), data_files=data_files, split=split)
    except ValueError as err:
        if "corresponds to no data" in str(err):  # datasets' wording for an empty slice such as "test[:0]"
            raise StrataError(f"split '{split}' of '{dataset_id}' is empty; pick a wider slice or another split") from err
        raise
    except DatasetGenerationError as err:
        raise StrataError(_unreadable_file(files, err)) from err
    finally:
        reader_log.setLevel(level)


def _unreadable_file(files: list[Path], err: Exception) -> str:
    """Name the file and line datasets could not read (its own error buries them in a chained traceback)."""
    for file in files:
        if file.suffix not in (".jsonl", ".json"):
            continue
        text = file.read_text(errors="replace")
        if file.suffix == ".json" and text.lstrip().startswith("["):
            try:
                json.loads(text)
                continue
            except ValueError as bad:
                return f"{file} is not valid JSON ({bad}); fix the file or export it as one JSON object per line"
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    json.loads(line)
                except ValueError as bad:
                    return f"{file} line {number} is not valid JSON ({bad.msg}); fix or remove that line"
    cause = err.__cause__ or err
    names = ", ".join(str(f) for f in files)
    return f"could not read {names}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}; " \
           "check that every row has the same columns and types"


def select_split(splits: datasets.DatasetDict, split: str, dataset_id: str = "dataset") -> datasets.Dataset:
    """Apply a split expression to in-memory splits, with the library's own slicing rules."""
    for name in split_names(split):
        if name not in splits:
            raise _missing_split_error(dataset_id, None, name, list(splits))
    instruction = datasets.ReadInstruction.from_spec(split)
    parts = [
        splits[abs_instr.splitname].select(range(abs_instr.from_, abs_instr.to))
        for abs_instr in instruction.to_absolute({name: len(ds) for name, ds in splits.items()})
    ]
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


def looks_like_path(model_id: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else (``/abs``, ``./rel``, ``~``, ``a/b/c``) is a path."""
    return model_id.startswith(("/", "./", "../", "~")) or model_id.count("/") > 1


def resolve_model_path(model_id: str, mirror: str | Path | None = None, init: str | None = None) -> str:
    """A model's local folder, else its mirror folder ``models/<owner>/<name>``, else the hub id if allowed."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return str(local)
    if looks_like_path(model_id):
        raise StrataError(f"--model {model_id}: no such folder; pass an existing model folder (a run's final/), "
                          "a preset (see `strata models`) or a hub id owner/name")
    hub_id = canonical_model_id(model_id)
    tried = [f"local folder '{model_id}'"]
    root = mirror_root(str(mirror) if mirror else None)
    if root is not None:
        folder = root / "models" / hub_id
        tried.append(f"mirror {folder}")
        if folder.is_dir():
            return str(folder)
    else:
        tried.append(f"no mirror (--hub_mirror / ${MIRROR_ENV} not set)")
    if not hub_offline():
        return hub_id
    suggestion = root if root is not None else "<mirror>"
    # --init scratch still needs the model's config.json (and tokenizer): telling the user to add it is no fix.
    fix = ("--init scratch builds from its config.json, which has to be mirrored too (`hf download ... "
           "config.json tokenizer.json`), or use a preset (`strata models`)" if init == "scratch"
           else "or build it from its config with --init scratch")
    raise StrataError(
        f"model '{hub_id}' not found offline: tried {'; '.join(tried)}; the hub is off (HF_HUB_OFFLINE). "
        f"Mirror it with `hf download {hub_id} --local-dir {suggestion}/models/{hub_id}`; {fix}"
    )
