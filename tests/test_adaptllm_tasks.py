"""AdaptLLM/finance-tasks FPB, FiQA_SA and Headline (issue 17): id, input, options, gold_index, as loaders of the hub's
<config>/test.json read them; the hub file is a JSON array, which the mirror accepts as it is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strata.data import registry
from strata.data.formatting import load_formatted

FIXTURES = Path(__file__).parent / "fixtures"
TASKS = FIXTURES / "datasets" / "AdaptLLM" / "finance-tasks"


def _rows(config: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / config / "test.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("config", ["FPB", "FiQA_SA", "Headline"])
def test_option_tasks_answer_with_the_gold_option(config):
    spec = registry.get_spec("AdaptLLM/finance-tasks").for_config(config)
    assert spec.expected_columns == ("input", "options", "gold_index")
    formatted = load_formatted("AdaptLLM/finance-tasks", config, "test[:10]", mirror=FIXTURES).dataset  # no carve
    by_prompt = {row["prompt"]: row for row in formatted}
    raw = _rows(config)
    assert len(formatted) == len(raw) == 10
    for row in raw:  # the few-shot input is the whole prompt; the gold option (by gold_index) is the answer
        example = by_prompt[row["input"] + "\nAnswer:"]
        gold = row["options"][row["gold_index"]]
        assert (example["completion"], example["reference"]) == (" " + gold, gold)
        assert example["domain"] == f"adaptllm_{config.lower()}"


def test_the_hubs_json_array_file_loads_from_a_mirror(tmp_path):
    folder = tmp_path / "datasets" / "AdaptLLM" / "finance-tasks" / "FiQA_SA"
    folder.mkdir(parents=True)
    (folder / "test.json").write_text(json.dumps(_rows("FiQA_SA")))  # one JSON array, as on the hub
    formatted = load_formatted("AdaptLLM/finance-tasks", "FiQA_SA", "test[:10]", mirror=tmp_path).dataset
    assert sorted(formatted["prompt"]) == sorted(r["input"] + "\nAnswer:" for r in _rows("FiQA_SA"))
