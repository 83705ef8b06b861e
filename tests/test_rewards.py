"""Built-in GRPO rewards: each function on hand-made and real (GSM8K) cases, and reward resolution."""

from __future__ import annotations

import json

import pytest

from strata.errors import StrataError
from strata.training import rewards as R
from strata.training.rewards import (
    REWARD_FUNCS,
    classification,
    code,
    completion_text,
    default_rewards_for_family,
    format_reward,
    make_reward,
    math_answer,
    multiple_choice,
    resolve_rewards,
    token_f1_reward,
)

LABELS = ["positive", "negative"]


def call(func, completions, **columns):
    """Call a reward the way TRL does: keyword arguments, one column value per completion."""
    prompts = columns.pop("prompts", ["p"] * len(completions))
    return func(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None, **columns)


def test_registry_names_match_logged_names():
    from trl.trainer.utils import get_callable_name

    assert set(REWARD_FUNCS) == {
        "math_answer",
        "format",
        "classification",
        "multiple_choice",
        "code",
        "token_f1",
    }
    for name in REWARD_FUNCS:
        assert get_callable_name(make_reward(name, label_words=LABELS)) == name


def test_completion_text_handles_conversational():
    assert completion_text("x") == "x"
    assert completion_text([{"role": "assistant", "content": "hi"}]) == "hi"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "a"}]}]) == "a"
    assert completion_text(None) == ""


# ----------------------------------------------------------------------------- math


def _gsm8k_rows(hub_mirror, n):
    path = hub_mirror / "datasets/openai/gsm8k/main/train.jsonl"
    if not path.is_file():
        pytest.skip("GSM8K is not in the mirror")
    with path.open() as f:
        return [json.loads(next(f)) for _ in range(n)]


def test_math_answer_real_gsm8k(hub_mirror):
    rows = _gsm8k_rows(hub_mirror, 50)
    refs = [r["answer"] for r in rows]
    assert call(math_answer, refs, reference=refs) == [1.0] * len(refs)
    assert call(format_reward, refs, reference=refs) == [1.0] * len(refs)
    wrong = []
    for ref in refs:
        gold = float(ref.rsplit("####", 1)[1].strip().replace(",", ""))
        wrong.append(f"The answer is {gold + 1:g}.\n#### {gold + 1:g}")
    assert call(math_answer, wrong, reference=refs) == [0.0] * len(refs)
    assert call(format_reward, wrong, reference=refs) == [1.0] * len(refs)


