"""Image datasets as training rows: one example per Q/A pair, the image kept, and a collator that runs the processor.

Sujet-Finance-QA-Vision-100k stores one row per document image with every question about it in one ``qa_pairs``
string (a JSON / Python-literal list of ``{"question", "answer"}`` objects, as its users read it with
``eval(row["qa_pairs"])``). Each pair becomes an example: prompt = ``<image>`` + the question, completion = the
answer. The flattened rows hold the image's row index, not the image, so 100k pairs do not copy 9.8k images.
Token ids follow the encoding contract (``data/encoding.py``); the processor expands ``<image>`` into the tower's
image tokens and makes ``pixel_values``. Labels are -100 on the prompt and the image tokens.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from strata.data import prompts, sources
from strata.data.encoding import IGNORE_INDEX, causal_row, encode_texts, special_tokens
from strata.data.spec import DatasetSpec
from strata.errors import StrataError

IMAGE_COLUMN = "image"
IMAGE_TOKEN = "<image>"  # what the prompt holds where the processor puts the image tokens
PAIRS_COLUMN = "qa_pairs"
ID_COLUMN = "doc_id"


def parse_qa_pairs(text: Any, row: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs of one ``qa_pairs`` string; a malformed string fails naming its row."""
    if not isinstance(text, str) or not text.strip():
        raise StrataError(f"{row}: qa_pairs is empty or not a string ({type(text).__name__})")
    try:
        value = json.loads(text)
    except ValueError:
        try:  # single-quoted Python literals, which the card's users read with eval()
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError) as error:
            raise StrataError(f"{row}: qa_pairs is neither JSON nor a Python literal ({error.__class__.__name__}: "
                              f"{str(error).splitlines()[0][:80]}); fix or drop that row") from error
    if not isinstance(value, list) or not value:
        raise StrataError(f"{row}: qa_pairs must be a non-empty list of {{question, answer}} objects, "
                          f"got {type(value).__name__}")
    pairs = []
    for number, item in enumerate(value):
        if not isinstance(item, dict) or "question" not in item or "answer" not in item:
            raise StrataError(f"{row}: qa_pairs item {number} is not a {{question, answer}} object: {str(item)[:80]}")
        question, answer = str(item["question"]).strip(), str(item["answer"]).strip()
        if not question or not answer:
            raise StrataError(f"{row}: qa_pairs item {number} has an empty question or answer")
        pairs.append((question, answer))
    return pairs


@dataclass
class VisionSplit:
    """One split's Q/A examples (``prompt``, ``completion``, ``reference``, ``image_row``) and its images."""

    examples: datasets.Dataset
    images: datasets.Dataset  # the raw split's image column; examples point into it by ``image_row``
    split: str


def load_vision_split(spec: DatasetSpec, split: str, mirror: str | None, *, max_examples: int | None = None,
                      seed: int = 0, shuffle: bool = False) -> VisionSplit:
    """Load one split and flatten it to one example per Q/A pair (shuffled with ``seed`` when asked, and before
    ``max_examples`` takes its subset)."""
    raw = sources.load_split(spec.id, None, split, mirror)
    missing = [c for c in (IMAGE_COLUMN, PAIRS_COLUMN) if c not in raw.column_names]
    if missing:
        raise StrataError(f"'{spec.id}' split {split} has no column(s) {', '.join(missing)}; its columns are "
                          f"{', '.join(raw.column_names)}")
    if not isinstance(raw.features[IMAGE_COLUMN], datasets.Image):
        raise StrataError(f"'{spec.id}' split {split}: column image is {raw.features[IMAGE_COLUMN]}, not an image; "
                          "store the files as Parquet with a datasets Image column, as the hub does")
    ids = raw[ID_COLUMN] if ID_COLUMN in raw.column_names else [None] * len(raw)
    columns: dict[str, list] = {"prompt": [], "completion": [], "reference": [], "image_row": [], ID_COLUMN: []}
    for index, (doc_id, text) in enumerate(zip(ids, raw[PAIRS_COLUMN])):
        name = f"'{spec.id}' {split} row {index}" + (f" ({ID_COLUMN} {doc_id})" if doc_id else "")
        for question, answer in parse_qa_pairs(text, name):
            columns["prompt"].append(prompts.render(spec.prompt_template, question=question))
            columns["completion"].append(" " + answer)
            columns["reference"].append(answer)
            columns["image_row"].append(index)
            columns[ID_COLUMN].append(str(doc_id or index))
    examples = datasets.Dataset.from_dict(columns)
    if shuffle or (max_examples is not None and max_examples < len(examples)):  # a capped subset is seeded, as
        examples = examples.shuffle(seed=seed)  # formatting.load_formatted takes one (every document may appear)
    if max_examples is not None and max_examples < len(examples):
        examples = examples.select(range(max_examples))
    return VisionSplit(examples=examples, images=raw.select_columns([IMAGE_COLUMN]), split=split)


