"""Checkpoints of a model Strata sharded itself (``--parallelism fsdp|hsdp``, training/parallel.py).

Trainer 5.24 checkpoints such a model as if it were whole: rank 0 alone would write ``optimizer.pt`` holding its
own DTensor shards, and a resume would load them into every rank; its ``__init__`` therefore refuses to save at
all. Here every rank writes its shard of the model and the optimizer with torch.distributed.checkpoint (DCP) into
``checkpoint-N/dcp/``; ``model.safetensors`` (the gathered weights, for from_pretrained and evaluation), the
scheduler, scaler, per-rank RNG files and ``trainer_state.json`` are written as Trainer writes them, the latter
still last: ``run_folder.checkpoint_is_complete`` keeps meaning what it says.

A resume must run the same ``--parallelism`` on the same mesh: DCP could reshard the weights and the optimizer,
but the per-rank RNG files and the data order belong to the world size, so the run would not continue; the
mismatch is refused in one line (:func:`check_resume`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from transformers.trainer import SCHEDULER_NAME

from strata.errors import StrataError
from strata.training.parallel import full_state_dict

DCP_DIR = "dcp"  # not "pytorch_model_fsdp*" / "optimizer*": Trainer's own FSDP checks look for those names
LAYOUT_FILE = "fsdp.json"


def is_sharded(model: Any) -> bool:
    """Whether ``model`` is one parallel.shard_model sharded (FSDP2 root module)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def layout(model: torch.nn.Module) -> dict[str, Any]:
    """What a resume must match: the choice and the mesh shape, read off the parameters' DTensor mesh."""
    mesh = next(p for p in model.parameters()).device_mesh
    return {"choice": "hsdp" if mesh.ndim == 2 else "fsdp", "mesh": list(mesh.shape)}


def _optimizer(optimizer: Any) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def save_sharded(model: torch.nn.Module, optimizer: Any, output_dir: str, is_main: bool) -> None:
    """Model + optimizer shards, one file per rank (a collective). ``dcp.save`` returns on rank 0 only after
    every rank wrote its file and rank 0 the ``.metadata``, so whatever rank 0 writes next comes after them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, _optimizer(optimizer))
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        Path(output_dir, LAYOUT_FILE).write_text(json.dumps(layout(model)) + "\n")
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=os.path.join(output_dir, DCP_DIR))


def load_sharded(model: torch.nn.Module, optimizer: Any, checkpoint: str) -> None:
    """Every rank reads its shards of the model and the optimizer back in place (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    optim = _optimizer(optimizer)
    model_state, optim_state = get_state_dict(model, optim)  # the shapes and shardings to read into
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=os.path.join(checkpoint, DCP_DIR))
    set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def saved_layout(checkpoint: Path) -> dict[str, Any] | None:
    try:
        return json.loads((checkpoint / LAYOUT_FILE).read_text())
    except (OSError, ValueError):
        return None


def check_resume(checkpoint: Path | None, choice: str, mesh: tuple[int, ...] | None) -> None:
    """Refuse, before anything is loaded, a resume whose parallelism differs from the checkpoint's."""
    if checkpoint is None:
        return
    saved = saved_layout(checkpoint)
    current = {"choice": choice, "mesh": list(mesh)} if mesh is not None else None
    if saved == current:
        return
    if saved is None:
        raise StrataError(f"{checkpoint} was not written by --parallelism fsdp/hsdp (no {LAYOUT_FILE}); resume it "
                          f"with the --parallelism it was trained with, not {choice}")
    now = f"--parallelism {choice}" + (f" on mesh {list(mesh)}" if mesh is not None else "")
    raise StrataError(f"{checkpoint} holds --parallelism {saved['choice']} shards of mesh {saved['mesh']}, this run "
                      f"is {now}; resume with the same --parallelism, process count and --hsdp_replicas "
                      "(per-rank RNG and data order do not carry over to another layout)")


class FsdpCheckpointing:
    """Trainer mixin: checkpoints and resumes of a model parallel.shard_model sharded; other models go to Trainer.

    The overrides are private Trainer methods because Trainer 5.24 has no public hook at these points: between
    its model save and ``trainer_state.json`` it only calls ``_save_optimizer_and_scheduler``, ``_save_scaler``
    and ``_save_rng_state``; on resume it loads through ``_load_from_checkpoint`` (before the optimizer exists)
    and ``_load_optimizer_and_scheduler`` (after accelerate's prepare).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Trainer.__init__ refuses save_strategy != "no" for a model that owns its sharding ("Resuming is not
        # supported for models sharded at load time") unless save_only_model; this mixin writes what Trainer
        # cannot, so the check is passed with save_only_model=True and the setting restored right after.
        train_args = kwargs.get("args")
        bypass = (is_sharded(kwargs.get("model")) and train_args is not None
                  and train_args.save_strategy != "no" and not train_args.save_only_model)
        if bypass:
            train_args.save_only_model = True
        try:
            super().__init__(*args, **kwargs)
        finally:
            if bypass:
                train_args.save_only_model = False

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not is_sharded(self.model):
            return super().save_model(output_dir, _internal_call)
        # Trainer's _save would write model.state_dict(): this rank's DTensor shards. Every rank gathers.
        state = full_state_dict(self.model)
        if self.args.should_save:
            self._save(output_dir or self.args.output_dir, state_dict=state)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if not is_sharded(self.model):
            return super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))
        save_sharded(self.model, self.optimizer, output_dir, self.args.should_save)

    def _save_rng_state(self, output_dir: str) -> None:
        super()._save_rng_state(output_dir)
        if is_sharded(self.model):  # every rank's rng_state_<r>.pth is on disk before rank 0 writes trainer_state.json
            torch.distributed.barrier()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if not is_sharded(self.model):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        # The weights are read with the optimizer state in _load_optimizer_and_scheduler (one DCP load).

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        if checkpoint is None or not is_sharded(self.model):
            return super()._load_optimizer_and_scheduler(checkpoint)
        load_sharded(self.model, self.optimizer, checkpoint)
        self.lr_scheduler.load_state_dict(torch.load(os.path.join(checkpoint, SCHEDULER_NAME), weights_only=True))