def test_math_answer_variants():
    refs = ["Work...\n#### 1234"] * 6
    completions = [
        "So the total is 1,234 dollars.",
        "#### $1,234",
        "1233.99999 rounds to it",
        "it is 1235",
        "no idea",
        [{"role": "assistant", "content": "#### 1234"}],
    ]
    assert call(math_answer, completions, reference=refs) == [1.0, 1.0, 1.0, 0.0, 0.0, 1.0]
    assert call(format_reward, completions) == [0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_math_answer_skips_rows_without_numeric_reference():
    assert call(math_answer, ["7", "7"], reference=["positive", None]) == [None, None]
    assert call(math_answer, ["7"]) == [None]


# ----------------------------------------------------------------------------- classification


def test_classification_reward_cases():
    func = make_reward("classification", label_words=LABELS)
    completions = [" positive", " negative", " banana", "Positive!", "**POSITIVE**", "", "positively good"]
    out = call(func, completions, label=[0] * 7, reference=["positive"] * 7)
    assert out == [1.0, 0.0, -0.5, 1.0, 1.0, -0.5, -0.5]


def test_classification_gold_from_reference_or_row_label_words():
    func = make_reward("classification", label_words=LABELS)
    assert call(func, ["negative"], reference=["negative"], label=[None]) == [1.0]
    # A label_words column wins over the closure (mixtures of classification datasets).
    out = call(
        classification, ["entailment", "neutral"], label=[0, 0], label_words=[["entailment", "neutral"]] * 2
    )
    assert out == [1.0, 0.0]
    # Nothing to judge against: None (TRL leaves it out of the means).
    assert call(classification, ["positive"], label=[0]) == [None]


def test_classification_needs_label_words():
    with pytest.raises(StrataError, match="label words"):
        make_reward("classification")


# ----------------------------------------------------------------------------- multiple choice


def test_multiple_choice():
    completions = ["B", "(B) because", "The answer is B.", "Answer: C", "A. no", "maybe", "b) lower"]
    out = call(multiple_choice, completions, reference=["B"] * 7)
    assert out == [1.0, 1.0, 1.0, 0.0, 0.0, -0.5, 1.0]
    assert call(multiple_choice, ["C"], label=[2]) == [1.0]
    assert call(multiple_choice, ["C"], reference=["Answer: (D) Paris"]) == [0.0]
    assert call(multiple_choice, ["A"], reference=["positive"], label=[0]) == [None]  # not a choice row


# ----------------------------------------------------------------------------- code


VALID = "import math\n\ndef task_func(x):\n    return math.sqrt(x)\n"


def test_code_reward_static():
    completions = [
        VALID,
        "def task_func(x)\n    return x",  # syntax error
        "def other(x):\n    return x\n",  # wrong function
        "```python\n" + VALID + "```\nThis computes a root.",
        "x = 1",
    ]
    assert call(code, completions, reference=[""] * 5) == [1.0, 0.0, 0.0, 1.0, 0.0]


def test_code_entry_point_sources():
    assert call(code, ["def solve():\n    pass"], entry_point=["solve"]) == [1.0]
    assert call(code, ["def solve():\n    pass"], reference=["def solve():\n    return 1"]) == [1.0]
    assert call(code, ["def solve():\n    pass"], reference=[""]) == [0.0]  # default name task_func
    # BigCodeBench-style: the prompt ends with the header, the completion is the body.
    prompt = "Complete the function.\nimport os\n\ndef count_files(path):\n    '''Count.'''\n"
    assert call(code, ["    return len(os.listdir(path))\n"], prompts=[prompt]) == [1.0]


def test_code_is_not_executed_by_default(tmp_path):
    marker = tmp_path / "ran"
    source = f"open({str(marker)!r}, 'w').write('x')\n\ndef task_func():\n    pass\n"
    assert call(code, [source]) == [1.0]
    assert not marker.exists()


def test_code_execution_in_subprocess_when_enabled(tmp_path):
    func = make_reward("code", code_execution=True)
    ok = "def task_func(x):\n    return x + 1\n"
    crash = "def task_func(x):\n    return x\nraise SystemExit(3)\n"
    net = "import socket\nsocket.create_connection(('example.com', 80))\ndef task_func():\n    pass\n"
    tests = ["assert task_func(1) == 2", "", ""]
    assert call(func, [ok, crash, net], test=tests) == [1.0, 0.0, 0.0]
    assert call(func, [ok], test=["assert task_func(1) == 3"]) == [0.0]


def test_code_execution_timeout(monkeypatch):
    monkeypatch.setattr(R, "CODE_TIMEOUT_S", 1.0)
    assert not R.run_code_sandboxed("while True:\n    pass\n", timeout_s=1.0)


# ----------------------------------------------------------------------------- qa / instruction


def test_token_f1_reward():
    out = call(token_f1_reward, ["The cat sat.", "dog", "cat on mat"], reference=["the cat sat"] * 3)
    assert out[0] == 1.0 and out[1] == 0.0 and 0.0 < out[2] < 1.0
    assert call(token_f1_reward, ["x"]) == [None]


# ----------------------------------------------------------------------------- resolution


def test_default_rewards_for_family():
    assert default_rewards_for_family("math") == ["math_answer", "format"]
    assert default_rewards_for_family("classification") == ["classification"]
    assert default_rewards_for_family("qa") == ["token_f1"]
    assert default_rewards_for_family("instruction") == ["token_f1"]
    assert default_rewards_for_family("code") == ["code"]
    assert default_rewards_for_family("pretrain") == []


def test_resolve_rewards_choices_and_weights():
    funcs, weights = resolve_rewards(["math_answer,format"], [1.0, 0.2], "math", None)
    assert [f.__name__ for f in funcs] == ["math_answer", "format"] and weights == [1.0, 0.2]
    funcs, weights = resolve_rewards(None, None, "math", None)
    assert len(funcs) == 2 and weights == [1.0, 0.2]
    funcs, weights = resolve_rewards(None, None, "classification", LABELS)
    assert call(funcs[0], ["positive"], label=[0]) == [1.0] and weights == [1.0]
    funcs, weights = resolve_rewards(None, None, "pretrain", None, has_reward_model=True)
    assert funcs == [] and weights == [1.0]
    funcs, weights = resolve_rewards(["token_f1"], [0.5, 2.0], "qa", None, has_reward_model=True)
    assert len(funcs) == 1 and weights == [0.5, 2.0]


def test_resolve_rewards_errors():
    with pytest.raises(StrataError, match="math_answer, format, classification"):
        resolve_rewards(None, None, "pretrain", None)
    with pytest.raises(StrataError, match="unknown reward"):
        resolve_rewards(["accuracy"], None, "math", None)
    with pytest.raises(StrataError, match="2 rewards"):
        resolve_rewards(["math_answer", "format"], [1.0], "math", None)
    with pytest.raises(StrataError, match="twice"):
        resolve_rewards(["format", "format"], None, "math", None)
    with pytest.raises(StrataError, match="label words"):
        resolve_rewards(None, None, "classification", None)
