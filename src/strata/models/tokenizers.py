"""Tokenizers for training: --tokenizer, the model folder's own files, a preset's choice, or raw bytes."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoTokenizer, ByT5Tokenizer, PreTrainedTokenizerBase

from strata.errors import StrataError
from strata.hub import resolve_model_path
from strata.models.arguments import ModelArguments
from strata.models.presets import Preset

logger = logging.getLogger(__name__)


def byte_tokenizer() -> PreTrainedTokenizerBase:
    """ByT5's byte-level tokenizer needs no files: the offline default."""
    return ByT5Tokenizer()


def _has_tokenizer_files(path: Path) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "tokenizer.model")
    return path.is_dir() and any((path / name).exists() for name in names)


def load_tokenizer(args: ModelArguments, model_path: str | None, preset: Preset | None,
                   mirror: str | None) -> tuple[PreTrainedTokenizerBase, str]:
    """Return the tokenizer and where it came from (--tokenizer, the model's files, a preset, bytes)."""
    if args.tokenizer:
        if args.tokenizer == "byte":
            return byte_tokenizer(), "byte-level (ByT5)"
        path = resolve_model_path(args.tokenizer, mirror)
        return _finish_tokenizer(AutoTokenizer.from_pretrained(path)), f"--tokenizer {path}"
    if model_path is not None and _has_tokenizer_files(Path(model_path)):
        return _finish_tokenizer(AutoTokenizer.from_pretrained(model_path)), f"model files {model_path}"
    if preset is not None and preset.tokenizer != "byte":
        try:
            path = resolve_model_path(preset.tokenizer, mirror)
            if Path(path).is_dir():
                return _finish_tokenizer(AutoTokenizer.from_pretrained(path)), f"{preset.tokenizer} from {path}"
        except StrataError as error:
            logger.warning("preset %s prefers the %s tokenizer, which is not available (%s); using bytes",
                           preset.name, preset.tokenizer, error)
    return byte_tokenizer(), "byte-level (ByT5)"


def _finish_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give tokenizers without a pad token (GPT-2) one; collators mask labels by attention, not id."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise StrataError("the tokenizer has neither a pad nor an eos token; pass a --tokenizer that has one")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_bpe_tokenizer(spec: str, texts: list[str], out_dir: Path) -> PreTrainedTokenizerBase:
    """``--train_tokenizer bpe:8192``: a byte-level BPE tokenizer trained on the training split."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    kind, _, size = spec.partition(":")
    if kind != "bpe" or not size.isdigit() or int(size) < 300:
        raise StrataError(f"--train_tokenizer {spec!r} is not understood; use bpe:<vocab size>, e.g. bpe:8192")
    specials = ["<pad>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(size), special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out_dir)
    return fast
