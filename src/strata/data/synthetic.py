"""``strata/synthetic-strata``: a seeded multi-domain 3-class sentiment corpus built in memory.

Why it exists: it needs no files, so tests, CI and quick experiments work anywhere, and its structure is
known. Each domain (a "stratum") has its own subjects and its own sentiment words, so a model must learn
per-domain cues (the "planted strata"); neutral filler, neutral clauses and occasional negation
("was not great" → negative) keep it from being a keyword lookup. Texts are short (about 20–120
characters, 55 on average) because the default model is a tiny byte-level decoder.
"""

from __future__ import annotations

import random
from functools import lru_cache

import datasets

SYNTHETIC_ID = "strata/synthetic-strata"
LABEL_WORDS = ("negative", "neutral", "positive")
SPLIT_SIZES = {"train": 4000, "validation": 400, "test": 400}
NEGATION_SHARE = 0.35  # share of negative examples written as a negated positive cue
OPENER_RATE = 0.6
TAIL_RATE = 0.7

# domain → subjects, and negative / neutral / positive cues. Positive cues starting with a verb in
# _NEGATIONS can be negated, which turns them into negative examples.
DOMAINS: dict[str, dict[str, tuple[str, ...]]] = {
    "movies": {
        "subjects": ("The film", "This movie", "The sequel", "The script", "The lead actor", "The ending",
                     "The soundtrack", "The director's new picture"),
        "negative": ("was a dull mess", "felt tedious", "was painfully boring", "was a clumsy failure",
                     "dragged on forever", "was badly acted"),
        "neutral": ("runs about two hours", "was shot in Canada", "opens in cinemas on Friday", "is rated PG-13",
                    "was filmed last spring", "is based on a novel"),
        "positive": ("was a masterpiece", "was dazzling", "was wonderfully moving", "was a delight",
                     "is gripping from start to finish", "was beautifully acted"),
        "tails": ("at the festival", "on the big screen", "for a summer release", "in the second half"),
    },
    "finance": {
        "subjects": ("The stock", "Quarterly revenue", "The bank", "Shares of the firm", "The fund", "Profit",
                     "The bond market", "The retailer's earnings"),
        "negative": ("plunged after the report", "missed forecasts", "slumped sharply", "fell to a record low",
                     "was hit by heavy losses", "was downgraded by analysts"),
        "neutral": ("was reported on Monday", "is listed in Frankfurt", "was unchanged at noon", "is due in May",
                    "is reviewed every quarter", "was published in euros"),
        "positive": ("surged after the report", "beat estimates", "rallied strongly", "rose to a record high",
                     "was upgraded by analysts", "is growing fast"),
        "tails": ("in early trading", "this quarter", "according to the filing", "on the Nasdaq"),
    },
    "restaurants": {
        "subjects": ("The pasta", "Our waiter", "The dessert", "The soup", "This bistro", "The brunch menu",
                     "The corner cafe", "The house wine"),
        "negative": ("was bland and cold", "was rude to us", "tasted stale", "was overpriced and greasy",
                     "made us wait an hour", "was a soggy letdown"),
        "neutral": ("is served until ten", "comes with bread", "is near the station", "takes card payments",
                    "opens at noon", "changes every season"),
        "positive": ("was delicious", "was warm and friendly", "tasted amazing", "was fresh and tasty",
                     "is worth every penny", "was perfectly cooked"),
        "tails": ("on Saturday night", "for our anniversary", "at lunch", "downtown"),
    },
    "electronics": {
        "subjects": ("The laptop", "This phone", "The battery", "The charger", "The headset", "The screen",
                     "The new tablet", "The smart speaker"),
        "negative": ("keeps crashing", "overheats quickly", "broke after a week", "is slow and buggy",
                     "died on day two", "is a waste of money"),
        "neutral": ("ships in a grey box", "uses a USB-C port", "weighs about a kilo", "has a six inch size",
                    "comes in two colours", "runs the latest update"),
        "positive": ("is fast and reliable", "works flawlessly", "lasts all day", "is superb value",
                     "is a joy to use", "is crisp and bright"),
        "tails": ("after the update", "out of the box", "for everyday use", "since I bought it"),
    },
    "sports": {
        "subjects": ("The team", "Our striker", "The defence", "The coach", "The home side", "The keeper",
                     "The young winger", "The captain"),
        "negative": ("suffered a humiliating defeat", "played terribly", "collapsed late on", "was awful",
                     "was booed off the pitch", "threw away the lead"),
        "neutral": ("plays again on Sunday", "trained in the morning", "wore the away kit", "travelled by bus",
                    "signed a two year deal", "spoke to the press"),
        "positive": ("earned a thrilling win", "played brilliantly", "dominated the match", "was superb",
                     "is in fantastic form", "was outstanding"),
        "tails": ("in the derby", "on Saturday", "in front of a full stadium", "this season"),
    },
}
DOMAIN_NAMES = tuple(DOMAINS)
# Positive cues negated become negative ("was not a masterpiece"): the verb phrase is rewritten.
_NEGATIONS = (("was ", "was not "), ("is ", "is not "), ("earned ", "never earned "), ("beat ", "did not beat "),
              ("tasted ", "never tasted "), ("works ", "hardly works "), ("played ", "never played "))
OPENERS = ("Honestly", "As expected", "This week", "According to locals", "In my view", "Overall",
           "Reportedly", "For what it's worth", "Last time I checked", "To be fair")


def _negate(phrase: str) -> str | None:
    for prefix, negated in _NEGATIONS:
        if phrase.startswith(prefix):
            return negated + phrase[len(prefix) :]
    return None


def _example(rng: random.Random) -> dict:
    stratum = rng.randrange(len(DOMAIN_NAMES))
    domain = DOMAIN_NAMES[stratum]
    vocab = DOMAINS[domain]
    label = rng.randrange(len(LABEL_WORDS))
    subject = rng.choice(vocab["subjects"])
    cue = rng.choice(vocab[LABEL_WORDS[label]])
    if label == 0 and rng.random() < NEGATION_SHARE:
        # Some negatives are negated positives, so "masterpiece" alone doesn't decide the label.
        cue = _negate(rng.choice(vocab["positive"])) or cue
    clause = f"{subject} {cue}"
    if rng.random() < TAIL_RATE:
        if label != 1 and rng.random() < 0.5:
            # A neutral fact next to the sentiment: the label follows the sentiment clause.
            clause += f" and {rng.choice(vocab['neutral'])}"
        else:
            clause += f" {rng.choice(vocab['tails'])}"
    if rng.random() < OPENER_RATE:
        clause = f"{rng.choice(OPENERS)}, {clause[0].lower()}{clause[1:]}"
    return {"text": clause + ".", "label": label, "domain": domain, "stratum": stratum}


FEATURES = datasets.Features(
    {
        "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(LABEL_WORDS)),
        "domain": datasets.Value("string"),
        "stratum": datasets.Value("int64"),
    }
)


@lru_cache(maxsize=4)
def build_splits(seed: int = 0) -> datasets.DatasetDict:
    """All splits from one seeded stream; validation and test never repeat a train text (no leakage)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {}
    for split, size in SPLIT_SIZES.items():
        rows: list[dict] = []
        while len(rows) < size:
            row = _example(rng)
            if split != "train" and row["text"] in seen:
                continue
            rows.append(row)
        seen.update(row["text"] for row in rows)
        splits[split] = datasets.Dataset.from_list(rows, features=FEATURES)
    return datasets.DatasetDict(splits)
