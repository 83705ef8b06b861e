"""One ``DatasetSpec`` per supported dataset: where it lives, its columns, labels, prompt and modes.

The spec is the single place that knows a dataset's quirks (which split to evaluate on when there is no
validation split, which label id means what, which configs exist), so the formatting, training and
evaluation code stay generic. ``verified_offline`` is True only for datasets whose files are in the
shared mirror and were checked; the others follow their hub dataset card.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from strata.data import prompts, synthetic
from strata.errors import StrataError

FAMILIES = ("classification", "multiple_choice", "qa", "math", "code", "instruction", "pretrain")
MODES = ("sft", "pretrain", "rl")
LABELLED_MODES = ("sft", "pretrain", "rl")


@dataclass(frozen=True)
class EvalCarve:
    """A held-out slice cut from a split for datasets that ship only one split.

    The split is shuffled with ``seed`` (fixed per dataset, not the training seed, so every run evaluates
    on the same rows); evaluation uses the last ``fraction`` and training the rest, so they never overlap.
    """

    source_split: str = "train"
    fraction: float = 0.1
    seed: int = 0

    def describe(self) -> str:
        keep = round((1 - self.fraction) * 100)
        return (
            f"{self.source_split} shuffled with seed {self.seed}: first {keep}% for training, "
            f"last {round(self.fraction * 100)}% for evaluation"
        )


@dataclass(frozen=True)
class DatasetSpec:
    """Everything Strata needs to know to load, format and evaluate one dataset."""

    hub_id: str
    family: str
    description: str
    domain: str  # short tag put in every example's `domain` column ("imdb", "sst2", "fpb")
    tag: str  # run/result tag ("imdb-sentiment", "glue-sst2")
    aliases: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    default_config: str | None = None
    configs_open: bool = False  # True when the hub has many configs (e.g. MMLU subjects) not listed here
    train_split: str = "train"
    eval_split: str = "validation"
    eval_note: str = ""
    eval_carve: EvalCarve | None = None
    text_column: str | None = "text"
    text_pair_column: str | None = None
    label_column: str | None = None
    label_words: tuple[str, ...] | None = None  # index = label id in the hub dataset
    score_thresholds: tuple[float, float] | None = None  # continuous score → (negative, neutral, positive)
    question_column: str | None = None
    options_column: str | None = None
    answer_column: str | None = None  # gold answer / reference column
    answer_is_letter: bool = False
    context_column: str | None = None  # e.g. Alpaca "input"
    subject_column: str | None = None
    domain_column: str | None = None  # per-row domain (synthetic: "synthetic:<domain>")
    prompt_template: str = "generic_classification"
    modes: tuple[str, ...] = ("sft", "rl", "pretrain")
    verified_offline: bool = False
    requires_vision: bool = False
    chunk_chars: int | None = None  # pretrain: split very long rows (tiny_shakespeare is one row per split)
    streams_by_default: bool = False  # too large to download whole: --streaming auto reads it as a stream
    local_path: str | None = None  # set by spec_for_local
    # config → field values that differ for that config; a plain dict so the spec pickles (datasets.map).
    config_overrides: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict, compare=False, hash=False, repr=False
    )

    @property
    def id(self) -> str:
        return self.local_path or self.hub_id

    def for_config(self, config: str | None) -> DatasetSpec:
        """The spec with the chosen config's differences applied (GLUE tasks differ in columns and labels)."""
        config = config or self.default_config
        if self.configs and config not in self.configs and not self.configs_open:
            raise StrataError(
                f"dataset '{self.hub_id}' has no config '{config}'; pass --dataset_config with one of "
                f"{', '.join(self.configs)}"
            )
        overrides = dict(self.config_overrides.get(config, {})) if config else {}
        return dataclasses.replace(self, **overrides) if overrides else self

    def split_for(self, purpose: str) -> str:
        if purpose not in ("train", "eval"):
            raise StrataError(f"purpose must be 'train' or 'eval', not '{purpose}'")
        return self.train_split if purpose == "train" else self.eval_split


