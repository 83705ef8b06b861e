"""Evaluation of a vision-language model on an image QA split: greedy answers with the image, exact match and
token F1 (``evaluation.metrics``, the QA metrics of the text path), and ``strata eval`` on a vision run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from strata.data.encoding import decoder_context
from strata.data.vision import VisionCollator, VisionSplit, load_vision_split
from strata.errors import StrataError

MAX_NEW_TOKENS = 32  # answers are short spans ("$1,200", "2021")


def generate_answers(model: Any, collator: VisionCollator, features: list[dict], max_length: int,
                     max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
    """Greedy answers, one example at a time (no padding to get wrong with the image tokens in front)."""
    tokenizer = collator.tokenizer
    device = next(model.parameters()).device
    answers = []
    model.eval()
    with torch.no_grad():
        for feature in features:
            prompt_ids, pixel_values = collator.prompt_inputs([feature])
            ids = torch.tensor([decoder_context(collator.specials, prompt_ids[0])], device=device)
            budget = max(1, min(max_new_tokens, max_length - ids.shape[1]))
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 pixel_values=pixel_values.to(device, model.dtype), max_new_tokens=budget,
                                 do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id)
            new = out[0, ids.shape[1]:].tolist()
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            answers.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return answers


def evaluate_generation(model: Any, collator: VisionCollator, split: VisionSplit, max_length: int,
                        max_new_tokens: int = MAX_NEW_TOKENS) -> dict:
    """Exact match and token F1 of the generated answers, with the first few samples."""
    from strata.evaluation.metrics import exact_match, mean_token_f1

    features = [dict(row, image_split=split.split) for row in split.examples]
    predictions = generate_answers(model, collator, features, max_length, max_new_tokens)
    references = [f["reference"] for f in features]
    return {"exact_match": exact_match(predictions, references), "token_f1": mean_token_f1(predictions, references),
            "examples": len(features),
            "samples": [{"doc_id": f["doc_id"], "question": f["prompt"], "reference": r, "generated": p}
                        for f, r, p in list(zip(features, references, predictions))[:5]]}


def is_vision_folder(folder: Path) -> bool:
    """A model folder whose config takes images (a vision run's final/)."""
    config = folder / "config.json"
    try:
        values = json.loads(config.read_text()) if config.is_file() else {}
    except ValueError:  # not JSON: the model loader reports it in one line
        return False
    return isinstance(values, dict) and any(values.get(key) is not None for key in ("vision_config", "vision_tower"))


def eval_vision_folder(folder: Path, data, seed: int, device: str, max_new_tokens: int | None) -> dict:
    """`strata eval` on a vision model: the run's eval split, the same capped subset, the same generation."""
    from strata.data.registry import REGISTRY
    from strata.data.sources import canonical_dataset_id
    from strata.models.loading import resolve_device
    from strata.models.vision import load_folder

    spec = REGISTRY.get(canonical_dataset_id(data.dataset))
    if spec is None or not spec.requires_vision or data.datasets:
        raise StrataError(f"{folder} is a vision-language model: evaluate it on an image dataset "
                          "(--dataset sujet-ai/Sujet-Finance-QA-Vision-100k)")
    model, processor = load_folder(str(folder))
    model.to(resolve_device(device))
    split = load_vision_split(spec, data.eval_split or spec.eval_split, data.hub_mirror,
                              max_examples=data.max_eval_examples, seed=seed)
    collator = VisionCollator(processor, {split.split: split.images}, data.max_length)
    result = evaluate_generation(model, collator, split, data.max_length, max_new_tokens or MAX_NEW_TOKENS)
    return {"dataset": spec.tag, "split": split.split, "examples": result["examples"],
            "metrics": {k: result[k] for k in ("exact_match", "token_f1")}, "task_eval": result,
            "eval": {f"eval_{k}": result[k] for k in ("exact_match", "token_f1")}}
