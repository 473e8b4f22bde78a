"""Token ids of many rendered texts at once, each token with the text position that decides its role.

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

Offsets without a loop over tokens: every text of a batch goes through one `encode` call (on the
tokenizer's threads), and positions come from NumPy. A SentencePiece piece covers a known number of
bytes of the text: its UTF-8 length with `▁` read as a space, one byte for a byte-fallback piece
(`<0x0A>`), none for the dummy-prefix `▁` that opens every encoded text. A running sum over the ids
gives each token's byte span. That holds for a model that does not normalize text (LLaMA's
`identity` normalizer): `piece_bytes` checks it on probe texts against SentencePiece's own offsets,
and every encoded text is checked to be covered exactly by its pieces (a literal `▁` in the text, or
an unknown piece, breaks that). A text that fails, and every text of a model that fails the probes,
takes its offsets from SentencePiece's proto output instead: slower, the same result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import chain

import numpy as np

from alpaca_plw.data.tokenizer import Tokenizer

_PROBES = ("Hello world", " two  spaces  ", "\n\nnew\nline \n", "tab\tand\r\n", "x", " ", "\n",
           "émoji 🙂 こんにちは", "ﬁ Ａ ½ ﾃ", "<s>[INST] a [/INST]")


def special_texts(tokenizer: Tokenizer) -> tuple[str, str]:
    """The BOS and EOS strings a template receives as `bos_token` / `eos_token`."""
    if tokenizer.backend == "sentencepiece":
        piece = tokenizer.impl.id_to_piece
        return (piece(tokenizer.bos_id) if tokenizer.bos_id is not None else "",
                piece(tokenizer.eos_id) if tokenizer.eos_id is not None else "")
    return tokenizer.impl.bos_token or "", tokenizer.impl.eos_token or ""


@dataclass(frozen=True)
class PieceBytes:
    """Bytes of text each SentencePiece id covers, the dummy prefix's share of the first piece (0
    or 1), and whether these agree with SentencePiece's offsets on the probes."""

    lengths: np.ndarray  # int64 [vocab]
    dummy: int
    exact: bool


def piece_bytes(tokenizer: Tokenizer) -> PieceBytes:
    """The `PieceBytes` of a SentencePiece tokenizer, built once per loaded tokenizer (a streamed
    run weighs its conversations batch by batch with one tokenizer)."""
    table = tokenizer.memo.get("piece_bytes")
    if table is None:
        table = tokenizer.memo["piece_bytes"] = _piece_bytes(tokenizer)
    return table


def _piece_bytes(tokenizer: Tokenizer) -> PieceBytes:
    sp = tokenizer.impl
    pieces = sp.id_to_piece(list(range(sp.get_piece_size())))
    lengths = np.array([1 if sp.is_byte(i) else 0 if sp.is_control(i) or sp.is_unknown(i) else
                        len(p.replace("\u2581", " ").encode("utf-8")) for i, p in enumerate(pieces)],
                       dtype=np.int64)
    dummy = int(lengths[sp.encode("x")].sum()) - 1
    table = PieceBytes(lengths, dummy, dummy in (0, 1))
    if table.exact:
        for probe in _PROBES:
            ids = sp.encode(probe)
            fast = _positions(table, np.array(ids, dtype=np.int64), np.array([len(ids)]),
                              np.array([0]), np.array([len(probe.encode("utf-8"))]), np.array([False]))
            raw = np.frombuffer(probe.encode("utf-8"), dtype=np.uint8)
            char_of = np.cumsum((raw & 0xC0) != 0x80) - 1  # the character of every byte
            if not (fast[1].size == 0 and np.array_equal(char_of[fast[0]],
                                                         char_of[_proto_positions(sp, [probe])[0]])):
                return PieceBytes(lengths, dummy, False)
    return table


def _proto_positions(sp, texts: list[str], threads: int = 1) -> list[np.ndarray]:
    """Deciding byte of every token of each text, from SentencePiece's proto offsets."""
    out = []
    for text, proto in zip(texts, sp.encode(texts, return_type="proto", num_threads=threads)):
        spans = np.array([(p.begin, p.end) for p in proto.pieces], dtype=np.int64).reshape(-1, 2)
        out.append(_decide(spans[:, 0], spans[:, 1], len(text.encode("utf-8"))))
    return out


def _decide(begin: np.ndarray, end: np.ndarray, size: int) -> np.ndarray:
    """The last unit of each span, or for an empty span the one it starts at (clipped to the text)."""
    return np.minimum(np.where(end > begin, end - 1, begin), max(size - 1, 0))


def _positions(table: PieceBytes, ids, ntok, start, size, special):
    """(deciding byte of every token, units whose pieces do not cover their bytes exactly). A unit
    is an encoded text segment or one special token (which covers its `size` bytes)."""
    unit = np.repeat(np.arange(ntok.size), ntok)
    length = table.lengths[ids]
    if special.any():
        of_special = special[unit]
        length[of_special] = size[unit][of_special]
    dummy = np.where(special, 0, table.dummy)
    total = np.cumsum(length)
    first = np.concatenate(([0], np.cumsum(ntok)))
    before = np.concatenate(([0], total))[first]  # bytes of the units before each unit
    covered = before[1:] - before[:-1] - np.where(ntok > 0, dummy, 0)
    end = total + (start - before[:-1] - dummy)[unit]
    lowest = start[unit]
    begin = np.maximum(end - length, lowest)
    last = lowest + (np.maximum(size, 1) - 1)[unit]  # the unit's last byte
    decide = np.minimum(np.where(end > begin, end - 1, begin), last)
    return decide, np.flatnonzero(covered != size)


