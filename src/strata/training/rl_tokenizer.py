"""The tokenizer GRPO encodes prompts with: the encoding contract's context, without an appended end-of-text.

TRL 1.16 tokenizes text prompts with ``processing_class(text=prompts)``, i.e. with special tokens. A
BOS in front is what SFT rows have too (:func:`strata.data.encoding.decoder_context`), but what a
tokenizer appends (T5/ByT5's ``</s>``, hence Strata's byte-level default) belongs only to encoder
inputs: the policy would otherwise generate after an end-of-text. Each backend has a public place
that decides the special tokens, and the copy handed to TRL changes only that:

* a ``tokenizers``-backed (fast) tokenizer: its ``backend_tokenizer.post_processor`` (a
  ``TemplateProcessing`` with the prefix only);
* a Python tokenizer (ByT5): ``build_inputs_with_special_tokens``, the method transformers documents
  for subclasses to override, in a subclass of the same name (checkpoints name the class they reload
  with), built through ``save_pretrained``/``from_pretrained``.
"""

from __future__ import annotations

import copy
import functools
import tempfile
from typing import Any


def prompt_tokenizer(tokenizer: Any) -> Any:
    """A copy of ``tokenizer`` whose ``tokenizer(text)`` ids are the prefix + text ids (no suffix);
    ``tokenizer`` itself when it appends nothing."""
    from strata.data.encoding import special_tokens

    specials = special_tokens(tokenizer)
    if not specials.suffix:
        return tokenizer
    if getattr(tokenizer, "backend_tokenizer", None) is not None:
        return _fast_without_suffix(tokenizer, list(specials.prefix))
    subclass = _without_suffix_class(type(tokenizer))
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        clone = subclass.from_pretrained(folder)
    clone.padding_side = tokenizer.padding_side
    return clone


def _fast_without_suffix(tokenizer: Any, prefix: list[int]) -> Any:
    from tokenizers import processors

    clone = copy.deepcopy(tokenizer)
    names = clone.convert_ids_to_tokens(prefix)
    single = " ".join([*names, "$A"])
    pair = " ".join([*names, "$A", "$B:1"])
    clone.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=sorted(set(zip(names, prefix))))
    return clone


@functools.cache
def _without_suffix_class(base: type) -> type:
    """``base`` with its appended special tokens dropped, under ``base``'s own name."""

    def build_inputs_with_special_tokens(self: Any, token_ids_0: list[int],
                                         token_ids_1: list[int] | None = None) -> list[int]:
        built = base.build_inputs_with_special_tokens(self, token_ids_0, token_ids_1)
        if token_ids_1 is not None:  # pairs as the base builds them: GRPO encodes single prompts only
            return built
        # What the base appends after a sequence, probed on this one (or on [0] for an empty one).
        probe = list(token_ids_0) or [0]
        framed = built if token_ids_0 else base.build_inputs_with_special_tokens(self, probe)
        for start in range(len(framed) - len(probe) + 1):
            if framed[start:start + len(probe)] == probe:
                appended = len(framed) - start - len(probe)
                return built[:len(built) - appended] if appended else built
        return built

    return type(base.__name__, (base,), {"build_inputs_with_special_tokens": build_inputs_with_special_tokens,
                                         "__module__": base.__module__})
