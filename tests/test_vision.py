"""Images through a processor (issue 17 item 5): Sujet rows -> Q/A examples, the collator's labels, the llava-tiny
preset learning with the image, `strata train` end to end, and final/ reloaded by plain transformers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from helpers import metrics, only_run, run_strata

from strata.data import registry
from strata.data.vision import VisionCollator, load_vision_split, parse_qa_pairs
from strata.errors import StrataError
from strata.models import vision as vision_models
from strata.models.tokenizers import train_bpe_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
SUJET = "sujet-ai/Sujet-Finance-QA-Vision-100k"
PARQUET = FIXTURES / "datasets" / SUJET


def _pairs_read_directly(split: str) -> list[tuple[int, str, str]]:
    """(row, question, answer) read from the Parquet file with json alone: the independent side."""
    rows = datasets.Dataset.from_parquet(str(PARQUET / f"{split}.parquet")).select_columns(["qa_pairs"])
    return [(i, p["question"], p["answer"]) for i, text in enumerate(rows["qa_pairs"]) for p in json.loads(text)]


def test_qa_pairs_strings_parse_and_malformed_ones_name_their_row():
    assert parse_qa_pairs('[{"question": "Total?", "answer": "$5"}, {"question": "Year?", "answer": 2021}]', "r") \
        == [("Total?", "$5"), ("Year?", "2021")]
    assert parse_qa_pairs("[{'question': 'Who?', 'answer': 'ACME'}]", "r") == [("Who?", "ACME")]  # Python literal
    bad = {"": "empty", "[]": "non-empty list", "{'question': 'q'}": "non-empty list",
           "[{'question': 'q'}]": "item 0 is not a {question, answer}", "[{'question': 'q', 'answer': ' '}]":
           "empty question or answer", "Q: a A: b": "neither JSON nor a Python literal"}
    for text, message in bad.items():
        with pytest.raises(StrataError, match=f"row 7 .*{message}|row 7: qa_pairs.*{message}"):
            parse_qa_pairs(text, "row 7")


def test_sujet_rows_become_one_example_per_pair_with_the_image_kept():
    spec = registry.get_spec(SUJET)
    split = load_vision_split(spec, "train", str(FIXTURES))
    expected = _pairs_read_directly("train")
    assert len(split.examples) == len(expected) == 6 and len(split.images) == 3
    for example, (row, question, answer) in zip(split.examples, expected):
        assert example["image_row"] == row and example["reference"] == answer
        assert example["prompt"] == f"<image>\nQuestion: {question}\nAnswer:" and example["completion"] == " " + answer
    assert split.images[2]["image"].size == (24, 16)


def test_a_malformed_row_is_refused_in_one_line_naming_it(tmp_path):
    folder = tmp_path / "datasets" / SUJET
    folder.mkdir(parents=True)
    rows = datasets.Dataset.from_parquet(str(PARQUET / "test.parquet"))
    rows = rows.map(lambda r, i: {"qa_pairs": "not pairs" if i == 1 else r["qa_pairs"]}, with_indices=True)
    rows.to_parquet(str(folder / "test.parquet"))
    with pytest.raises(StrataError, match=r"test row 1 \(doc_id doc_0005\): qa_pairs is neither JSON nor"):
        load_vision_split(registry.get_spec(SUJET), "test", str(tmp_path))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    spec = registry.get_spec(SUJET)
    split = load_vision_split(spec, "train", str(FIXTURES))
    texts = [p + c for p, c in zip(split.examples["prompt"], split.examples["completion"])]
    tokenizer = train_bpe_tokenizer("bpe:400", texts, tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    model, processor = vision_models.build_preset("llava-tiny", tokenizer)
    collator = VisionCollator(processor, {"train": split.images}, max_length=256)
    features = [dict(row, image_split="train") for row in split.examples]
    return model, processor, collator, features


def test_collator_labels_only_the_answer_and_eos(built):
    model, processor, collator, features = built
    batch = collator(features)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    assert model.config.image_token_index == image_id
    assert batch["pixel_values"].shape == (6, 3, 32, 32)
    for row, feature in enumerate(features):
        ids, labels = batch["input_ids"][row], batch["labels"][row]
        assert int((ids == image_id).sum()) == (32 // 8) ** 2  # every patch, the CLS feature dropped
        assert bool((labels[ids == image_id] == -100).all())
        labelled = labels[labels != -100].tolist()
        assert labelled == tok(feature["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        # the labelled tokens are the row's last real tokens: the prompt (question, image) stays unlabelled
        real = int(batch["attention_mask"][row].sum())
        assert ids[real - len(labelled): real].tolist() == labelled
    # the length check before training agrees with the rows the collator builds (to the token)
    split = load_vision_split(registry.get_spec(SUJET), "train", str(FIXTURES))
    longest = int(batch["attention_mask"].sum(1).max())
    VisionCollator(processor, {"train": split.images}, max_length=longest).check_lengths(split)
    with pytest.raises(StrataError, match=f"needs {longest} tokens"):
        VisionCollator(processor, {"train": split.images}, max_length=longest - 1).check_lengths(split)


def test_the_image_reaches_the_model_and_a_repeated_batch_is_learned(built):
    model, _processor, collator, features = built
    batch = collator(features)
    with torch.no_grad():
        blank = model(**{**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}).loss
        start = model(**batch).loss
    assert abs(float(blank) - float(start)) > 1e-4  # pixel values change the loss: the image is in the forward
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    final = float(loss.detach())
    assert final < 0.3 * float(start), (float(start), final)


CHILD = r"""
import importlib.abc, json, sys