def _spec(**kwargs: Any) -> DatasetSpec:
    return DatasetSpec(**kwargs)


S2, S3 = prompts.SENTIMENT_2, prompts.SENTIMENT_3
_FPB_CONFIGS = ("sentences_allagree", "sentences_75agree", "sentences_66agree", "sentences_50agree")
_GLUE_PAIR = {"text_column": "sentence1", "text_pair_column": "sentence2"}

_SPECS: tuple[DatasetSpec, ...] = (
    _spec(
        hub_id="stanfordnlp/imdb",
        family="classification",
        domain="imdb",
        tag="imdb-sentiment",
        description="IMDB movie reviews, binary sentiment",
        aliases=("imdb",),
        configs=("plain_text",),
        default_config="plain_text",
        configs_open=True,
        eval_split="test",
        eval_note="no validation split: evaluate on test",
        label_column="label",
        label_words=S2,
        prompt_template="movie_sentiment",
        verified_offline=True,
    ),
    _spec(
        hub_id="nyu-mll/glue",
        family="classification",
        domain="sst2",
        tag="glue-sst2",
        description="GLUE benchmark (sentence and sentence-pair classification)",
        aliases=("glue",),
        configs=("cola", "sst2", "mrpc", "qqp", "mnli", "qnli", "rte", "wnli"),
        default_config="sst2",
        eval_note="test labels are hidden (-1): evaluate on validation",
        text_column="sentence",
        label_column="label",
        label_words=S2,
        prompt_template="movie_sentiment",
        verified_offline=True,
        config_overrides={
            "sst2": {},
            "cola": {
                "domain": "cola",
                "tag": "glue-cola",
                "label_words": ("unacceptable", "acceptable"),
                "prompt_template": "acceptability",
            },
            "mrpc": {
                "domain": "mrpc",
                "tag": "glue-mrpc",
                **_GLUE_PAIR,
                "label_words": ("no", "yes"),
                "prompt_template": "paraphrase",
            },
            "qqp": {
                "domain": "qqp",
                "tag": "glue-qqp",
                "text_column": "question1",
                "text_pair_column": "question2",
                "label_words": ("no", "yes"),
                "prompt_template": "duplicate_question",
                "verified_offline": False,
            },
            "mnli": {
                "domain": "mnli",
                "tag": "glue-mnli",
                "text_column": "premise",
                "text_pair_column": "hypothesis",
                "label_words": ("yes", "maybe", "no"),
                "prompt_template": "entailment_3",
                "eval_split": "validation_matched",
                "verified_offline": False,
            },
            "qnli": {
                "domain": "qnli",
                "tag": "glue-qnli",
                "text_column": "question",
                "text_pair_column": "sentence",
                "label_words": ("yes", "no"),
                "prompt_template": "question_entailment",
                "verified_offline": False,
            },
            "rte": {
                "domain": "rte",
                "tag": "glue-rte",
                **_GLUE_PAIR,
                "label_words": ("yes", "no"),
                "prompt_template": "entailment",
            },
            "wnli": {
                "domain": "wnli",
                "tag": "glue-wnli",
                **_GLUE_PAIR,
                "label_words": ("no", "yes"),
                "prompt_template": "entailment",
            },
        },
    ),
    _spec(
        hub_id="takala/financial_phrasebank",
        family="classification",
        domain="fpb",
        tag="fpb-sentiment",
        description="Financial PhraseBank: sentences from financial news, 3-class sentiment",
        aliases=("financial_phrasebank", "fpb"),
        configs=_FPB_CONFIGS,
        default_config="sentences_allagree",
        train_split="train",
        eval_split="train",
        eval_carve=EvalCarve("train", 0.1, 0),
        eval_note="only a train split: seeded 90/10 carve",
        text_column="sentence",
        label_column="label",
        label_words=S3,
        prompt_template="financial_sentence_sentiment",
        verified_offline=True,
        config_overrides={c: {"tag": f"fpb-{c.removeprefix('sentences_')}"} for c in _FPB_CONFIGS},
    ),
    _spec(
        hub_id="zeroshot/twitter-financial-news-sentiment",
        family="classification",
        domain="twitter_fin",
        tag="twitter-fin-sentiment",
        description="Finance tweets: bearish/bullish/neutral",
        aliases=("twitter_financial_news_sentiment", "twitter_fin"),
        label_column="label",
        label_words=("negative", "positive", "neutral"),  # 0 bearish, 1 bullish, 2 neutral
        prompt_template="financial_tweet_sentiment",
        verified_offline=True,
    ),
    _spec(
        hub_id="TheFinAI/fiqa-sentiment-classification",
        family="classification",
        domain="fiqa_sa",
        tag="fiqa-sentiment",
        description="FiQA-2018 task 1 aspect sentiment; score in [-1, 1] binned to 3 classes",
        aliases=("fiqa_sentiment", "fiqa-sa"),
        eval_note="score < -0.1 negative, > 0.1 positive, else neutral",
        text_column="sentence",
        label_column="score",
        label_words=S3,
        score_thresholds=(-0.1, 0.1),
        prompt_template="financial_post_sentiment",
    ),
    _spec(
        hub_id="cornell-movie-review-data/rotten_tomatoes",
        family="classification",
        domain="rotten_tomatoes",
        tag="rotten-tomatoes-sentiment",
        description="Rotten Tomatoes movie review snippets, binary sentiment",
        aliases=("rotten_tomatoes",),
        label_column="label",
        label_words=S2,
        prompt_template="movie_sentiment",
        verified_offline=True,
    ),
    _spec(
        hub_id="cardiffnlp/tweet_eval",
        family="classification",
        domain="tweet_eval",
        tag="tweet-eval-sentiment",
        description="TweetEval sentiment (3-class); the mirror has only validation and test",
        aliases=("tweet_eval",),
        configs=("sentiment",),
        default_config="sentiment",
        eval_note="the mirror has no train split: train on validation or use the hub",
        label_column="label",
        label_words=S3,
        prompt_template="tweet_sentiment",
        verified_offline=True,
    ),
    _spec(
        hub_id="cais/mmlu",
        family="multiple_choice",
        domain="mmlu",
        tag="mmlu",
        description="MMLU: 57-subject 4-option multiple choice",
        aliases=("mmlu",),
        configs=("all",),
        default_config="all",
        configs_open=True,
        train_split="auxiliary_train",
        eval_split="test",
        eval_note="evaluate on test; dev holds 5 shots a subject",
        text_column=None,
        question_column="question",
        options_column="choices",
        answer_column="answer",
        subject_column="subject",
        label_words=prompts.LETTERS[:4],
        prompt_template="multiple_choice",
        modes=("sft", "rl"),
    ),
    _spec(
        hub_id="TIGER-Lab/MMLU-Pro",
        family="multiple_choice",
        domain="mmlu_pro",
        tag="mmlu-pro",
        description="MMLU-Pro: up to 10 options (A–J)",
        aliases=("mmlu_pro", "mmlu-pro"),
        train_split="validation",
        eval_split="test",
        eval_note="validation (70 rows) is the few-shot pool",
        text_column=None,
        question_column="question",
        options_column="options",
        answer_column="answer_index",
        subject_column="category",
        label_words=prompts.LETTERS[:10],
        prompt_template="multiple_choice",
        modes=("sft", "rl"),
    ),
    _spec(
        hub_id="LLukas22/fiqa",
        family="qa",
        domain="fiqa_qa",
        tag="fiqa-qa",
        description="FiQA financial opinion question answering",
        aliases=("fiqa",),
        eval_split="test",
        text_column=None,
        question_column="question",
        answer_column="answer",
        prompt_template="qa",
    ),
    _spec(
        hub_id="gbharti/finance-alpaca",
        family="instruction",
        domain="finance_alpaca",
        tag="finance-alpaca",
        description="Finance instructions (Alpaca format)",
        aliases=("finance_alpaca", "finance-alpaca"),
        eval_split="train",
        eval_carve=EvalCarve("train", 0.05, 0),
        eval_note="only a train split: seeded 95/5 carve",
        text_column=None,
        question_column="instruction",
        context_column="input",
        answer_column="output",
        prompt_template="instruction",
    ),
    _spec(
        hub_id="JanosAudran/financial-reports-sec",
        family="pretrain",
        domain="sec_reports",
        tag="sec-reports",
        description="Sentences of SEC 10-K filings",
        aliases=("financial_reports_sec",),
        configs=("small_lite", "small_full", "large_lite", "large_full"),
        default_config="small_lite",
        text_column="sentence",
        modes=("pretrain",),
        config_overrides={c: {"streams_by_default": True} for c in ("large_lite", "large_full")},
    ),
    _spec(
        hub_id="ashraq/financial-news-articles",
        family="pretrain",
        domain="fin_news",
        tag="financial-news",
        description="Financial news articles (title, text)",
        aliases=("financial_news_articles",),
        eval_split="train",
        eval_carve=EvalCarve("train", 0.01, 0),
        eval_note="only a train split: seeded 99/1 carve",
        text_column="text",
        modes=("pretrain",),
    ),
    _spec(
        hub_id="sujet-ai/Sujet-Finance-QA-Vision-100k",
        family="qa",
        domain="sujet_vision",
        tag="sujet-vision-qa",
        description="Financial document images with QA pairs (needs a vision-language model)",
        aliases=("sujet_finance_qa_vision",),
        eval_split="test",
        text_column=None,
        question_column="content",
        answer_column="qa_pairs",
        prompt_template="context_qa",
        modes=("sft",),
        requires_vision=True,
    ),
    _spec(
        hub_id="openai/gsm8k",
        family="math",
        domain="gsm8k",
        tag="gsm8k",
        description="Grade-school math word problems",
        aliases=("gsm8k",),
        configs=("main", "socratic"),
        default_config="main",
        eval_split="test",
        eval_note="no validation split: evaluate on test (socratic: the mirror has only test)",
        text_column=None,
        question_column="question",
        answer_column="answer",
        prompt_template="math",
        verified_offline=True,
    ),
    _spec(
        hub_id="yale-nlp/FinanceMath",
        family="math",
        domain="financemath",
        tag="financemath",
        description="Knowledge-intensive financial math (Python solutions)",
        aliases=("financemath",),
        train_split="validation",
        eval_split="validation",
        eval_note="test answers are hidden: use validation",
        text_column=None,
        question_column="question",
        context_column="tables",
        answer_column="ground_truth",
        prompt_template="finance_math",
        modes=("sft", "rl"),
    ),
    _spec(
        hub_id="deepmind/math_dataset",
        family="math",
        domain="dm_math",
        tag="dm-math",
        description="DeepMind mathematics (one config per module)",
        aliases=("math_dataset",),
        configs=("algebra__linear_1d", "arithmetic__add_or_sub", "calculus__differentiate"),
        default_config="algebra__linear_1d",
        configs_open=True,
        eval_split="test",
        text_column=None,
        question_column="question",
        answer_column="answer",
        prompt_template="math",
    ),
    _spec(
        hub_id="bigcode/bigcodebench",
        family="code",
        domain="bigcodebench",
        tag="bigcodebench",
        description="BigCodeBench: Python tasks with tests (splits are versions)",
        aliases=("bigcodebench",),
        train_split="v0.1.4",
        eval_split="v0.1.4",
        eval_note="splits are releases; there is no train split",
        text_column=None,
        question_column="instruct_prompt",
        answer_column="canonical_solution",
        prompt_template="code",
        modes=("sft", "rl"),
    ),
    _spec(
        hub_id="PleIAs/common_corpus",
        family="pretrain",
        domain="common_corpus",
        tag="common-corpus",
        description="Common Corpus: open-licence pretraining text (very large; use max_examples)",
        aliases=("common_corpus",),
        eval_split="train",
        eval_carve=EvalCarve("train", 0.001, 0),
        text_column="text",
        modes=("pretrain",),
        streams_by_default=True,
    ),
    _spec(
        hub_id="bookcorpus/bookcorpus",
        family="pretrain",
        domain="bookcorpus",
        tag="bookcorpus",
        description="BookCorpus sentences",
        aliases=("bookcorpus",),
        eval_split="train",
        eval_carve=EvalCarve("train", 0.001, 0),
        text_column="text",
        modes=("pretrain",),
        streams_by_default=True,
    ),
    _spec(
        hub_id="AdaptLLM/finance-tasks",
        family="qa",
        domain="adaptllm_fin",
        tag="adaptllm-finance",
        description="AdaptLLM finance evaluation tasks (test only; input with options)",
        aliases=("finance_tasks", "adaptllm_finance"),
        configs=("ConvFinQA", "FPB", "FiQA_SA", "Headline", "NER"),
        default_config="FPB",
        train_split="test",
        eval_split="test",
        eval_note="evaluation-only (test split)",
        text_column=None,
        question_column="input",
        options_column="options",
        answer_column="gold_index",
        prompt_template="context_qa",
        modes=("sft", "rl"),
        config_overrides={
            c: {"domain": f"adaptllm_{c.lower()}", "tag": f"adaptllm-{c.lower()}"}
            for c in ("ConvFinQA", "FPB", "FiQA_SA", "Headline", "NER")
        },
    ),
    _spec(
        hub_id="open-web-math/open-web-math",
        family="pretrain",
        domain="open_web_math",
        tag="open-web-math",
        description="Mathematical web text",
        aliases=("open_web_math",),
        eval_split="train",
        eval_carve=EvalCarve("train", 0.001, 0),
        text_column="text",
        modes=("pretrain",),
        streams_by_default=True,
    ),
    _spec(
        hub_id="Salesforce/wikitext",
        family="pretrain",
        domain="wikitext",
        tag="wikitext",
        description="WikiText (not in the mirror: use tiny_shakespeare offline)",
        aliases=("wikitext",),
        configs=("wikitext-2-raw-v1", "wikitext-103-raw-v1", "wikitext-2-v1", "wikitext-103-v1"),
        default_config="wikitext-2-raw-v1",
        text_column="text",
        modes=("pretrain",),
        config_overrides={
            "wikitext-103-raw-v1": {"tag": "wikitext-103"},
            "wikitext-103-v1": {"tag": "wikitext-103"},
        },
    ),
    _spec(
        hub_id="karpathy/tiny_shakespeare",
        family="pretrain",
        domain="tiny_shakespeare",
        tag="tiny-shakespeare",
        description="Tiny Shakespeare (1.1M characters; one row per split, chunked)",
        aliases=("tiny_shakespeare",),
        text_column="text",
        modes=("pretrain",),
        chunk_chars=1024,
        verified_offline=True,
    ),
    _spec(
        hub_id=synthetic.SYNTHETIC_ID,
        family="classification",
        domain="synthetic",
        tag="synthetic-strata",
        description="Built-in seeded multi-domain 3-class sentiment corpus (no files needed)",
        aliases=("synthetic", "synthetic-strata"),
        label_column="label",
        label_words=synthetic.LABEL_WORDS,
        domain_column="domain",
        prompt_template="text_sentiment_3",
        verified_offline=True,
    ),
)

