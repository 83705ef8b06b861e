"""Offline-first resolution: local path, mirror, hub; split syntax; one-line errors.

Aliases and the built-in corpus go through ``strata.data.sources`` (the registry decides them); ``strata.hub``
alone gets them as values.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from strata import hub
from strata.data import sources
from strata.errors import StrataError


def test_mirror_root_explicit_env_and_missing(hub_mirror, monkeypatch, tmp_path):
    assert hub.mirror_root() == hub_mirror  # conftest sets STRATA_HUB_MIRROR
    assert hub.mirror_root(str(tmp_path)) == tmp_path
    with pytest.raises(StrataError, match="--hub_mirror /no/such/dir is not a folder"):
        hub.mirror_root("/no/such/dir")
    monkeypatch.delenv("STRATA_HUB_MIRROR")
    assert hub.mirror_root() is None


def test_canonical_ids():
    assert sources.canonical_dataset_id("imdb") == "stanfordnlp/imdb"
    assert sources.canonical_dataset_id("glue") == "nyu-mll/glue"
    assert sources.canonical_dataset_id("rotten_tomatoes") == "cornell-movie-review-data/rotten_tomatoes"
    assert sources.canonical_dataset_id("tweet_eval") == "cardiffnlp/tweet_eval"
    assert sources.canonical_dataset_id("gsm8k") == "openai/gsm8k"
    assert sources.canonical_dataset_id("financial_phrasebank") == "takala/financial_phrasebank"
    assert sources.canonical_dataset_id("tiny_shakespeare") == "karpathy/tiny_shakespeare"
    assert sources.canonical_dataset_id("someone/unknown") == "someone/unknown"
    assert hub.canonical_model_id("gpt2") == "openai-community/gpt2"
    assert hub.canonical_model_id("org/model") == "org/model"


def test_split_slicing_matches_the_files(hub_mirror):
    assert len(sources.load_split("glue", "sst2", "test[:100]")) == 100
    tail = sources.load_split("rotten_tomatoes", None, "train[90%:]")
    assert len(tail) == 853  # 8,530 rows: the last 10%
    with open(hub_mirror / "datasets/cornell-movie-review-data/rotten_tomatoes/train.jsonl", encoding="utf-8") as f:
        lines = f.readlines()
    assert tail[0]["text"] == json.loads(lines[7677])["text"]
    assert len(sources.load_split("rotten_tomatoes", None, "train[:90%]")) == 7677
    both = sources.load_split("glue", "wnli", "train[:3]+validation[:2]")
    assert len(both) == 5 and both[3]["sentence1"] == "The drain is clogged with hair. It has to be cleaned."


def test_bad_split_syntax():
    with pytest.raises(StrataError, match=r"bad split 'train\[abc\]'"):
        hub.split_names("train[abc]")


def test_missing_split_names_existing_splits(hub_mirror):
    with pytest.raises(StrataError) as err:
        sources.load_split("cardiffnlp/tweet_eval", "sentiment", "train")
    message = str(err.value)
    assert "\n" not in message
    assert "split 'train' is not in dataset 'cardiffnlp/tweet_eval' (config sentiment); available splits: validation, test" in message


def test_available_splits(hub_mirror):
    assert sources.available_splits("glue", "mrpc") == ["train", "validation", "test"]
    assert sources.available_splits("imdb", None) == ["train", "test"]
    assert sources.available_splits("synthetic", None) == ["train", "validation", "test"]


def test_unknown_dataset_offline_is_one_line_with_places_and_fix(hub_mirror):
    with pytest.raises(StrataError) as err:
        sources.load_split("someone/not-mirrored", None, "train")
    message = str(err.value)
    assert "\n" not in message
    assert "dataset 'someone/not-mirrored' not found offline" in message
    assert f"mirror {hub_mirror}/datasets/someone/not-mirrored" in message
    assert "hf download someone/not-mirrored --repo-type dataset" in message


def test_no_mirror_configured_is_named(monkeypatch):
    monkeypatch.delenv("STRATA_HUB_MIRROR")
    with pytest.raises(StrataError, match=r"no mirror \(--hub_mirror / \$STRATA_HUB_MIRROR not set\)"):
        sources.load_split("rotten_tomatoes", None, "train")


def test_local_jsonl_file_is_train_split(tmp_path):
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"row {i}", "y": i % 2}) for i in range(10)) + "\n")
    data = sources.load_split(str(path), None, "train[:4]")
    assert data["text"] == ["row 0", "row 1", "row 2", "row 3"]
    with pytest.raises(StrataError, match="available splits: train"):
        sources.load_split(str(path), None, "validation")


def test_local_folder_with_hf_download_shards(tmp_path):
    # `hf download` writes <config>/<split>-00000-of-00001.parquet: the mirror reader understands it.
    import datasets

    folder = tmp_path / "datasets" / "acme" / "tiny" / "default"
    folder.mkdir(parents=True)
    datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, 0]}).to_parquet(
        str(folder / "train-00000-of-00001.parquet")
    )
    datasets.Dataset.from_dict({"text": ["d"], "label": [1]}).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    assert sources.available_splits("acme/tiny", None, mirror=tmp_path) == ["train", "test"]
    assert sources.load_split("acme/tiny", "default", "test", mirror=tmp_path)["text"] == ["d"]
    csv_dir = tmp_path / "csvdata"
    csv_dir.mkdir()
    (csv_dir / "train.csv").write_text("text,label\nhello,1\nbye,0\n")
    (csv_dir / "validation.csv").write_text("text,label\nok,1\n")
    assert sources.load_split(str(csv_dir), None, "validation")["text"] == ["ok"]


def test_resolve_model_path(hub_mirror, monkeypatch, tmp_path):
    assert hub.resolve_model_path("gpt2") == str(hub_mirror / "models/openai-community/gpt2")
    assert hub.resolve_model_path(str(tmp_path)) == str(tmp_path)
    with pytest.raises(StrataError) as err:
        hub.resolve_model_path("acme/none")
    assert "model 'acme/none' not found offline" in str(err.value) and "--init scratch" in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    assert hub.resolve_model_path("acme/none") == "acme/none"  # the hub may be used: from_pretrained fetches it


def test_gpt2_tokenizer_loads_from_mirror(hub_mirror):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hub.resolve_model_path("gpt2"))
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]


def test_unsupported_local_file_type(tmp_path):
    path = Path(tmp_path) / "data.txt"
    path.write_text("x")
    with pytest.raises(StrataError, match=r"unsupported file type '.txt'"):
        sources.load_split(str(path), None, "train")


def test_hub_alone_takes_the_registry_decisions_as_values(hub_mirror, monkeypatch):
    """Without the data layer an alias is just a name; the canonical id, refusal and revision come in as values."""
    with pytest.raises(StrataError, match="dataset 'imdb' not found offline"):
        hub.resolve_dataset("imdb")
    source = hub.resolve_dataset("imdb", hub_id="stanfordnlp/imdb", refusal="never raised: the mirror has it")
    assert (source.kind, source.location) == ("mirror", str(hub_mirror / "datasets/stanfordnlp/imdb"))
    assert hub.source_splits(source) == ["train", "test"]
    with pytest.raises(StrataError, match="^refused: a script repo$"):
        hub.resolve_dataset("acme/script", refusal="refused: a script repo")  # not mirrored: the refusal wins
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    online = hub.resolve_dataset("acme/none", hub_id="acme/none-renamed", revision="refs/convert/parquet")
    assert (online.kind, online.location, online.revision) == ("hub", "acme/none-renamed", "refs/convert/parquet")
