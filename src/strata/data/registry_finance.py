"""The registry's finance entries (sentiment, QA, instructions, filings, financial math, AdaptLLM tasks).

Schemas of the entries not in the mirror come from the public cards and loaders named in ``schema_source``
(as read for issues 12 and 17); ``tests/fixtures/datasets`` holds a few rows of each in that schema.
"""

from __future__ import annotations

from strata.data import prompts
from strata.data.registry_specs import MIRROR, SCRIPT_REASON
from strata.data.spec import DatasetSpec, EvalCarve

S3 = prompts.SENTIMENT_3
_FPB_CONFIGS = ("sentences_allagree", "sentences_75agree", "sentences_66agree", "sentences_50agree")
_ADAPT_CONFIGS = ("ConvFinQA", "FPB", "FiQA_SA", "Headline", "NER")
_ADAPT_LABEL_ONLY = ("ConvFinQA", "NER")  # id, input, label: no options/gold_index
_SEC_CONFIGS = ("small_lite", "small_full", "large_lite", "large_full")


def _adapt_override(config: str) -> dict:
    values: dict = {"domain": f"adaptllm_{config.lower()}", "tag": f"adaptllm-{config.lower()}"}
    if config in _ADAPT_LABEL_ONLY:
        values.update(options_column=None, answer_column="label",
                      schema_source=f"AdaptLLM/finance-tasks {config} test split (id, input, label; issue 17)")
    return values


