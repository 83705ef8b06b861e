"""The built-in synthetic-strata corpus: deterministic, balanced, short, leak-free and learnable."""

from __future__ import annotations

import math
from collections import Counter

from strata.data import sources, synthetic
from strata.data.formatting import load_formatted


def test_splits_sizes_columns_and_determinism():
    first = synthetic.build_splits(seed=0)
    assert {name: len(ds) for name, ds in first.items()} == {"train": 4000, "validation": 400, "test": 400}
    assert first["train"].column_names == ["text", "label", "domain", "stratum"]
    synthetic.build_splits.cache_clear()
    again = synthetic.build_splits(seed=0)
    assert first["train"]["text"] == again["train"]["text"] and first["test"]["label"] == again["test"]["label"]
    other = synthetic.build_splits(seed=1)
    assert other["train"]["text"] != first["train"]["text"]


def test_balanced_labels_domains_and_short_texts():
    train = synthetic.build_splits()["train"]
    labels, domains = Counter(train["label"]), Counter(train["domain"])
    assert set(labels) == {0, 1, 2} and min(labels.values()) > 1200
    assert set(domains) == set(synthetic.DOMAIN_NAMES) and len(domains) == 5 and min(domains.values()) > 700
    assert all(synthetic.DOMAIN_NAMES[s] == d for s, d in zip(train["stratum"], train["domain"]))
    lengths = [len(t) for t in train["text"]]
    assert max(lengths) <= 120 and 40 <= sum(lengths) / len(lengths) <= 80


def test_no_evaluation_text_appears_in_train():
    splits = synthetic.build_splits()
    train = set(splits["train"]["text"])
    assert not train & set(splits["validation"]["text"]) and not train & set(splits["test"]["text"])


def test_negation_is_present_and_negative():
    train = synthetic.build_splits()["train"]
    negated = [label for text, label in zip(train["text"], train["label"]) if " not " in text or " never " in text]
    assert len(negated) > 200 and set(negated) == {0}


def test_learnable_by_a_bag_of_words_baseline():
    # Naive Bayes on words: if this can't beat chance by far, a tiny decoder won't either.
    splits = synthetic.build_splits()
    counts = [Counter() for _ in range(3)]
    for text, label in zip(splits["train"]["text"], splits["train"]["label"]):
        counts[label].update(text.lower().split())
    vocab = set().union(*counts)
    totals = [sum(c.values()) for c in counts]

    def predict(text: str) -> int:
        scores = [sum(math.log((counts[k][w] + 1) / (totals[k] + len(vocab))) for w in text.lower().split())
                  for k in range(3)]
        return scores.index(max(scores))

    test = splits["test"]
    accuracy = sum(predict(t) == y for t, y in zip(test["text"], test["label"])) / len(test)
    assert accuracy > 0.8


def test_load_formatted_without_mirror(monkeypatch):
    monkeypatch.delenv("STRATA_HUB_MIRROR", raising=False)
    fd = load_formatted("synthetic", purpose="eval", max_examples=50, seed=3)
    row = fd.dataset[0]
    assert set(row) == {"prompt", "completion", "label", "reference", "domain"}
    assert row["domain"].startswith("synthetic:") and row["domain"].split(":")[1] in synthetic.DOMAIN_NAMES
    assert row["completion"] == " " + synthetic.LABEL_WORDS[row["label"]]
    assert row["prompt"].startswith("Classify the sentiment of this text as 'negative', 'neutral' or 'positive'.")
    assert fd.tag == "synthetic-strata" and fd.split == "validation" and len(fd.dataset) == 50
    assert len(sources.load_split("strata/synthetic-strata", None, "train[:10%]")) == 400
