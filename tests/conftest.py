"""Test set-up: offline, the shared mirror, small thread counts, and registered models."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
HUB_MIRROR = SHARED / "hub"
FIXTURES = SHARED / "fixtures"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["STRATA_HUB_MIRROR"] = str(HUB_MIRROR)
# The measured-peak cache (strata.training.throughput) of a test run stays out of the user's ~/.cache.
os.environ["STRATA_CACHE"] = tempfile.mkdtemp(prefix="strata-test-cache-")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def hub_mirror() -> Path:
    if not HUB_MIRROR.is_dir():
        pytest.skip(f"the shared hub mirror is not at {HUB_MIRROR}")
    return HUB_MIRROR


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


class _DeprecationRecorder(logging.Handler):
    """Collects library log lines that announce a deprecation (transformers logs many instead of warning)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.lines.append(f"{record.name}: {message}")


LIBRARY_LOGGERS = ("transformers", "trl", "peft", "accelerate", "datasets", "huggingface_hub")


@pytest.fixture(autouse=True)
def no_deprecation_logged():
    """The logged twin of pyproject's `error::FutureWarning`: a test whose calls make a library log a
    deprecation fails, so the suite on `make test-latest` names the next breakage before a user meets it."""
    recorder = _DeprecationRecorder()
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for logger in loggers:
        logger.addHandler(recorder)
    yield
    for logger in loggers:
        logger.removeHandler(recorder)
    assert not recorder.lines, "deprecated API in use:\n" + "\n".join(recorder.lines)