class NoStrata(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "strata" or name.startswith("strata."):
            raise ImportError(f"strata must not be imported here (tried {name})")

sys.meta_path.insert(0, NoStrata())
import datasets, torch
from transformers import AutoModelForImageTextToText, AutoProcessor

final, parquet, out = sys.argv[1:]
model = AutoModelForImageTextToText.from_pretrained(final).eval()
processor = AutoProcessor.from_pretrained(final)
tok = processor.tokenizer
rows = datasets.Dataset.from_parquet(parquet)
prompts, answers, images = [], [], []
for row in rows:
    for pair in json.loads(row["qa_pairs"]):
        prompts.append("<image>\nQuestion: " + pair["question"] + "\nAnswer:")
        answers.append(pair["answer"])
        images.append(row["image"].convert("RGB"))
ids, labels, generated = [], [], []
for prompt, answer, image in zip(prompts, answers, images):
    p = processor(images=[image], text=[prompt], add_special_tokens=False, return_tensors="pt")
    a = tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids.append(p["input_ids"][0].tolist() + a)
    labels.append([-100] * p["input_ids"].shape[1] + a)
    with torch.no_grad():
        g = model.generate(**p, max_new_tokens=32, do_sample=False, pad_token_id=tok.pad_token_id)[0, p["input_ids"].shape[1]:].tolist()
    g = g[: g.index(tok.eos_token_id)] if tok.eos_token_id in g else g
    generated.append(tok.decode(g, skip_special_tokens=True).strip())
width = max(map(len, ids))
pad = lambda rows, v: torch.tensor([r + [v] * (width - len(r)) for r in rows])
mask = pad([[1] * len(r) for r in ids], 0)
pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    loss = model(input_ids=pad(ids, tok.pad_token_id), attention_mask=mask, pixel_values=pixels, labels=pad(labels, -100)).loss
json.dump({"loss": float(loss), "generated": generated, "class": type(model).__name__,
           "strata": sorted(m for m in sys.modules if m.startswith("strata"))}, open(out, "w"))
"""


def test_strata_train_on_sujet_writes_a_run_that_plain_transformers_reloads(tmp_path, capsys):
    runs = tmp_path / "runs"
    code = run_strata("train", "--dataset", SUJET, "--model", "llava-tiny", "--max_steps", "2", "--hub_mirror",
                      FIXTURES, "--runs_dir", runs, "--per_device_train_batch_size", "2",
                      "--per_device_eval_batch_size", "8", "--eval_steps", "0", "--precision", "fp32")
    assert code == 0, capsys.readouterr().err[-2000:]
    run = only_run(runs)
    result = metrics(run)
    assert result["status"] == "completed" and result["train"]["train_loss"] > 0
    assert {"eval_loss", "eval_exact_match", "eval_token_f1"} <= set(result["eval"])
    assert result["task_eval"]["examples"] == 2 and result["run"]["train_rows"] == 6
    assert (run / "final" / "processor_config.json").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert {"train/loss", "eval/loss", "run/total_parameters"} <= set(events.Tags()["scalars"])
    assert events.Scalars("run/total_parameters")[0].value == result["run"]["total_parameters"]
    # `strata eval RUN` re-selects the run's eval rows and generates the same answers
    assert run_strata("eval", run, "--hub_mirror", FIXTURES) == 0
    again = json.loads((run / "eval_sujet-vision-qa.json").read_text())
    assert again["task_eval"]["samples"] == result["task_eval"]["samples"]
    assert again["eval"] == {k: result["eval"][k] for k in ("eval_exact_match", "eval_token_f1")}

    out = tmp_path / "child.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-I", "-c", CHILD, str(run / "final"), str(PARQUET / "test.parquet"),
                           str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    child = json.loads(out.read_text())
    assert child["class"] == "LlavaForConditionalGeneration" and child["strata"] == []
    # the same numbers on both sides: the run's eval loss (one eval batch) and its greedy answers
    assert child["loss"] == pytest.approx(result["eval"]["eval_loss"], abs=1e-5)
    assert child["generated"] == [s["generated"] for s in result["task_eval"]["samples"]]

    # the saved folder is itself a model `strata train` continues from (weights and processor loaded, not rebuilt)
    again = tmp_path / "again"
    assert run_strata("train", "--dataset", SUJET, "--model", run / "final", "--max_steps", "1", "--hub_mirror",
                      FIXTURES, "--runs_dir", again, "--eval_steps", "0", "--precision", "fp32",
                      "--learning_rate", "0") == 0
    continued = metrics(only_run(again))
    assert continued["run"]["model_source"] == f"local:{run / 'final'}"
    assert continued["eval"]["eval_loss"] == pytest.approx(result["eval"]["eval_loss"], abs=1e-5)  # lr 0: same weights


@pytest.mark.parametrize("extra, message", [
    (["--model", "llama-tiny"], "needs a vision-language model .* 'llama' is text-only"),
    (["--dataset", "imdb"], "is a vision-language model: it trains on an image dataset"),
    (["--use_packing"], "--use_packing"),
    (["--mode", "pretrain"], "--mode pretrain"),
    (["--streaming"], "--streaming"),
    (["--load_in_4bit"], "load_in_4bit|4-bit"),
    (["--use_lora"], "--use_lora is not used by the vision path"),
    (["--max_length", "30"], r"example 'doc_000\d' needs \d+ tokens \(16 of them the image's\) but --max_length is 30"),
])
def test_what_the_vision_path_cannot_honour_is_refused_in_one_line(extra, message, tmp_path, capsys):
    args = ["train", "--dataset", SUJET, "--model", "llava-tiny", "--hub_mirror", FIXTURES, "--runs_dir",
            tmp_path / "runs", "--max_steps", "1", *extra]
    assert run_strata(*args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
