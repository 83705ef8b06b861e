"""``--multi_gpu``: one command trains on every visible GPU, through torch's own elastic launcher.

``python train.py --multi_gpu ...`` with no launcher around it starts ``torch.distributed.run`` in this
process (a free rendezvous port through ``--standalone``), which re-runs the same command as one worker per
GPU and waits; this process creates no run folder and returns the workers' exit code. Under torchrun (or
``python -m torch.distributed.launch``) ``--multi_gpu`` only checks that the launch has 2 or more processes.
``--device cpu --nproc_per_node N`` starts N CPU workers on gloo, so the path is exercised without GPUs.

``accelerate launch`` is checked too (its environment variables, the only trace it leaves in the worker): a
request for N processes that its launcher turned into one process, an accelerate FSDP or DeepSpeed config,
and a ``mixed_precision`` that disagrees with ``--precision`` are refused instead of being run otherwise.

Everything here runs before the data or a model is touched, and a refusal is one line (StrataError).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from strata.errors import StrataError

if TYPE_CHECKING:  # the parsed values are handed down; importing them would pull in transformers
    from strata.training.arguments import RunConfig


def under_launcher() -> bool:
    """torchrun, torch.distributed.launch and accelerate launch all give their workers $WORLD_SIZE."""
    return "WORLD_SIZE" in os.environ


def plan_launch(config: RunConfig) -> int | None:
    """How many workers to start from this process (self-launch), or None to train right here.

    Refuses flags that cannot mean anything in this launch: --ddp_backend in a single process, nccl without
    CUDA, --multi_gpu with fewer than 2 processes or GPUs, --nproc_per_node without --multi_gpu.
    """
    t, device = config.train, config.model.device
    check_launcher_environment(config)
    world = int(os.environ.get("WORLD_SIZE", 1))
    launched = under_launcher()
    if t.nproc_per_node is not None and not t.multi_gpu:
        raise StrataError(f"--nproc_per_node {t.nproc_per_node} sets how many workers --multi_gpu starts; add "
                          "--multi_gpu, or drop it")
    if t.ddp_backend is not None and not t.multi_gpu and world < 2:
        raise StrataError(f"--ddp_backend {t.ddp_backend} sets the backend of a multi-process run, and this one is a "
                          "single process; add --multi_gpu (or launch with torchrun --nproc_per_node N), or drop it")
    if t.ddp_backend == "nccl":
        _check_nccl(device)
    if not t.multi_gpu:
        return None
    if device == "mps":
        raise StrataError("--multi_gpu needs CUDA GPUs (or --device cpu with --nproc_per_node); Apple MPS is one device"
                          ": drop --multi_gpu")
    if launched:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if world < 2:
            raise StrataError(f"--multi_gpu under a launcher needs at least 2 processes, and this launch has {world}; "
                              "pass --nproc_per_node=2 (or more) to torchrun, or drop --multi_gpu")
        if t.nproc_per_node is not None and t.nproc_per_node != local:
            raise StrataError(f"--nproc_per_node {t.nproc_per_node} disagrees with the launcher's {local} processes per "
                              "node; the launcher decides: give --nproc_per_node to torchrun only")
        return None
    if t.nproc_per_node is not None and t.nproc_per_node < 2:
        raise StrataError(f"--nproc_per_node {t.nproc_per_node} is one process; drop --multi_gpu to train in one, or "
                          "pass 2 or more")
    if device == "cpu":
        if t.nproc_per_node is None:
            raise StrataError("--multi_gpu --device cpu needs --nproc_per_node N (2 or more) CPU workers on gloo; add "
                              "it, or drop --device cpu to use the GPUs")
        return t.nproc_per_node
    gpus = torch.cuda.device_count()
    if gpus < 2:
        raise StrataError(f"--multi_gpu needs at least 2 GPUs, and {gpus} {'is' if gpus == 1 else 'are'} visible"
                          f"{_visible_note()}; drop --multi_gpu to train on one device, or add --device cpu "
                          "--nproc_per_node 2 to try the multi-process path on CPU workers")
    nproc = t.nproc_per_node or gpus
    if nproc > gpus:
        raise StrataError(f"--nproc_per_node {nproc} asks for more workers than the {gpus} visible GPUs (one worker "
                          "per GPU); pass at most that many")
    return nproc


MPI_WORLD_SIZE = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")  # what accelerate's state reads


def check_launcher_environment(config: RunConfig) -> None:
    """Refuse a launch whose environment asks for something this run would not do.

    ``accelerate launch`` leaves its settings only as environment variables; ACCELERATE_MIXED_PRECISION is
    exported by each of its launchers and by nothing in-process, so it marks a worker of ``accelerate launch``
    (the Accelerator itself sets ACCELERATE_USE_FSDP in-process when given a plugin, which must not count).

    * With ``--cpu`` (or fewer than 2 GPUs) and ``--num_processes N`` accelerate starts the script once,
      unless mpirun is set up; it then exports MASTER_ADDR/MASTER_PORT (only for N > 1 or several machines)
      and ACCELERATE_USE_CPU (only its single-process launcher does), but no WORLD_SIZE.
    * A config with ``distributed_type: FSDP`` exports ACCELERATE_USE_FSDP: the Trainer would build accelerate's
      FSDP plugin from it on GPUs (and final/ is saved without a gathered state dict) and run plain DDP on CPU
      (accelerate turns FSDP on only for GPU-type setups); DeepSpeed likewise.
    * ACCELERATE_MIXED_PRECISION becomes TrainingArguments.mixed_precision whenever --precision is fp32.
    """
    env = os.environ
    if "WORLD_SIZE" not in env:
        mpi = next((f"{name}={env[name]}" for name in MPI_WORLD_SIZE if env.get(name, "1") != "1"), None)
        if mpi is not None:
            raise StrataError(f"this process was started by mpirun ({mpi}), and Strata reads torchrun's RANK/"
                              "WORLD_SIZE: every process would train alone; launch with torchrun --nproc_per_node N "
                              "(or accelerate launch --multi_gpu --num_processes N) instead")
    if "ACCELERATE_MIXED_PRECISION" not in env:  # not a worker of accelerate launch
        return
    if _true(env.get("ACCELERATE_USE_FSDP")):
        raise StrataError("this accelerate config has distributed_type: FSDP (ACCELERATE_USE_FSDP=true), which Strata "
                          "does not run (DDP on CPU, final/ not gathered on GPU); use --parallelism fsdp with a "
                          "MULTI_GPU config or torchrun")
    if _true(env.get("ACCELERATE_USE_DEEPSPEED")):
        raise StrataError("this accelerate config uses DeepSpeed (ACCELERATE_USE_DEEPSPEED=true), which Strata does not "
                          "run (final/ would not be gathered); use a MULTI_GPU config, torchrun or --multi_gpu")
    if "WORLD_SIZE" not in env and "ACCELERATE_USE_CPU" in env and "MASTER_PORT" in env:
        asked = _accelerate_num_processes()
        raise StrataError(f"accelerate launch started 1 process, not the {asked or 'several'} asked for (with --cpu, "
                          "or with fewer than 2 GPUs, it runs the script once); for N CPU workers run accelerate launch "
                          "--multi_gpu --num_processes N train.py --device cpu ..., or torchrun --nproc_per_node N "
                          "train.py --device cpu ...")
    _check_accelerate_precision(env["ACCELERATE_MIXED_PRECISION"], config)


def _check_accelerate_precision(mixed: str, config: RunConfig) -> None:
    if mixed == "no":
        return
    from strata.models.device import resolve_device, resolve_precision

    precision = resolve_precision(config.model.precision, resolve_device(config.model.device))
    if precision != mixed:
        raise StrataError(f"accelerate launch asks for mixed_precision {mixed} (its config or --mixed_precision) and "
                          f"this run's precision is {precision}; --precision decides: pass --precision {mixed}, or set "
                          "mixed_precision: no for accelerate")


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


def _accelerate_num_processes() -> str | None:
    """--num_processes from the parent ``accelerate launch`` command line, for the refusal's wording only."""
    try:
        import psutil  # a dependency of accelerate
    except ImportError:
        return None
    try:
        argv = psutil.Process(os.getppid()).cmdline()
    except psutil.Error:  # the parent is gone or not readable: the line says "several"
        return None
    for i, arg in enumerate(argv):
        for spelling in ("--num_processes", "--num-processes"):
            if arg == spelling and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(spelling + "="):
                return arg.split("=", 1)[1]
    return None