REGISTRY: dict[str, DatasetSpec] = {spec.hub_id: spec for spec in _SPECS}


def alias_table() -> dict[str, str]:
    """Lower-cased alias (and hub id, and the name after the owner) → hub id."""
    table: dict[str, str] = {}
    for spec in _SPECS:
        table[spec.hub_id.lower()] = spec.hub_id
        table.setdefault(spec.hub_id.split("/", 1)[-1].lower(), spec.hub_id)
        for alias in spec.aliases:
            table[alias.lower()] = spec.hub_id
    return table


def get_spec(id_or_alias: str) -> DatasetSpec:
    """The spec for a hub id or alias; unknown names get close matches and the local-file route."""
    hub_id = alias_table().get(id_or_alias.strip().lower())
    if hub_id:
        return REGISTRY[hub_id]
    close = difflib.get_close_matches(id_or_alias.lower(), list(alias_table()), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise StrataError(
        f"unknown dataset '{id_or_alias}'; {hint}see `strata datasets`, or pass a local .jsonl/.csv/.parquet file "
        "with --text_column and --label_column"
    )


def check_model_supports(spec: DatasetSpec, model_config: Any) -> None:
    """Fail fast when an image dataset meets a text-only model (before any download or training)."""
    if not spec.requires_vision:
        return
    has_vision = any(
        getattr(model_config, attr, None) is not None
        for attr in ("vision_config", "vision_tower", "image_token_id")
    )
    if not has_vision:
        model_type = getattr(model_config, "model_type", type(model_config).__name__)
        raise StrataError(
            f"dataset '{spec.hub_id}' needs a vision-language model (it has images), but '{model_type}' is text-only; "
            "pick a model with a vision_config (e.g. a Qwen2-VL or LLaVA checkpoint)"
        )


def format_table() -> str:
    """The table `strata datasets` prints: one line per dataset."""
    header = ("dataset", "aliases", "family", "configs", "train/eval", "modes", "offline")
    rows = [header]
    for spec in _SPECS:
        configs = ",".join(spec.configs) if spec.configs else "-"
        if spec.configs_open:
            configs += ",..."
        rows.append(
            (
                spec.hub_id,
                ",".join(spec.aliases) or "-",
                spec.family + (" (vision)" if spec.requires_vision else ""),
                configs,
                f"{spec.train_split}/{spec.eval_split}" + ("*" if spec.eval_carve else ""),
                ",".join(spec.modes),
                "yes" if spec.verified_offline else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.append("* seeded carve of the only split (see docs/datasets.md); offline=yes: in the shared mirror")
    return "\n".join(lines)


def describe(dataset_id: str, config: str | None = None, mirror: str | None = None) -> str:
    """What `strata datasets show ID --dataset_config C` prints: the spec and one real formatted example."""
    from strata.data.formatting import load_formatted  # lazy: formatting imports the registry

    spec = get_spec(dataset_id).for_config(config)
    config = config or spec.default_config
    lines = [
        f"dataset:  {spec.hub_id}" + (f" (config {config})" if config else ""),
        f"about:    {spec.description}",
        f"aliases:  {', '.join(spec.aliases) or '-'}",
        f"family:   {spec.family}    modes: {', '.join(spec.modes)}    tag: {spec.tag}    domain: {spec.domain}",
        f"configs:  {', '.join(spec.configs) or '-'}"
        + (" (and others on the hub)" if spec.configs_open else ""),
        f"splits:   train={spec.train_split} eval={spec.eval_split}"
        + (f" ({spec.eval_carve.describe()})" if spec.eval_carve else "")
        + (f"; {spec.eval_note}" if spec.eval_note else ""),
    ]
    columns = [
        c
        for c in (
            spec.text_column,
            spec.text_pair_column,
            spec.question_column,
            spec.context_column,
            spec.options_column,
            spec.label_column,
            spec.answer_column,
        )
        if c
    ]
    lines.append(f"columns:  {', '.join(columns)}")
    if spec.label_words:
        lines.append("labels:   " + ", ".join(f"{i}={w}" for i, w in enumerate(spec.label_words)))
    lines.append(
        f"offline:  {'verified in the mirror' if spec.verified_offline else 'not verified (hub card)'}"
        + ("; needs a vision-language model" if spec.requires_vision else "")
    )
    try:
        example = load_formatted(
            spec.hub_id, config, mode=spec.modes[0], mirror=mirror, purpose="eval", max_examples=1
        ).dataset[0]
    except StrataError as err:
        lines.append(f"example:  not available offline ({err})")
    else:
        lines.append("example:")
        lines.extend(f"  {key}: {value!r}" for key, value in example.items())
    return "\n".join(lines)
