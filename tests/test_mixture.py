"""Mixtures: flag validation (one line each), proportions, determinism, exhaustion, tags."""

from __future__ import annotations

from collections import Counter

import datasets
import pytest

from strata.data.formatting import load_formatted
from strata.data.mixture import mix, mixture_tag, validate_mixture
from strata.errors import StrataError


def _source(name: str, size: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"domain": [name] * size, "row": list(range(size))})


@pytest.mark.parametrize(
    ("ids", "configs", "rates", "message"),
    [
        ([], [], [], "a mixture needs at least one dataset"),
        (["imdb", "glue"], ["none"], [0.5, 0.5], "--dataset_configs has 1 entries but --datasets has 2"),
        (["imdb", "glue"], [None, "sst2"], [1.0], "--mixture_rates has 1 entries but --datasets has 2"),
        (["imdb", "glue"], [None, "sst2"], [1.2, -0.2], r"mixture rates must be positive numbers, got \[-0.2\]"),
        (["imdb", "glue"], [None, "sst2"], [0.7, 0.4], r"mixture rates must sum to 1, got 1.1 from \[0.7, 0.4\]"),
    ],
)
def test_validate_mixture_errors_are_one_line(ids, configs, rates, message):
    with pytest.raises(StrataError, match=message) as err:
        validate_mixture(ids, configs, rates)
    assert "\n" not in str(err.value)


def test_validate_mixture_accepts_rounding():
    validate_mixture(["a", "b", "c"], [None, None, None], [1 / 3, 1 / 3, 1 / 3])
    validate_mixture(["a", "b"], [None, None], [0.7, 0.3 + 5e-7])


def test_proportions_within_two_percent():
    sources = [_source("a", 3000), _source("b", 3000), _source("c", 3000)]
    mixed = mix(sources, [0.5, 0.3, 0.2], seed=0, num_examples=10_000)
    counts = Counter(mixed["domain"])
    assert len(mixed) == 10_000
    for name, rate in zip("abc", [0.5, 0.3, 0.2]):
        assert abs(counts[name] / 10_000 - rate) < 0.02, counts


def test_same_seed_same_order_different_seed_different_order():
    sources = [_source("a", 500), _source("b", 500)]
    first = mix(sources, [0.7, 0.3], seed=1, num_examples=300)
    again = mix(sources, [0.7, 0.3], seed=1, num_examples=300)
    other = mix(sources, [0.7, 0.3], seed=2, num_examples=300)
    key = list(zip(first["domain"], first["row"]))
    assert key == list(zip(again["domain"], again["row"]))
    assert key != list(zip(other["domain"], other["row"]))


def test_exhausted_source_is_reshuffled_not_truncated():
    small, large = _source("small", 10), _source("large", 1000)
    mixed = mix([small, large], [0.5, 0.5], seed=0, num_examples=400)
    rows = [r for d, r in zip(mixed["domain"], mixed["row"]) if d == "small"]
    assert len(mixed) == 400 and len(rows) > 150
    assert sorted(rows[:10]) == list(range(10))  # each pass uses every row once before repeating
    assert Counter(rows).most_common(1)[0][1] <= len(rows) // 10 + 1


def test_default_length_avoids_repeats():
    mixed = mix([_source("a", 100), _source("b", 1000)], [0.5, 0.5], seed=0)
    assert len(mixed) == 200


def test_mix_rejects_different_columns():
    with pytest.raises(StrataError, match="mixture sources have different columns"):
        mix([_source("a", 5), datasets.Dataset.from_dict({"text": ["x"]})], [0.5, 0.5], seed=0)


def test_mix_real_formatted_datasets(hub_mirror):
    sst2 = load_formatted("glue", "sst2", "validation")
    rt = load_formatted("rotten_tomatoes", split="validation")
    mixed = mix([sst2.dataset, rt.dataset], [0.7, 0.3], seed=0, num_examples=1000)
    counts = Counter(mixed["domain"])
    assert abs(counts["sst2"] / 1000 - 0.7) < 0.05 and counts["sst2"] + counts["rotten_tomatoes"] == 1000
    assert mixed.column_names == ["prompt", "completion", "label", "reference", "domain"]


def test_mixture_tag():
    assert mixture_tag(["imdb-sentiment", "glue-sst2"], [0.7, 0.3]) == "mix_imdb-sentiment-70_glue-sst2-30"


def test_mixture_size_flag_reaches_the_training_set(hub_mirror):
    """--mixture_size N: N training rows; the small source repeats (reshuffled), the large one does not."""
    from strata.config import parse_run_config
    from strata.data.pipeline import load_examples

    flags = ["--datasets", "synthetic", "tweet_eval", "--dataset_configs", "None", "sentiment",
             "--mixture_rates", "0.5", "0.5", "--train_splits", "None", "test[:40]", "--eval_splits", "test",
             "validation", "--max_eval_examples", "10", "--hub_mirror", str(hub_mirror)]
    default = load_examples(parse_run_config(flags).data, "sft", seed=0)
    assert len(default.train) == 80  # min(len_i / rate_i) = 40 / 0.5
    sized = load_examples(parse_run_config([*flags, "--mixture_size", "300"]).data, "sft", seed=0)
    counts = Counter(sized.train["domain"])
    tweets = [p for p, d in zip(sized.train["prompt"], sized.train["domain"]) if d == "tweet_eval"]
    assert len(sized.train) == 300 and counts["tweet_eval"] > 100
    assert len(set(tweets)) <= 40 < len(tweets)  # 40 tweets, each used several times


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "synthetic", "--mixture_size", "10"], "for one dataset use --max_train_examples"),
    (["--datasets", "synthetic", "tweet_eval", "--dataset_configs", "None", "sentiment", "--mixture_rates", "0.5",
      "0.5", "--mixture_size", "0"], "must be a positive number of rows"),
])
def test_mixture_size_refusals(flags, message):
    from strata.config import parse_run_config

    with pytest.raises(StrataError, match=message):
        parse_run_config(flags)