FINANCE_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
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
        status="verified_offline",
        schema_source=MIRROR,
        config_overrides={c: {"tag": f"fpb-{c.removeprefix('sentences_')}"} for c in _FPB_CONFIGS},
    ),
    DatasetSpec(
        hub_id="zeroshot/twitter-financial-news-sentiment",
        family="classification",
        domain="twitter_fin",
        tag="twitter-fin-sentiment",
        description="Finance tweets: bearish/bullish/neutral",
        aliases=("twitter_financial_news_sentiment", "twitter_fin"),
        label_column="label",
        label_words=("negative", "positive", "neutral"),  # 0 bearish, 1 bullish, 2 neutral
        prompt_template="financial_tweet_sentiment",
        status="verified_offline",
        schema_source=MIRROR,
    ),
    DatasetSpec(
        hub_id="TheFinAI/fiqa-sentiment-classification",
        family="classification",
        domain="fiqa_sa",
        tag="fiqa-sentiment",
        description="FiQA-2018 task 1: sentiment of a sentence towards a target; score in [-1, 1] binned to 3 classes",
        aliases=("fiqa_sentiment", "fiqa-sa"),
        eval_split="valid",
        eval_note="splits train 822 / valid 117 / test 234; score < -0.1 negative, > 0.1 positive, else neutral; "
        "the score belongs to the (sentence, target) pair, so the prompt names the target",
        text_column="sentence",
        text_pair_column="target",
        label_column="score",
        label_words=S3,
        score_thresholds=(-0.1, 0.1),
        prompt_template="financial_target_sentiment",
        schema_source="huggingface.co/datasets/TheFinAI/fiqa-sentiment-classification (card: _id, sentence, "
        "target, aspect, score, type)",
    ),
    DatasetSpec(
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
        schema_source="huggingface.co/datasets/LLukas22/fiqa (card: question, answer; train/test)",
    ),
    DatasetSpec(
        hub_id="virattt/financial-qa-10K",
        family="qa",
        domain="financial_qa_10k",
        tag="financial-qa-10k",
        description="Questions on 10-K filings answered from a context passage (7,000 rows)",
        aliases=("financial_qa_10k", "financial-qa-10k"),
        eval_split="train",
        eval_carve=EvalCarve("train", 0.1, 0),
        eval_note="only a train split (7,000): seeded 90/10 carve; rewarded by token F1",
        text_column=None,
        question_column="question",
        context_column="context",
        answer_column="answer",
        prompt_template="context_question",
        schema_source="huggingface.co/datasets/virattt/financial-qa-10K (card: question, answer, context, "
        "ticker, filing; issue 12)",
    ),
    DatasetSpec(
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
        schema_source="huggingface.co/datasets/gbharti/finance-alpaca (card: instruction, input, output, text)",
    ),
    DatasetSpec(
        hub_id="JanosAudran/financial-reports-sec",
        family="pretrain",
        domain="sec_reports",
        tag="sec-reports",
        description="Sentences of SEC 10-K filings",
        aliases=("financial_reports_sec",),
        configs=_SEC_CONFIGS,
        default_config="small_lite",
        text_column="sentence",
        modes=("pretrain",),
        status="unsupported",
        status_reason=SCRIPT_REASON.format(script="financial-reports-sec.py"),
        loading_script=True,
        schema_source="huggingface.co/datasets/JanosAudran/financial-reports-sec: financial-reports-sec.py "
        "(loader: sentence and filing metadata)",
        config_overrides={c: {"streams_by_default": True} for c in _SEC_CONFIGS if c.startswith("large")},
    ),
    DatasetSpec(
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
        schema_source="huggingface.co/datasets/ashraq/financial-news-articles (card: title, text, url)",
    ),
    DatasetSpec(
        hub_id="sujet-ai/Sujet-Finance-QA-Vision-100k",
        family="qa",
        domain="sujet_vision",
        tag="sujet-vision-qa",
        description="Financial document images (9.8k), one row per image with a qa_pairs string of several Q/A "
        "pairs: one example per pair, the image through a vision-language model's processor",
        aliases=("sujet_finance_qa_vision",),
        eval_split="test",
        eval_note="splits train / test; one example per Q/A pair; evaluated by generation (exact match, token F1)",
        text_column=None,
        answer_column="qa_pairs",
        prompt_template="<image>\nQuestion: {question}\nAnswer:",
        modes=("sft",),
        requires_vision=True,
        schema_source="huggingface.co/datasets/sujet-ai/Sujet-Finance-QA-Vision-100k (card: doc_id, content, image, "
        "qa_pairs; qa_pairs a string of a list of {question, answer} objects, read by its users with eval(); "
        "issue 17)",
    ),
    DatasetSpec(
        hub_id="yale-nlp/FinanceMath",
        family="math",
        domain="financemath",
        tag="financemath",
        description="Knowledge-intensive financial math (Python solutions; gated on the hub)",
        aliases=("financemath",),
        train_split="validation",
        eval_split="validation",
        eval_carve=EvalCarve("validation", 0.2, 0),
        eval_note="only validation (200) has answers (test's 1,000 are hidden): seeded 80/20 carve; the "
        "completion is python_solution then '#### ground_truth'",
        text_column=None,
        question_column="question",
        context_column="tables",
        completion_column="python_solution",
        answer_column="ground_truth",
        prompt_template="finance_math",
        modes=("sft", "rl"),
        gated=True,
        schema_source="huggingface.co/datasets/yale-nlp/FinanceMath (card: question_id, question, tables, "
        "python_solution, ground_truth, topic)",
    ),
    DatasetSpec(
        hub_id="AdaptLLM/finance-tasks",
        family="qa",
        domain="adaptllm_fin",
        tag="adaptllm-finance",
        description="AdaptLLM finance evaluation tasks (one test split per task)",
        aliases=("finance_tasks", "adaptllm_finance"),
        configs=_ADAPT_CONFIGS,
        default_config="FPB",
        train_split="test",
        eval_split="test",
        eval_carve=EvalCarve("test", 0.1, 0),
        eval_note="evaluation tasks with only a test split: seeded 90/10 carve",
        text_column=None,
        question_column="input",
        options_column="options",
        answer_column="gold_index",
        prompt_template="context_qa",
        modes=("sft", "rl"),
        schema_source="AdaptLLM/finance-tasks <config>/test.json (a JSON array; FPB, FiQA_SA, Headline: id, input, "
        "options, gold_index, as loaders of those files read them; input is a few-shot prompt, the question last; "
        "issue 17)",
        config_overrides={c: _adapt_override(c) for c in _ADAPT_CONFIGS},
    ),
)
