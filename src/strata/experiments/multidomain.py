"""The multi-domain 3-class sentiment mixture of the stratified comparison, as `strata train` flags.

Why a module: the real comparison and its tests must train on exactly the same sources, splits and rates,
and the docs must be able to name them; one definition here is expanded to ordinary mixture flags
(``--datasets ... --dataset_configs ... --train_splits ... --eval_splits ... --mixture_rates ...``), so every
run folder's args.json still records the data explicitly.

Rates: the sources the tiny baseline learned slowest in calibration (the two tweet sets) get more rows, the
synthetic set (learned to ~100% by every calibration run) fewer: weights 1.5 / 1.5 / 1.5 / 2 / 2.5 / 2 / 1 below,
normalised over the sources a run trains on. Every source is in the shared hub mirror. Label words are harmonised by the registry (negative / neutral /
positive; Twitter financial news bearish -> negative, bullish -> positive); the binary movie sets keep their
two words. Each example carries its source's ``domain`` tag (the synthetic set: ``synthetic:<planted domain>``).

Notes on individual sources:
- SST-2: training reads ``train[:20000]``. Every source is formatted whole before mixing, so the 67k-row split
  cost each run ~15 s of formatting for rows a run never reaches (a run of 900 packed steps draws ~13k per source).
- TweetEval sentiment: the mirror has no train split, so training uses ``test[:10000]`` and evaluation the
  rest of the official test split, ``test[10000:]`` (2,284 tweets). Not the official validation split: its labels
  are distributed differently (16 / 43 / 41 % negative / neutral / positive against the test split's 32 / 48 / 19),
  so a model trained on test rows and scored on validation rows measures that shift as much as what it learned.
- Financial PhraseBank ``sentences_50agree`` has one split; the registry carves a fixed seeded 90/10 slice
  (seed 0, independent of the run seed) so training and evaluation never share a sentence.
- IMDB is a 2,500/2,500 subset in the mirror; reviews average ~1,300 characters, so with a byte-level
  tokenizer and ``--max_length 256`` the prompt is truncated from the left and only the end of each review
  (plus the "Sentiment:" cue) is seen. That is a property of this budget, not a bug; see docs/results/README.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from strata.errors import StrataError

NAME = "multidomain"


@dataclass(frozen=True)
class Source:
    """One mixture component: registry id, config, and its own train / eval splits (None: the spec's)."""

    dataset: str
    config: str | None
    train_split: str | None
    eval_split: str | None
    note: str = ""
    weight: float = 1.0  # share of the training rows, before normalising over the sources a run uses


SOURCES: tuple[Source, ...] = (
    Source("nyu-mll/glue", "sst2", "train[:20000]", "validation",
           "test labels are hidden; the first 20,000 of 67,349 training rows (a run reads ~15,000 at most)", 1.5),
    Source("cornell-movie-review-data/rotten_tomatoes", None, "train", "validation", weight=1.5),
    Source("stanfordnlp/imdb", None, "train", "test", "2,500/2,500 subset; no validation split", 1.5),
    Source("cardiffnlp/tweet_eval", "sentiment", "test[:10000]", "test[10000:]",
           "no train split in the mirror: disjoint parts of the official test split", 2.0),
    Source("zeroshot/twitter-financial-news-sentiment", None, "train", "validation", "bearish/bullish mapped", 2.5),
    Source("takala/financial_phrasebank", "sentences_50agree", None, None, "seeded 90/10 carve of its only split",
           2.0),
    Source("strata/synthetic-strata", None, "train", "validation", "planted strata (known domain)"),
)


def _word(value: str | None) -> str:
    return "None" if value is None else value


def mixture_flags(sources: tuple[Source, ...] = SOURCES, rates: list[float] | None = None) -> list[str]:
    """`strata train` flags for the mixture; the sources' weights, normalised, unless rates are given."""
    n = len(sources)
    if rates is None:
        total = sum(s.weight for s in sources)
        rates = [s.weight / total for s in sources]
    if len(rates) != n:
        raise StrataError(f"the {NAME} mixture has {n} sources but {len(rates)} rates were given")
    return [
        "--datasets", *[s.dataset for s in sources],
        "--dataset_configs", *[_word(s.config) for s in sources],
        "--train_splits", *[_word(s.train_split) for s in sources],
        "--eval_splits", *[_word(s.eval_split) for s in sources],
        "--mixture_rates", *[repr(float(r)) for r in rates],
    ]


def without(name: str) -> tuple[tuple[Source, ...], Source]:
    """The mixture minus one source (named by dataset id or its last part), and that source: for transfer."""
    match = [s for s in SOURCES if name in (s.dataset, s.dataset.split("/")[-1])]
    if len(match) != 1:
        names = ", ".join(s.dataset for s in SOURCES)
        raise StrataError(f"--holdout {name!r} is not one source of the {NAME} mixture; choose one of {names}")
    return tuple(s for s in SOURCES if s is not match[0]), match[0]


def describe(sources: tuple[Source, ...] = SOURCES) -> str:
    """A markdown table of the sources, for results.md."""
    total = sum(s.weight for s in sources)
    lines = ["| source | config | train split | eval split | rate | note |", "|---|---|---|---|---|---|"]
    for s in sources:
        lines.append(f"| {s.dataset} | {s.config or '-'} | {s.train_split or 'spec default'} | "
                     f"{s.eval_split or 'spec default'} | {s.weight / total:.3f} | {s.note or '-'} |")
    return "\n".join(lines)
