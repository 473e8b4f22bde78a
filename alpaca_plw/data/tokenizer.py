"""Tokenizer loading: SentencePiece when the tokenizer has `tokenizer.model`, else Hugging Face fast.

SentencePiece on LLaMA's `tokenizer.model` is the reference behaviour (the paper's counts; the slow
LLaMA tokenizer of the Alpaca recipe). Hugging Face's fast conversion splits runs of spaces
differently on a few percent of records, so it is the fallback, not the default.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca_plw.errors import TokenizerError

DEFAULT_TOKENIZER = "hf-internal-testing/llama-tokenizer"
ENV_TOKENIZER = "ALPACA_PLW_TOKENIZER"
_HUB_FILES = ["tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "vocab.json", "merges.txt", "added_tokens.json"]


@dataclass
class Tokenizer:
    """A loaded tokenizer with the two operations the project needs: batch encoding and identity.

    `encode_batch` never adds special tokens; `bos_id` / `eos_id` are None when the vocabulary has
    none.
    """

    name: str
    backend: str  # "sentencepiece" or "hf-fast"
    impl: Any
    bos_id: int | None
    eos_id: int | None
    vocab_size: int
    threads: int = 1
    # tables derived from the vocabulary, built once per loaded tokenizer by their owners (e.g.
    # `chat_tokens.piece_bytes`), not once per batch
    memo: dict = field(default_factory=dict, repr=False, compare=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.backend == "sentencepiece":
            return self.impl.encode(texts, num_threads=self.threads)
        return self.impl(texts, add_special_tokens=False)["input_ids"]

    def pieces(self) -> list[str]:
        if self.backend == "sentencepiece":
            return [self.impl.id_to_piece(i) for i in range(self.vocab_size)]
        return self.impl.convert_ids_to_tokens(list(range(self.vocab_size)))

    def identity(self) -> dict[str, object]:
        """Name, backend, vocabulary size and a digest of the vocabulary (pieces in id order).

        The digest is the same for the SentencePiece and the Hugging Face form of one vocabulary,
        which is what lets `train` check a weights dataset against a model's tokenizer.
        """
        return {
            "name": self.name,
            "backend": self.backend,
            "vocab_size": self.vocab_size,
            "vocab_sha256": vocab_digest(self.pieces(), self.bos_id, self.eos_id),
        }


def vocab_digest(pieces: list[str], bos_id: int | None, eos_id: int | None) -> str:
    digest = hashlib.sha256(f"bos={bos_id};eos={eos_id}\n".encode())
    digest.update("\n".join(pieces).encode("utf-8"))
    return digest.hexdigest()[:16]


def resolve_spec(spec: str | None) -> str:
    """`--tokenizer`, else `$ALPACA_PLW_TOKENIZER`, else the LLaMA tokenizer on the hub."""
    return spec or os.environ.get(ENV_TOKENIZER) or DEFAULT_TOKENIZER


def _offline_hint(spec: str) -> str:
    return (
        f"cannot fetch tokenizer {spec!r} from the Hugging Face hub. Offline, pass a local "
        f"directory with --tokenizer DIR or set {ENV_TOKENIZER}=DIR (a folder holding "
        "tokenizer.model, or tokenizer.json and tokenizer_config.json)"
    )


def _download(spec: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=spec, allow_patterns=_HUB_FILES))
    except Exception as exc:  # noqa: BLE001 - offline failures surface as many exception types
        raise TokenizerError(f"{_offline_hint(spec)} ({type(exc).__name__})") from None


def _sentencepiece(model_file: Path, name: str, threads: int) -> Tokenizer:
    import sentencepiece

    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(f"{model_file}: not a SentencePiece model ({exc})") from None
    bos, eos = sp.bos_id(), sp.eos_id()
    return Tokenizer(name, "sentencepiece", sp, bos if bos >= 0 else None,
                     eos if eos >= 0 else None, sp.get_piece_size(), threads)


def _hf_fast(directory: Path, name: str) -> Tokenizer:
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(directory), use_fast=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types for a bad folder
        raise TokenizerError(f"{directory}: cannot load a Hugging Face tokenizer ({exc})") from None
    return Tokenizer(name, "hf-fast", tok, tok.bos_token_id, tok.eos_token_id, len(tok))


def load_tokenizer(spec: str | None = None, threads: int | None = None) -> Tokenizer:
    """Load `spec` (a local directory, a `tokenizer.model` file or a hub id; see `resolve_spec`)."""
    spec = resolve_spec(spec)
    threads = threads or min(os.cpu_count() or 1, 16)
    path = Path(spec).expanduser()
    if path.is_file():
        return _sentencepiece(path, path.parent.name or path.stem, threads)
    if path.is_dir():
        directory, name = path, path.resolve().name
    elif spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise TokenizerError(f"{spec}: no such tokenizer directory (--tokenizer / {ENV_TOKENIZER})")
    else:
        directory, name = _download(spec), spec
    if (directory / "tokenizer.model").is_file():
        return _sentencepiece(directory / "tokenizer.model", name, threads)
    return _hf_fast(directory, name)
