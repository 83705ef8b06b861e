"""Named run folders: one folder per run holding args, logs, TensorBoard, checkpoints, final model, metrics.

``runs/<YYYY-MM-DD>_<HH>h<MM>m_<model>_<dataset-tag>_<mode>_bs<B>_len<L>[_acc<A>][_lora][_packed][_ws<N>][_multigpu]/``
The time prefix sorts runs chronologically; the rest (the *run key*) finds "the same run" for
``--resume_from_checkpoint latest``. An existing folder is never silently reused.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from strata.errors import StrataError
from strata.training.distributed import broadcast_object

TIME_FORMAT = "%Y-%m-%d_%Hh%Mm"
_TIME_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}_\d{2}h\d{2}m(?:-\d+)?_")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", text).strip("-") or "x"


def run_key(model: str, dataset_tag: str, mode: str, batch_size: int, max_length: int | str,
            grad_accum: int = 1, lora: bool = False, packed: bool = False, world_size: int = 1,
            multi_gpu: bool = False) -> str:
    """The name of a run without its time prefix (``max_length``: RL passes "<prompt>+<completion>";
    ``multi_gpu``: the older pipeline's ``_multigpu`` suffix for --multi_gpu runs)."""
    model_name = _slug(Path(model.rstrip("/")).name if "/" in model else model)
    parts = [model_name, _slug(dataset_tag), mode, f"bs{batch_size}", f"len{max_length}"]
    if grad_accum > 1:
        parts.append(f"acc{grad_accum}")
    if lora:
        parts.append("lora")
    if packed:
        parts.append("packed")
    if world_size > 1:
        parts.append(f"ws{world_size}")
    if multi_gpu:
        parts.append("multigpu")
    return "_".join(parts)


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    def create(self, fresh: bool) -> None:
        """Make the sub-folders. A fresh run claims the folder by creating args.json exclusively, so two
        processes handed the same --output_dir at once cannot both train into it."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise _unwritable(self.root, err) from None
        if fresh:
            try:
                (self.root / "args.json").open("x").close()
            except FileExistsError:
                raise StrataError(f"{self.root} was just claimed by another run; pass a new --output_dir") from None
        for folder in (self.logs, self.tensorboard, self.checkpoints):
            folder.mkdir(parents=True, exist_ok=True)

    def remove_unstarted(self, created_root: bool) -> None:
        """Undo a run that failed before its first optimizer step: the same command may then run again."""
        if created_root:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        for child in self.root.iterdir() if self.root.is_dir() else []:
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    def write_args(self, args: dict[str, Any]) -> None:
        (self.root / "args.json").write_text(json.dumps(args, indent=2, sort_keys=True, default=str) + "\n")
        width = max(len(k) for k in args)
        (self.root / "args.txt").write_text("".join(f"{k:<{width}}  {v}\n" for k, v in sorted(args.items())))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self.metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True, default=_json_default) + "\n")

    def attach_log_file(self) -> logging.Handler:
        """Mirror strata's and transformers' log records into logs/training.log."""
        handler = logging.FileHandler(self.logs / "training.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.INFO)
        handler._previous_levels = {}  # type: ignore[attr-defined]
        for name in ("strata", "transformers", "trl"):
            logger = logging.getLogger(name)
            logger.addHandler(handler)
            handler._previous_levels[name] = logger.level  # type: ignore[attr-defined]
            if logger.level == logging.NOTSET or logger.level > logging.INFO:
                logger.setLevel(logging.INFO)
        return handler


def detach_log_file(handler: logging.Handler) -> None:
    """Undo ``attach_log_file`` (several runs may share one process: tests, `strata compare`)."""
    for name, level in getattr(handler, "_previous_levels", {}).items():
        logger = logging.getLogger(name)
        logger.removeHandler(handler)
        logger.setLevel(level)
    handler.close()


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def new_run_folder(runs_dir: str, key: str, now: datetime | None = None) -> RunFolder:
    """A fresh folder for this run, created here: a same-minute collision (another run, or another process
    starting at the same moment: `mkdir` is atomic) gets a numeric suffix, never reuse."""
    stamp = (now or datetime.now()).strftime(TIME_FORMAT)
    base = Path(runs_dir)
    counter = 1
    while True:
        candidate = base / (f"{stamp}_{key}" if counter == 1 else f"{stamp}-{counter}_{key}")
        try:
            base.mkdir(parents=True, exist_ok=True)
            candidate.mkdir()
            return RunFolder(candidate)
        except FileExistsError:
            counter += 1
        except OSError as err:
            raise _unwritable(candidate, err) from None


def _unwritable(path: Path, err: OSError) -> StrataError:
    return StrataError(f"cannot create the run folder {path} ({err.strerror}); pass a writable --output_dir "
                       "or --runs_dir")


def explicit_run_folder(output_dir: str, resuming: bool) -> RunFolder:
    """``--output_dir``: must be new or empty, unless we are resuming inside it."""
    folder = Path(output_dir)
    if folder.exists() and any(folder.iterdir()) and not resuming:
        raise StrataError(f"--output_dir {output_dir} already holds a run; pass a new folder, or "
                          "--resume_from_checkpoint latest to continue it")
    return RunFolder(folder)


def checkpoint_step(path: Path) -> int:
    return int(path.name.split("-")[-1])


def checkpoint_is_complete(path: Path) -> bool:
    """Whether a Trainer checkpoint was written to the end.

    Trainer writes `trainer_state.json` last, after the weights, optimizer, scheduler, scaler and RNG states
    (transformers' `Trainer._save_checkpoint`; tests/test_crash_safety.py kills a save at two points to keep
    this true), so a save killed part-way leaves that file missing or truncated.
    """
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(state, dict):
        return False
    suffix = path.name.split("-")[-1]
    return not suffix.isdigit() or state.get("global_step") == int(suffix)


def _checkpoints(folder: Path) -> list[Path]:
    """checkpoint-N folders in ``folder/checkpoints`` (or ``folder`` itself), oldest first."""
    found = []
    for parent in (folder / "checkpoints", folder):
        if parent.is_dir():
            found += [p for p in parent.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint with the highest step; incomplete ones (an interrupted save) are passed over.

    Not ``transformers.trainer_utils.get_last_checkpoint``: that returns the highest checkpoint-N of one
    folder even when its save was killed part-way (no or a truncated trainer_state.json), which a resume
    would load torn; and it looks in one folder, where this takes a run folder (its checkpoints/) or the
    checkpoints folder itself. On complete checkpoints both agree (tests/test_run_folders.py).
    """
    complete = [p for p in _checkpoints(folder) if checkpoint_is_complete(p)]
    return complete[-1] if complete else None


def interrupted_checkpoints(folder: Path) -> list[Path]:
    """Incomplete checkpoints newer than the latest complete one: what `latest` skipped."""
    latest = latest_checkpoint(folder)
    newest_good = checkpoint_step(latest) if latest else -1
    return [p for p in _checkpoints(folder) if checkpoint_step(p) > newest_good and not checkpoint_is_complete(p)]


# Flags that say where a run lives or how it is found, not what it trains (sparse_lm_head: the same loss,
# computed at fewer positions).
NOT_TRAINING_CONFIG = frozenset({"resume_from_checkpoint", "output_dir", "runs_dir", "hub_mirror", "sparse_lm_head"})


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The training flags whose values differ between a run's args.json and the current command."""
    current = json.loads(json.dumps(current, default=str))  # compare as args.json stores them
    keys = sorted((saved.keys() | current.keys()) - NOT_TRAINING_CONFIG)
    return [f"--{k} {current.get(k)!r} (that run: {saved.get(k)!r})" for k in keys if saved.get(k) != current.get(k)]


def find_latest_run(runs_dir: str, key: str, current_args: dict[str, Any] | None = None) -> RunFolder | None:
    """The newest run folder with this run key, a complete checkpoint and (given `current_args`) the same
    training configuration; a run whose name matches but whose flags differ is refused, never taken."""
    base = Path(runs_dir)
    if not base.is_dir():
        return None
    matches = sorted(p for p in base.iterdir() if p.is_dir() and _TIME_PREFIX.sub("", p.name) == key)
    refused: tuple[Path, list[str]] | None = None
    for folder in reversed(matches):
        if latest_checkpoint(folder) is None:
            continue
        if current_args is not None:
            try:
                saved = json.loads((folder / "args.json").read_text())
            except (OSError, ValueError):
                saved = {}
            differences = config_differences(saved, current_args)
            if differences:
                refused = refused or (folder, differences)
                continue
        return RunFolder(folder)
    if refused is not None:
        folder, differences = refused
        shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
        raise StrataError(f"--resume_from_checkpoint latest: {folder} has this run's name but other flags: {shown}; "
                          "pass the same flags, or --output_dir of the run to continue, or start without resuming")
    return None


def resolve_resume(resume: str | None, runs_dir: str, key: str, output_dir: str | None,
                   current_args: dict[str, Any] | None = None) -> tuple[RunFolder | None, Path | None]:
    """(run folder to continue, checkpoint) for ``--resume_from_checkpoint latest|PATH``."""
    if resume is None:
        return None, None
    if resume == "latest":
        if output_dir is not None:
            folder = RunFolder(Path(output_dir))
        else:
            found = find_latest_run(runs_dir, key, current_args)
            if found is None:
                raise StrataError(f"--resume_from_checkpoint latest found no run named *_{key} with a checkpoint "
                                  f"in {runs_dir}; pass a checkpoint path or start without resuming")
            folder = found
        checkpoint = latest_checkpoint(folder.root)
        skipped = interrupted_checkpoints(folder.root)
        if checkpoint is None:
            found = f" (only interrupted saves: {', '.join(p.name for p in skipped)})" if skipped else ""
            raise StrataError(f"no complete checkpoint-* folder in {folder.root}{found}; "
                              "train with --save_steps first, or start without resuming")
        for path in skipped:
            print(f"[strata] skipping {path.name}: its save was interrupted (no complete trainer_state.json); "
                  f"resuming from {checkpoint.name}", flush=True)
        return folder, checkpoint
    checkpoint = Path(resume)
    if not checkpoint.is_dir():
        raise StrataError(f"--resume_from_checkpoint {resume} does not exist; pass a checkpoint-N folder or 'latest'")
    if not (checkpoint / "trainer_state.json").exists() and not re.fullmatch(r"checkpoint-\d+", checkpoint.name):
        raise StrataError(f"{resume} is not a Trainer checkpoint (no trainer_state.json); "
                          "pass a checkpoint-N folder or 'latest'")
    if not checkpoint_is_complete(checkpoint):
        raise StrataError(f"{resume} is incomplete (its save was interrupted: trainer_state.json is missing or "
                          "truncated); pass an earlier checkpoint-N or 'latest'")
    root = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent
    return RunFolder(Path(output_dir) if output_dir else root), checkpoint


def choose_run_folder(train_args: Any, key: str, dist: Any,
                      args_record: dict[str, Any]) -> tuple[RunFolder, Path | None, bool]:
    """Decide the run folder once (on rank 0) and share it, so all ranks agree even across a minute tick.
    Also returns whether this call created the folder (what a failed start may remove)."""
    choice = None
    if dist.is_main:
        folder, checkpoint = resolve_resume(train_args.resume_from_checkpoint, train_args.runs_dir, key,
                                            train_args.output_dir, args_record)
        created = False
        if folder is None and train_args.output_dir:
            folder = explicit_run_folder(train_args.output_dir, resuming=False)
            created = not folder.root.exists()
        elif folder is None:
            folder, created = new_run_folder(train_args.runs_dir, key), True
        choice = (str(folder.root), str(checkpoint) if checkpoint else None, created)
    root, checkpoint, created = broadcast_object(choice, dist)
    return RunFolder(Path(root)), Path(checkpoint) if checkpoint else None, created
