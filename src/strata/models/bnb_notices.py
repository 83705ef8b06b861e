"""Two bitsandbytes log lines that read like failures but are not, filtered out.

Kept apart from ``quantization.py`` (which imports torch) because the CLI installs the filters at start-up,
before anything imports bitsandbytes (peft does, whenever it is installed): this module is stdlib only.
"""

from __future__ import annotations

import logging


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(fragment in str(record.msg) for fragment in self.fragments)


def quiet_bitsandbytes_notices() -> None:
    """Drop two bitsandbytes log lines that read like failures but are not, on every import or every call:
    its CPU backend's notice that the optional `kernels` package is missing (it uses its own kernels), and the
    8-bit matmul's per-call "inputs will be cast to float16" (int8 inference casts inputs; the run's notes say so).
    """
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_KERNELS_NOTICE)
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_CAST_NOTICE)


_KERNELS_NOTICE = _DropMessages("kernels-community")
_CAST_NOTICE = _DropMessages("will be cast from")