@dataclass
class Encoded:
    """Token ids of a batch of texts (flat), the global position deciding each token's role, the
    token count and global start of each text; positions count bytes (SentencePiece) or characters."""

    ids: np.ndarray
    pos: np.ndarray
    counts: np.ndarray
    base: np.ndarray
    in_bytes: bool

    def units(self, text: str, chars: list[int]) -> list[int]:
        """Character positions of `text` as positions in this encoding's units."""
        if not self.in_bytes or text.isascii():
            return chars
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        width = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
        return np.concatenate(([0], np.cumsum(width)))[chars].tolist()


def encode_texts(tokenizer: Tokenizer, texts: list[str], content: list[list[tuple]],
                 table: PieceBytes | None = None) -> Encoded:
    """Encode `texts` (rendered conversations; `content[i]` holds the (start, end, ...) character
    spans of text i that are message content) in one call; `table` from `piece_bytes`."""
    if tokenizer.backend != "sentencepiece":
        return _hf(tokenizer, texts)
    bos_text, eos_text = special_texts(tokenizer)
    specials = {t: i for t, i in ((bos_text, tokenizer.bos_id), (eos_text, tokenizer.eos_id)) if t}
    pattern = re.compile("|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)))
    enc = Encoded(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(len(texts), np.int64),
                  np.zeros(len(texts), np.int64), True)
    segments, units, per_text = [], [], []  # units: (segment or -1, special id, start byte, bytes)
    base = 0
    for t, text in enumerate(texts):
        enc.base[t] = base
        cuts = [m for m in pattern.finditer(text) if not any(a < m.end() and m.start() < b
                                                              for a, b, *_ in content[t])] \
            if specials and any(s in text for s in specials) else []
        chars = [0, *chain.from_iterable(m.span() for m in cuts), len(text)]
        edges = enc.units(text, chars)
        per_text.append(2 * len(cuts) + 1)
        for k in range(len(cuts) + 1):
            units.append((len(segments), 0, base + edges[2 * k], edges[2 * k + 1] - edges[2 * k]))
            segments.append(text[chars[2 * k]:chars[2 * k + 1]])
            if k < len(cuts):
                units.append((-1, specials[cuts[k].group()], base + edges[2 * k + 1],
                              edges[2 * k + 2] - edges[2 * k + 1]))
        base += edges[-1]
    encoded = tokenizer.impl.encode(segments, num_threads=tokenizer.threads) if segments else []
    lists = [encoded[s] if s >= 0 else [i] for s, i, _, _ in units] if len(units) > len(segments) \
        else encoded
    seg, _, start, size = (np.array(c, dtype=np.int64) for c in zip(*units)) if units else \
        (np.zeros(0, np.int64),) * 4
    ntok = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    enc.ids = np.fromiter(chain.from_iterable(lists), dtype=np.int64, count=int(ntok.sum()))
    table = table or piece_bytes(tokenizer)
    enc.pos, bad = _positions(table, enc.ids, ntok, start, size, seg < 0)
    if not table.exact:
        bad = np.flatnonzero(seg >= 0)
    if bad.size:
        first = np.concatenate(([0], np.cumsum(ntok)))
        exact = _proto_positions(tokenizer.impl, [segments[seg[u]] for u in bad], tokenizer.threads)
        for u, local in zip(bad, exact):
            enc.pos[first[u]:first[u + 1]] = start[u] + local
    unit_text = np.repeat(np.arange(len(texts)), np.array(per_text, dtype=np.int64))
    enc.counts = np.bincount(unit_text, weights=ntok, minlength=len(texts)).astype(np.int64)
    return enc


def _hf(tokenizer: Tokenizer, texts: list[str]) -> Encoded:
    out = tokenizer.impl(texts, add_special_tokens=False, return_offsets_mapping=True)
    counts = np.fromiter(map(len, out["input_ids"]), dtype=np.int64, count=len(texts))
    sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    base = np.concatenate(([0], np.cumsum(sizes)))[:-1]
    spans = np.fromiter(chain.from_iterable(chain.from_iterable(out["offset_mapping"])),
                        dtype=np.int64, count=2 * int(counts.sum())).reshape(-1, 2)
    text_of = np.repeat(np.arange(len(texts)), counts)
    pos = base[text_of] + np.minimum(np.where(spans[:, 1] > spans[:, 0], spans[:, 1] - 1, spans[:, 0]),
                                     np.maximum(sizes - 1, 0)[text_of])
    ids = np.fromiter(chain.from_iterable(out["input_ids"]), dtype=np.int64, count=int(counts.sum()))
    return Encoded(ids, pos, counts, base, False)
