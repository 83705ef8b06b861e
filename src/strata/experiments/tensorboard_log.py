"""Diagnostics as TensorBoard scalars: every finite numeric leaf of the nested result, one tag each."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["log_diagnostics_to_tensorboard"]


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float, np.integer, np.floating)):
        if math.isfinite(float(value)):
            out[prefix] = float(value)
    elif isinstance(value, Mapping):
        if "layer" in value and isinstance(value["layer"], int):
            prefix = f"{prefix.rsplit('/', 1)[0]}/layer{value['layer']}"
        for k, v in value.items():
            if k != "layer":
                _flatten(f"{prefix}/{k}", v, out)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _flatten(f"{prefix}/{i}", v, out)


def log_diagnostics_to_tensorboard(
    writer: Any, diag: Mapping[str, Any], step: int, prefix: str = "diag"
) -> int:
    """Write every finite numeric leaf of `diag` as a scalar (tags like diag/layers/layer0/router/nmi).

    `writer` is a torch.utils.tensorboard SummaryWriter (anything with `add_scalar`). Returns the number of
    scalars written.
    """
    flat: dict[str, float] = {}
    _flatten(prefix, diag, flat)
    for tag, v in flat.items():
        writer.add_scalar(tag, v, step)
    return len(flat)
