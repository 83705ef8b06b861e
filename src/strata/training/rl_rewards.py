"""RL reward wiring: the reward callables of a run (by task family, or named) and an optional reward model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from strata.errors import StrataError


def resolve_reward_model_path(path: str, mirror: str | None = None) -> str:
    """A local folder, else the mirror's ``models/<id>`` (``--hub_mirror``, else $STRATA_HUB_MIRROR), else the hub id.

    The same order as ``--model`` (``strata.hub.resolve_model_path``), with errors that name ``--reward_model``.
    """
    from strata.hub import canonical_model_id, hub_offline, looks_like_path, mirror_root

    local = Path(path).expanduser()
    if local.is_dir():
        return str(local)
    if looks_like_path(path):
        raise StrataError(
            f"--reward_model {path}: no such folder; pass a local folder or mirror id of a "
            "sequence-classification model with its tokenizer"
        )
    hub_id = canonical_model_id(path)
    root = mirror_root(mirror)
    if root is not None and (root / "models" / hub_id).is_dir():
        return str(root / "models" / hub_id)
    if not hub_offline():
        return hub_id
    where = f"mirror {root / 'models' / hub_id}" if root is not None else "no mirror (--hub_mirror not set)"
    raise StrataError(
        f"--reward_model '{hub_id}' not found offline: tried local folder '{path}' and {where}; pass a local "
        f"folder, or mirror it with `hf download {hub_id} --local-dir <mirror>/models/{hub_id}`"
    )


def load_reward_model(path: str, mirror: str | None = None) -> tuple[Any, Any]:
    """Load a sequence-classification reward model (one output logit = the reward) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    resolved = resolve_reward_model_path(path, mirror)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(resolved, num_labels=1)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        raise StrataError(
            f"cannot load --reward_model {path!r} ({type(exc).__name__}); pass a local folder or mirror id "
            "of a sequence-classification model with its tokenizer"
        ) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _families(examples: Any) -> list[str]:
    """The task families of the run (a mixture has one per source), in order, without repeats."""
    families = (
        [source.family for source in examples.evals] or _families_from_sources(examples) or [examples.family]
    )
    return list(dict.fromkeys(f for f in families if f))


def _label_words(examples: Any) -> list[str] | None:
    """The run's label words: from its eval sources, else read off the training rows.

    Formatted classification rows carry ``reference == label_words[label]``, so the distinct
    references of labelled rows are the label words (a mixture gets the union, which works
    because the classification reward takes the gold word from the reference).
    """
    words: list[str] = []
    for source in examples.evals:
        words.extend(w for w in (source.label_words or []) if w not in words)
    if words:
        return words
    if examples.label_words:
        return list(examples.label_words)
    train = examples.train
    if "classification" not in _families(examples) and examples.family != "mixed":
        return None
    if not {"label", "reference"} <= set(train.column_names):
        return None
    mixed = examples.family == "mixed"
    by_label: dict[int, str] = {}
    for label, reference in zip(train["label"], train["reference"]):
        if not (isinstance(label, int) and label >= 0 and reference) or reference in by_label.values():
            continue
        by_label.setdefault(len(by_label) if mixed else label, reference)
    return [by_label[k] for k in sorted(by_label)] or None


def _families_from_sources(examples: Any) -> list[str]:
    return [s.get("family") for s in examples.sources if isinstance(s, dict) and s.get("family")]


def rewards_for_run(config: Any, examples: Any) -> tuple[list[Any], list[float]]:
    """Reward callables and weights for ``strata train --mode rl`` (defaults: by each source's family)."""
    t = config.train
    families = _families(examples)
    names = t.reward_funcs
    if not names and not t.reward_model:
        from strata.training.rewards import default_rewards_for_family

        names = list(dict.fromkeys(n for f in families for n in default_rewards_for_family(f))) or None
    from strata.training.rewards import resolve_rewards

    return resolve_rewards(
        names,
        t.reward_weights,
        families[0] if families else examples.family,
        _label_words(examples),
        code_execution=t.code_execution,
        has_reward_model=bool(t.reward_model),
    )
