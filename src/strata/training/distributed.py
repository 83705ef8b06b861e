"""Process-group facts for torchrun/accelerate launches (DDP on gloo or NCCL), on one node or several.

Rank 0 of the whole job (``RANK``, not ``LOCAL_RANK``) is the main process: it alone chooses and writes the
run folder, so a multi-node run writes one folder, on a file system every node sees.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strata.errors import StrataError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_world_size: int = 1  # processes on this node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        return self.rank == 0  # the global rank: each node has its own local rank 0

    @property
    def nodes(self) -> int:
        """Nodes in the job; torchrun gives every node the same --nproc_per_node."""
        return max(1, self.world_size // max(1, self.local_world_size))


def dist_info() -> DistInfo:
    """Rank, world size and processes per node from the launcher's environment (torchrun sets all three).

    Read from the environment, not from accelerate's ``PartialState``: the first ``PartialState()`` starts
    the process group with accelerate's default backend, before ``start_process_group`` can apply
    ``--ddp_backend`` (and a refused flag must fail before any group exists).
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    return DistInfo(rank=int(os.environ.get("RANK", 0)), world_size=world,
                    local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def start_process_group(backend: str | None, cpu: bool) -> str:
    """Start the default process group with ``backend`` (None: accelerate's choice) and return the one in use.

    Must run before anything else touches accelerate's state: the first ``PartialState`` decides the group
    for the whole process, and the Trainer's later ``ddp_backend`` would then be ignored without a word.
    """
    import torch.distributed as torch_dist
    from accelerate import PartialState

    PartialState(cpu=cpu, backend=backend)
    return str(torch_dist.get_backend())


def process_group_backend() -> str | None:
    """The backend of the running process group (what metrics.json records), None in a single process.

    torch's own answer: ``PartialState().backend`` would create accelerate's state in a single process.
    """
    import torch.distributed as torch_dist

    if not (torch_dist.is_available() and torch_dist.is_initialized()):
        return None
    return str(torch_dist.get_backend())


def broadcast_object(value: Any, dist: DistInfo) -> Any:
    """Rank 0's value on every rank (accelerate's ``broadcast_object_list``, which starts the process group
    through ``PartialState`` if ``start_process_group`` has not)."""
    if dist.world_size == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


def check_shared_folder(root: Path, dist: DistInfo) -> None:
    """Every rank must see the run folder rank 0 created (all ranks call; all raise together).

    On several nodes ``--runs_dir`` must be a file system they share: a resume reads the checkpoint on every
    rank, and a rank that cannot see the folder would write a stray copy of the parts it writes itself (the
    trained tokenizer). accelerate's ``gather_object`` (all_gather_object) so that no rank trains on alone.
    """
    if dist.world_size == 1:
        return
    from accelerate.utils import gather_object

    seen = gather_object([(dist.rank, root.is_dir())])
    blind = [rank for rank, sees in seen if not sees]
    if blind:
        raise StrataError(f"rank{'s' if len(blind) > 1 else ''} {', '.join(map(str, blind))} of {dist.world_size} "
                          f"cannot see the run folder {root} that rank 0 created; on several nodes put --runs_dir "
                          "(or --output_dir) on a file system every node shares")


def watch_launcher(poll_seconds: float = 1.0) -> threading.Thread | None:
    """Under torchrun (or accelerate launch), end this worker when the launcher dies.

    torchrun's agent is the parent of every local worker. If it is killed (SIGKILL, OOM killer, a lost
    ssh session) nothing tells the workers, which would train on and write final/ on their own. A daemon
    thread notices the parent pid change (the orphan is re-parented) within `poll_seconds` and exits the
    process. Polling, not Linux's PR_SET_PDEATHSIG, because it works on every OS and cannot race with a
    launcher that died before we looked.
    """
    global _watcher
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # set by torchrun for its workers; not by `python train.py`
        return None
    if _watcher is not None:
        return _watcher
    launcher = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != launcher:
                print(f"[strata] rank {os.environ.get('RANK', '?')}: the launcher (pid {launcher}) is gone; "
                      "stopping this worker", file=sys.stderr, flush=True)
                os._exit(1)

    _watcher = threading.Thread(target=watch, name="strata-launcher-watch", daemon=True)
    _watcher.start()
    return _watcher


_watcher: threading.Thread | None = None
