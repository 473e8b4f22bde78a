"""Which characters of a rendered conversation come from which message, and which markup closes an
assistant turn.

Provenance, by rendering: each conversation is rendered as is, and its *shape* (the conversation
with every message's content replaced by a private-use placeholder character) is rendered too. The
placeholder render is markup and placeholders only, so it says exactly where each message's content
sits; walking the real render along it assigns every character either to one message's content or
to markup. A template that trims content (`content.strip()`) is followed; one that changes content
otherwise, or renders it twice, is refused with a clear error rather than guessed at.

The markup that closes an assistant turn is what the template emits after that assistant's content
when the conversation ends there (the shape's render cut after that message), as far as the full
render agrees with it and never past the markup into the next message's content: for ChatML
`<|im_end|>\\n`, for Llama-2-chat ` </s>`.

A shape depends only on the roles and on which contents are empty, not on their text, so a
`Tracer` renders each shape (and each cut of it) once and keeps it for the conversations that share
it: a template is a deterministic function of its inputs (a sandbox with no clock or state), so
this gives what rendering them for every conversation gives, with one render per conversation.
A `Tracer` belongs to one run; nothing is shared between runs or processes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from alpaca_plw.data.chat.markup import markup_markers
from alpaca_plw.data.chat.template import ChatTemplate, Render
from alpaca_plw.errors import InputError

_BASE = 0xF0000  # Supplementary Private Use Area-A: one placeholder character per message
_PLACEHOLDER = re.compile("[\U000F0000-\U000FFFFD]")


@dataclass(frozen=True)
class Traced:
    """A rendered conversation: its text; `spans`, the (start, end, message index) of every
    non-empty content span in text order (everything else is markup); `closing`, per assistant
    message whose content was located, the (start, end) of the markup closing it (maybe empty);
    `markers`, the special-token-shaped markers of its markup (`chat_markup`)."""

    text: str
    spans: list[tuple[int, int, int]]
    closing: dict[int, tuple[int, int]]
    markers: frozenset[str]


def _split(rendered: str, where: str) -> tuple[list[str], list[int]]:
    """Placeholder render -> markup pieces and message indices (pieces = indices + 1)."""
    pieces, indices, last = [], [], 0
    for m in _PLACEHOLDER.finditer(rendered):
        pieces.append(rendered[last:m.start()])
        indices.append(ord(m.group()) - _BASE)
        last = m.end()
    pieces.append(rendered[last:])
    if len(set(indices)) != len(indices):
        raise InputError(f"{where}: the chat template renders a message's content more than once; "
                         "its tokens cannot be given one role")
    return pieces, indices


def _common_prefix(tail: str, text: str, start: int, limit: int) -> int:
    """Length of the common prefix of `tail` and `text[start:]`, at most `limit`."""
    limit = min(limit, len(tail))
    if text.startswith(tail[:limit], start):
        return limit
    n = 0
    while n < limit and tail[n] == text[start + n]:
        n += 1
    return n


class _Shape:
    """One shape's placeholder render split into markup `pieces` and message `indices`, with its
    assistants' closing tails and its markers (per set of filled contents), found once."""

    __slots__ = ("marked", "pieces", "indices", "tails", "markers")

    def __init__(self, marked: list[dict], pieces: list[str], indices: list[int]):
        self.marked, self.pieces, self.indices = marked, pieces, indices
        self.tails: dict[int, str] = {}
        self.markers: dict[tuple, frozenset[str]] = {}


class Tracer:
    """Traces conversations rendered with one template and one BOS/EOS pair (see the module)."""

    def __init__(self, template: ChatTemplate, bos: str, eos: str):
        self.template, self.bos, self.eos = template, bos, eos
        self._shapes: dict[tuple, _Shape] = {}

    def trace(self, render: Render, roles: list[str], contents: list[str], where: str) -> Traced:
        """Render one conversation with `render` (from `ChatTemplate.renderer`) and trace it."""
        text = render([{"role": r, "content": c} for r, c in zip(roles, contents)],
                      self.bos, self.eos, where)
        key = (tuple(roles), tuple([r == "assistant" or c != "" for r, c in zip(roles, contents)]))
        shape = self._shapes.get(key)
        if shape is None:
            marked = [{"role": r, "content": chr(_BASE + i) if filled else ""}
                      for i, (r, filled) in enumerate(zip(*key))]
            shape = self._shapes[key] = _Shape(marked, *_split(
                render(marked, self.bos, self.eos, where), where))
        pieces = shape.pieces
        located: list[tuple[int, int, int]] = []  # every located content, empty ones included
        pos = 0
        for k, index in enumerate(shape.indices):
            piece = pieces[k]
            if not text.startswith(piece, pos):
                raise _untraceable(where, index)
            pos += len(piece)
            follow, content = pieces[k + 1], contents[index]
            # the content as is, else trimmed as a template may trim it (the first that fits)
            if not (text.startswith(content, pos) and text.startswith(follow, pos + len(content))):
                content = _trimmed(text, pos, content, follow)
                if content is None:
                    raise _untraceable(where, index)
            located.append((pos, pos + len(content), index))
            pos += len(content)
        if text[pos:] != pieces[-1]:
            raise _untraceable(where, shape.indices[-1] if shape.indices else 0)
        spans = [s for s in located if s[1] > s[0]]
        closing: list[tuple[int, tuple[int, int]]] = []  # found last to first
        stop = len(text)  # where the markup after each content ends: the next non-empty content
        for start, end, index in reversed(located):
            if roles[index] == "assistant":
                tail = self._tail(render, shape, index, where)
                closing.append((index, (end, end + _common_prefix(tail, text, end, stop - end))))
            if end > start:
                stop = start
        filled = tuple([e > s for s, e, _ in located])
        markers = shape.markers.get(filled)
        if markers is None:
            markers = shape.markers[filled] = frozenset(markup_markers(pieces, filled))
        return Traced(text, spans, dict(reversed(closing)), markers)

    def _tail(self, render: Render, shape: _Shape, index: int, where: str) -> str:
        """What the template emits after assistant message `index`'s content when the
        conversation ends there (nothing when the cut render leaves that content out)."""
        tail = shape.tails.get(index)
        if tail is None:
            cut = render(shape.marked[: index + 1], self.bos, self.eos, where)
            at = cut.find(chr(_BASE + index))
            tail = shape.tails[index] = cut[at + 1:] if at >= 0 else ""
        return tail


def _trimmed(text: str, pos: int, content: str, follow: str) -> str | None:
    """The first of the content trimmed as a template may trim it that sits at `pos`, followed by
    `follow`; None when none does."""
    for candidate in (content.strip(), content.lstrip(), content.rstrip()):
        if text.startswith(candidate, pos) and text.startswith(follow, pos + len(candidate)):
            return candidate
    return None


def _untraceable(where: str, index: int) -> InputError:
    return InputError(
        f"{where}: turn {index}: the chat template changes this message's content (beyond trimming "
        "whitespace) or renders it conditionally on its text; alpaca-plw cannot tell which "
        "characters of the rendered text come from it")
