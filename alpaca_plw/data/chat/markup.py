"""Split markup: chat-template markers that the tokenizer does not hold as special tokens.

ChatML's `<|im_start|>` is one special token of a tokenizer made for it, but the LLaMA tokenizer
encodes it as seven ordinary pieces (`<`, `|`, `im`, `_`, `start`, `|`, `>`), which the model then
learns as text at the markup weight. `weights` records every such marker in the metadata
(`split_markup`), and `weights` and `inspect` turn that record into one warning (`markup_notes`).

A marker is markup text shaped like a special token: `<|name|>` (ChatML, Llama 3, Phi) or a tag
`<name>` / `</name>` (`<s>`, `</s>`, `<start_of_turn>`). Bracketed words such as Llama-2's `[INST]`
and `<<SYS>>` are plain text by design in the templates that use them and are not flagged. Only
characters the template emits are searched, never message content.
"""

from __future__ import annotations

import re

from alpaca_plw.data.tokenizer import Tokenizer

MARKER = re.compile(r"<\|[^\s|<>]{1,64}\|>|(?<!<)</?[A-Za-z_][\w.:\-]{0,63}>(?!>)")


def markup_markers(pieces: list[str], filled: tuple[bool, ...]) -> set[str]:
    """The markers in the markup of one rendering, given as its markup pieces (`chat_trace`) and,
    for each content between two pieces, whether it is non-empty. A content is searched as one
    newline (blanked), so a marker never spans content: markup around an empty content joins."""
    blanked = [pieces[0]]
    for piece, full in zip(pieces[1:], filled):
        blanked += ["\n" if full else "", piece]
    return set(MARKER.findall("".join(blanked)))


def marker_pieces(tokenizer: Tokenizer, marker: str) -> list[str]:
    """The pieces `marker` becomes inside rendered markup (one piece: it is a single token)."""
    from alpaca_plw.data.chat.tokens import special_texts

    if marker in special_texts(tokenizer):
        return [marker]  # BOS / EOS strings emitted by markup become their special ids
    if tokenizer.backend == "sentencepiece":
        pieces = tokenizer.impl.encode(marker, out_type=str)
        if pieces and pieces[0] == "\u2581":  # the dummy prefix alone
            pieces = pieces[1:]
        if pieces and pieces[0].startswith("\u2581"):
            pieces[0] = pieces[0][1:]
        return pieces
    ids = tokenizer.impl(marker, add_special_tokens=False)["input_ids"]
    return list(tokenizer.impl.convert_ids_to_tokens(ids))


def split_markers(tokenizer: Tokenizer, markers) -> list[dict[str, object]]:
    """`[{"marker", "pieces"}]` for each marker the tokenizer splits into several pieces, sorted
    by marker: what the metadata of conversation weights records as `split_markup`."""
    found = []
    for marker in sorted(set(markers)):
        pieces = marker_pieces(tokenizer, marker)
        if len(pieces) > 1:
            found.append({"marker": marker, "pieces": pieces})
    return found


def markup_notes(meta: dict) -> list[str]:
    """One warning (without its `warning:` prefix) when the metadata records split markup; none
    for Alpaca weights or a template whose markers are special tokens."""
    split = meta.get("split_markup") or []
    if meta.get("kind") != "conversations" or not split:
        return []
    template = (meta.get("chat_template") or {}).get("name", "the chat template")
    tokenizer = (meta.get("tokenizer") or {}).get("name", "the tokenizer")
    markup_weight = (meta.get("role_weights") or {}).get("markup", meta.get("plw"))
    first = split[0]
    pieces = " ".join(f"'{p}'" for p in first["pieces"])
    names = ", ".join(s["marker"] for s in split)
    return [f"chat template {template}: its markup {names} is not made of special tokens of "
            f"tokenizer {tokenizer}: {first['marker']} becomes {len(first['pieces'])} ordinary "
            f"pieces ({pieces}), learned as text at the markup weight {markup_weight:g} (and at "
            "1.0 where it closes an assistant turn); fix: a tokenizer that has the template's "
            "special tokens (--tokenizer), or set the markup's weight with --role-weights "
            "markup=W (e.g. markup=0)"]
