"""benchmarks/bench_sft.py counts tokens the way each system's loss sees them (the full run is too slow
for the suite: a --quick run of five systems takes minutes on 2 cores)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from strata.data.collate import PackingCollator, PaddingCollator

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_sft.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_sft", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Two examples: 5 tokens (3 prompt, 2 completion) and 3 tokens (1 prompt, 2 completion).
A = {"input_ids": [11, 12, 13, 14, 15], "labels": [-100, -100, -100, 14, 15]}
B = {"input_ids": [21, 22, 23], "labels": [-100, 22, 23]}


def test_padded_batch_counts_real_tokens_and_shifted_labels(bench):
    batch = PaddingCollator(pad_token_id=0)([A, B])
    # by hand: 8 real tokens, 2 x 5 positions, 4 completion labels (none at position 0)
    assert bench.count_tokens(batch) == {"loss": 4, "real": 8, "computed": 10}


def test_packed_rows_skip_padding_blocks(bench):
    row = {"input_ids": A["input_ids"] + B["input_ids"], "labels": A["labels"] + B["labels"],
           "position_ids": [0, 1, 2, 3, 4, 0, 1, 2]}
    batch = PackingCollator(pad_token_id=0)([row, {**B, "position_ids": [0, 1, 2]}])
    # second row is padded by 5 positions that form their own block with no labels
    assert batch["input_ids"].shape == (2, 8)
    assert bench.count_tokens(batch) == {"loss": 6, "real": 11, "computed": 16}


def test_trl_padding_free_batch(bench):
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)
    batch = collator([A, B])  # TRL 1.x folds completion_mask into a labels column before collation
    # one flattened row of 8; TRL masks each sequence's first label, completion tokens stay
    assert bench.count_tokens(batch) == {"loss": 4, "real": 8, "computed": 8}


def test_quick_mode_and_bad_systems(bench):
    a = bench.parse(["--quick"])
    assert (a.rounds, a.steps, a.systems) == (1, 3, list(bench.SYSTEMS))
    with pytest.raises(SystemExit):
        bench.parse(["--systems", "trainer_pad_max,nope"])
