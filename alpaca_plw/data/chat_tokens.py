"""Tokens of a traced rendering, each mapped back to the character that decides its role.

Rule for a token that straddles a boundary: a token belongs to its **last character**. SentencePiece
attaches a word's leading space to the word (`▁Hello`), so the space a template puts before an
assistant reply goes with the reply, and a token that merges markup with the content after it
takes the content's role. A token with no characters of its own (the dummy-prefix `▁`, the first
bytes of a byte-fallback character) belongs to the character it starts at.

Special tokens: with SentencePiece, the BOS and EOS strings (`<s>`, `</s>`) become their ids where
the template's markup emits them; the same strings inside message content stay plain text (a user
cannot inject an end-of-sequence). The text between them is encoded as SentencePiece encodes any
text (with its dummy prefix), as the slow LLaMA tokenizer does. A Hugging Face fast tokenizer
splits special tokens itself and reports character offsets directly.
"""

from __future__ import annotations

import re

import numpy as np

from alpaca_plw.data.chat_template import MARKUP
from alpaca_plw.data.tokenizer import Tokenizer


def special_texts(tokenizer: Tokenizer) -> tuple[str, str]:
    """The BOS and EOS strings a template receives as `bos_token` / `eos_token`."""
    if tokenizer.backend == "sentencepiece":
        piece = tokenizer.impl.id_to_piece
        return (piece(tokenizer.bos_id) if tokenizer.bos_id is not None else "",
                piece(tokenizer.eos_id) if tokenizer.eos_id is not None else "")
    return tokenizer.impl.bos_token or "", tokenizer.impl.eos_token or ""


def _char_of_byte(text: str) -> np.ndarray:
    """For each UTF-8 byte of `text`, the index of the character it belongs to."""
    raw = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return np.cumsum((raw & 0xC0) != 0x80) - 1


def _last_chars(begin: np.ndarray, end: np.ndarray, char_of: np.ndarray, n_chars: int) -> np.ndarray:
    """Character index deciding each token: its last character, or for an empty span the one it
    starts at (clipped to the text)."""
    if n_chars == 0:
        return np.zeros(begin.size, dtype=np.int64)
    padded = np.append(char_of, n_chars - 1)  # a span starting at the text's end
    return np.where(end > begin, padded[np.maximum(end - 1, 0)], padded[begin]).astype(np.int64)


def _sentencepiece_tokens(tokenizer: Tokenizer, text: str, owner: np.ndarray):
    bos_text, eos_text = special_texts(tokenizer)
    specials = {t: i for t, i in ((bos_text, tokenizer.bos_id), (eos_text, tokenizer.eos_id)) if t}
    cuts = []  # (start, end, id) of special tokens emitted by markup
    if specials:
        pattern = "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True))
        cuts = [(m.start(), m.end(), specials[m.group()]) for m in re.finditer(pattern, text)
                if (owner[m.start():m.end()] == MARKUP).all()]
    segments, pos = [], 0
    for start, end, _ in cuts:
        segments.append((pos, start))
        pos = end
    segments.append((pos, len(text)))
    protos = tokenizer.impl.encode([text[a:b] for a, b in segments], return_type="proto")
    ids, chars = [], []
    for k, ((a, b), proto) in enumerate(zip(segments, protos)):
        triples = np.array([(p.id, p.begin, p.end) for p in proto.pieces], dtype=np.int64).reshape(-1, 3)
        ids.append(triples[:, 0])
        chars.append(a + _last_chars(triples[:, 1], triples[:, 2], _char_of_byte(text[a:b]), b - a))
        if k < len(cuts):
            ids.append(np.array([cuts[k][2]], dtype=np.int64))
            chars.append(np.array([cuts[k][1] - 1], dtype=np.int64))
    return np.concatenate(ids), np.concatenate(chars)


def _hf_tokens(tokenizer: Tokenizer, text: str):
    enc = tokenizer.impl(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = np.array(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    char_of = np.arange(len(text), dtype=np.int64)
    return (np.array(enc["input_ids"], dtype=np.int64),
            _last_chars(spans[:, 0], spans[:, 1], char_of, len(text)))


def tokens_with_chars(tokenizer: Tokenizer, text: str, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, index of the character that decides each token's role) for a rendered text."""
    if tokenizer.backend == "sentencepiece":
        return _sentencepiece_tokens(tokenizer, text, owner)
    return _hf_tokens(tokenizer, text)
