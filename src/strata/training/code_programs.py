"""What a code completion is, as a program: its candidate sources, the function it must define, the test run.

Pure text and ``ast`` work (nothing is executed here); the ``code`` reward in ``rewards`` runs the chosen program
in the sandbox. BigCodeBench's ``code_prompt`` (imports + signature) completes a completion that is only the body.
"""

from __future__ import annotations

import ast
import re
from typing import Any

DEFAULT_ENTRY_POINT = "task_func"  # BigCodeBench's convention

_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_DEF_NAME = re.compile(r"^\s*(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(", re.MULTILINE)
_CODE_START = re.compile(r"^(?:import |from \S+ import |def |async def |class |@)", re.MULTILINE)


def entry_point_name(entry_point: Any, reference: Any, prompt: str) -> str:
    """The function the completion must define: the entry_point column, a def in the reference, the prompt's last def."""
    if entry_point:
        return str(entry_point)
    in_reference = _DEF_NAME.findall(str(reference or ""))
    if in_reference:
        return in_reference[0]
    in_prompt = _DEF_NAME.findall(prompt)
    return in_prompt[-1] if in_prompt else DEFAULT_ENTRY_POINT


def code_candidates(completion: str, prompt: str) -> list[str]:
    """Sources to try: fenced blocks, the raw completion, and the prompt's code followed by the completion.

    The last covers BigCodeBench-style prompts that end with the function header, where the model
    writes only the body.
    """
    candidates = [m.strip("\n") for m in _FENCE.findall(completion)]
    candidates.append(completion)
    start = _CODE_START.search(prompt)
    if start is not None:
        candidates.append(prompt[start.start() :] + completion)
    return candidates


def with_code_prompt(candidates: list[str], completion: str, code_prompt: Any, name: str) -> list[str]:
    """Put BigCodeBench's ``code_prompt`` (imports + signature) in front of the completion.

    A completion that is the whole function gets the prompt's imports; one that is only the body (as the
    dataset's canonical_solution is) gets the imports and the signature. Without a code_prompt: unchanged.
    """
    header = str(code_prompt or "")
    if not header.strip():
        return candidates
    signature = re.search(rf"^(?:async\s+)?def\s+{re.escape(name)}\s*\(", header, re.MULTILINE)
    imports = header[: signature.start()] if signature else ""
    return [imports + c for c in candidates] + [header + completion] + candidates


def unittest_program(test: Any) -> str:
    """The test code to append; a unittest ``TestCase`` (BigCodeBench) is also run, so failures fail the exit."""
    text = str(test or "")
    if "unittest" in text and "TestCase" in text and "unittest.main" not in text:
        text += ("\n\nimport sys as _sys, unittest as _unittest\n"
                 "_result = _unittest.main(argv=['strata-test'], exit=False).result\n"
                 "_sys.exit(0 if _result.wasSuccessful() and _result.testsRun else 1)\n")
    return text


def defines_function(source: str, name: str) -> bool:
    """Whether ``source`` parses and defines ``name`` at module level (or as a method); never runs it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name
        for node in ast.walk(tree)
    )
