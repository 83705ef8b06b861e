"""Process-group facts for torchrun/accelerate launches (DDP on gloo or NCCL)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank and world size from the launcher's environment (torchrun sets RANK/WORLD_SIZE)."""
    return DistInfo(rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)))


def broadcast_object(value: Any, dist: DistInfo) -> Any:
    """Rank 0's value on every rank; starts the process group through accelerate if needed."""
    if dist.world_size == 1:
        return value
    import torch.distributed as torch_dist
    from accelerate import PartialState

    PartialState()  # initialises the default process group (gloo on CPU, nccl on CUDA)
    payload = [value]
    torch_dist.broadcast_object_list(payload, src=0)
    return payload[0]