def _check_nccl(device: str) -> None:
    if device == "cpu" or not torch.cuda.is_available():
        why = "--device cpu" if device == "cpu" else "no CUDA GPU is visible"
        raise StrataError(f"--ddp_backend nccl needs CUDA GPUs, and this run has none ({why}); use --ddp_backend gloo "
                          "or leave it out")


def _visible_note() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""


def launcher_args(nproc: int, train_argv: list[str]) -> list[str]:
    """The torch.distributed.run command line that re-runs ``strata train <train_argv>`` as ``nproc`` workers."""
    return ["--nproc_per_node", str(nproc), "--standalone", "--module", "strata.cli", "train", *train_argv]


def self_launch(nproc: int, train_argv: list[str]) -> int:
    """Run the workers through ``torch.distributed.run.main`` and return their exit code (0 when all succeed)."""
    import torch.distributed.run as torch_run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    print(f"[strata] --multi_gpu: starting {nproc} workers through torch.distributed.run", flush=True)
    try:
        with _worker_environment(), _quiet_agent():
            torch_run.main(launcher_args(nproc, train_argv))
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 1
        how = f"exit code {failure.exitcode}" if failure.exitcode >= 0 else f"signal {-failure.exitcode}"
        print(f"error: worker rank {rank} of {nproc} failed ({how}); its message is above", file=sys.stderr,
              flush=True)
        return code
    return 0


@contextmanager
def _quiet_agent():
    """The elastic agent's own log lines (SIGTERM to the other workers, "failed (exitcode: N)") would bury the
    worker's one-line error; the line printed after them says which worker failed and how."""
    agent = logging.getLogger("torch.distributed.elastic")
    level = agent.level
    agent.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        agent.setLevel(level)


@contextmanager
def _worker_environment():
    """Workers import the very strata this process runs (a checkout on PYTHONPATH may shadow an installed one)."""
    source = str(Path(__file__).resolve().parents[2])  # src/ (or site-packages/) holding this strata
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([source, *([saved] if saved else [])])
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
