"""Prompt templates and label words.

Every dataset is turned into a prompt and a completion. The completion always starts with a space
(" positive", " A", " 42") so that it tokenizes as a separate word after the prompt's last token, and the
evaluation scores the same label words the training saw. Templates are plain ``str.format`` strings; the
fields they may use are ``{text}``, ``{text2}``, ``{question}``, ``{options}``, ``{subject}``,
``{instruction}``, ``{input}`` and ``{choices}`` (the label words, quoted).
"""

from __future__ import annotations

import string

from strata.errors import StrataError

# Harmonised label words: the word carries the meaning, the id follows each hub dataset.
SENTIMENT_2 = ("negative", "positive")
SENTIMENT_3 = ("negative", "neutral", "positive")
LETTERS = tuple(string.ascii_uppercase)

TEMPLATES: dict[str, str] = {
    # The movie template's wording is fixed by the issue (positive named before negative).
    "movie_sentiment": (
        "Classify the sentiment of this movie review as either 'positive' or 'negative'.\n\nReview: {text}\nSentiment:"
    ),
    "tweet_sentiment": (
        "Classify the sentiment of this tweet as 'negative', 'neutral' or 'positive'.\n\nTweet: {text}\nSentiment:"
    ),
    "financial_sentence_sentiment": (
        "Classify the sentiment of this sentence from financial news as 'negative', 'neutral' or 'positive'."
        "\n\nSentence: {text}\nSentiment:"
    ),
    "financial_tweet_sentiment": (
        "Classify the sentiment of this financial news tweet as 'negative', 'neutral' or 'positive'."
        "\n\nTweet: {text}\nSentiment:"
    ),
    # FiQA task 1 scores a (sentence, target) pair: the same sentence can be positive for one company and
    # negative for another, so the target is part of the question.
    "financial_target_sentiment": (
        "Classify the sentiment of this financial text towards the target as 'negative', 'neutral' or 'positive'."
        "\n\nText: {text}\nTarget: {text2}\nSentiment:"
    ),
    "financial_post_sentiment": (
        "Classify the sentiment of this financial post as 'negative', 'neutral' or 'positive'."
        "\n\nPost: {text}\nSentiment:"
    ),
    "text_sentiment_3": (
        "Classify the sentiment of this text as 'negative', 'neutral' or 'positive'.\n\nText: {text}\nSentiment:"
    ),
    "acceptability": (
        "Is this sentence grammatically acceptable? Answer 'acceptable' or 'unacceptable'."
        "\n\nSentence: {text}\nAnswer:"
    ),
    "paraphrase": (
        "Do these two sentences mean the same thing? Answer 'yes' or 'no'."
        "\n\nSentence 1: {text}\nSentence 2: {text2}\nAnswer:"
    ),
    "duplicate_question": (
        "Do these two questions ask the same thing? Answer 'yes' or 'no'."
        "\n\nQuestion 1: {text}\nQuestion 2: {text2}\nAnswer:"
    ),
    "entailment": (
        "Does the first sentence imply the second? Answer 'yes' or 'no'."
        "\n\nSentence 1: {text}\nSentence 2: {text2}\nAnswer:"
    ),
    "entailment_3": (
        "Does the premise imply the hypothesis? Answer 'yes', 'maybe' or 'no'."
        "\n\nPremise: {text}\nHypothesis: {text2}\nAnswer:"
    ),
    "question_entailment": (
        "Does the sentence answer the question? Answer 'yes' or 'no'."
        "\n\nQuestion: {text}\nSentence: {text2}\nAnswer:"
    ),
    # Used for local files when no template is given: it names the label words so any model can read it.
    "generic_classification": "Classify the following text as {choices}.\n\nText: {text}\nLabel:",
    "multiple_choice": (
        "The following is a multiple choice question{subject}. Answer with the letter of the correct option."
        "\n\n{question}\n{options}\nAnswer:"
    ),
    "math": "Solve the problem step by step, then give the final answer.\n\nQuestion: {question}\nAnswer:",
    "finance_math": (
        "Solve this financial problem. Write a Python function `solution()` that returns the numeric answer, "
        "then give the answer on a last line as '#### <number>'.\n\nQuestion: {question}\nSolution:\n"
    ),
    "qa": "Answer the question.\n\nQuestion: {question}\nAnswer:",
    "context_qa": "{question}\nAnswer:",
    "context_question": "Answer the question from the context.\n\nContext: {input}\n\nQuestion: {question}\nAnswer:",
    "instruction": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "instruction_no_input": "### Instruction:\n{instruction}\n\n### Response:\n",
    "code": "{question}\n",
}

TEMPLATE_FIELDS = frozenset(
    {"text", "text2", "question", "options", "subject", "instruction", "input", "choices"}
)


def quote_choices(words: list[str] | tuple[str, ...]) -> str:
    """Render label words as "'a', 'b' or 'c'" for templates that name the choices."""
    quoted = [f"'{w}'" for w in words]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def letter_options(options: list[str]) -> str:
    """Lay out multiple-choice options one per line as 'A. ...'; the completion is then ' A'."""
    if len(options) > len(LETTERS):
        raise StrataError(f"a multiple-choice question has {len(options)} options; at most 26 are supported")
    return "\n".join(f"{LETTERS[i]}. {str(opt).strip()}" for i, opt in enumerate(options))


def completion_for(word: str) -> str:
    """A completion is the answer with one leading space, so it is its own token after 'Sentiment:'."""
    return " " + word.strip()


def template_text(template: str) -> str:
    """Resolve a template name to its text; a string with ``{`` fields is taken as a literal template."""
    if template in TEMPLATES:
        return TEMPLATES[template]
    if "{" in template:
        return template
    if any(c.isspace() for c in template) or ":" in template:  # a literal template that forgot its field
        raise StrataError(f"prompt template {template!r} has no {{text}} field, so the example would never reach "
                          "the prompt; add {text} where the input goes")
    known = ", ".join(sorted(TEMPLATES))
    raise StrataError(
        f"unknown prompt template '{template}'; use one of {known} or a string with {{text}} in it"
    )


def check_template(template: str) -> str:
    """Validate a user template early, so a typo fails before any data is loaded."""
    text = template_text(template)
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name}
    except ValueError as err:
        raise StrataError(
            f"prompt template {text!r} is not a valid format string ({err}); escape braces as {{{{ }}}}"
        ) from err
    unknown = fields - TEMPLATE_FIELDS
    if unknown:
        raise StrataError(
            f"prompt template uses unknown field(s) {sorted(unknown)}; allowed: {sorted(TEMPLATE_FIELDS)}"
        )
    if not fields & {"text", "question", "instruction"}:
        raise StrataError(
            "prompt template must contain {text} (where the example goes), e.g. 'Review: {text}\\nSentiment:'"
        )
    return text


def render(template: str, **fields: str) -> str:
    """Fill a template; fields it doesn't use are ignored, so one call site serves every template."""
    return template_text(template).format_map(_Defaults(fields))


class _Defaults(dict):
    """Missing fields render as empty strings instead of raising KeyError (e.g. no {subject})."""

    def __missing__(self, key: str) -> str:
        return ""