def describe_example(spec: DatasetSpec, mirror: str | None) -> dict[str, Any]:
    """The first eval example as `strata datasets show` prints it: prompt, completion and the image's size."""
    split = load_vision_split(spec, spec.eval_split, mirror, max_examples=1)
    example = dict(split.examples[0])
    image = split.images[int(example.pop("image_row"))][IMAGE_COLUMN]
    return {**example, IMAGE_COLUMN: f"{image.width}x{image.height} {image.mode} image (to the model's processor)"}


class VisionCollator:
    """Images + prompts through the processor, completions through the encoding contract, labels on the answer.

    Each feature names its split (``image_split``) so one collator serves Trainer's train and eval loaders.
    """

    def __init__(self, processor: Any, images: dict[str, datasets.Dataset], max_length: int | None):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.images = images
        self.max_length = max_length
        self.specials = special_tokens(self.tokenizer)

    def prompt_inputs(self, features: list[dict]) -> tuple[list[list[int]], torch.Tensor]:
        """The prompt ids (``<image>`` expanded; the contract adds the tokenizer's prefix) and the pixel values."""
        pictures = [self.images[f["image_split"]][int(f["image_row"])][IMAGE_COLUMN].convert("RGB") for f in features]
        encoded = self.processor(images=pictures, text=[f["prompt"] for f in features], add_special_tokens=False,
                                 return_tensors="pt", padding=True)
        mask = encoded["attention_mask"].bool()
        ids = [row[keep].tolist() for row, keep in zip(encoded["input_ids"], mask)]
        return ids, encoded["pixel_values"]

    def check_lengths(self, split: VisionSplit) -> None:
        """Refuse before training when a row would exceed ``max_length``: the image tokens cannot be cut.

        The processor expands one example's ``<image>`` (its count is the processor's); the text around it is
        tokenized as the collator will, so the lengths are the rows' without decoding every image.
        """
        if self.max_length is None or len(split.examples) == 0:
            return
        first = dict(split.examples[0], image_split=split.split)
        image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        expanded = self.prompt_inputs([first])[0][0].count(image_id)
        prompts = encode_texts(self.tokenizer, split.examples["prompt"])
        answers = encode_texts(self.tokenizer, split.examples["completion"])
        extra = len(self.specials.prefix) + (self.specials.eos is not None)
        lengths = [len(p) + p.count(image_id) * (expanded - 1) + len(a) + extra for p, a in zip(prompts, answers)]
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] > self.max_length:
            raise StrataError(f"{split.split} example {split.examples[longest][ID_COLUMN]!r} needs {lengths[longest]} "
                              f"tokens ({expanded} of them the image's) but --max_length is {self.max_length}; raise "
                              "--max_length (image tokens cannot be cut)")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        prompt_ids, pixel_values = self.prompt_inputs(features)
        rows = []
        for feature, context, target in zip(features, prompt_ids,
                                            encode_texts(self.tokenizer, [f["completion"] for f in features])):
            row = causal_row(self.specials, context, target, None)  # never cut: the image tokens must all stay
            assert row is not None  # a non-empty answer always makes a row
            if self.max_length is not None and len(row[0]) > self.max_length:
                raise StrataError(f"example {feature.get(ID_COLUMN, '?')!r} needs {len(row[0])} tokens (image tokens "
                                  f"included) but --max_length is {self.max_length}; raise --max_length (the image "
                                  "tokens cannot be cut)")
            rows.append(row)
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (ids, row_labels) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(ids)] = torch.tensor(row_labels)
            attention[i, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "pixel_values": pixel_values, "labels": labels}

