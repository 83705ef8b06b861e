"""Test set-up: offline, the shared mirror, small thread counts, and registered models."""

from __future__ import annotations

import os
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
