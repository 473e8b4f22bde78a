"""Conversations: multi-turn chat records, their validation, and the ShareGPT role mapping.

A conversation is a list of messages `{"role", "content"}` with roles system, user, assistant and
tool (REFERENCE.md section 8). ShareGPT data (`{"from", "value"}` messages, `human` / `gpt`) is read
through `--columns messages=conversations`; each message may use either form and its role name is
mapped by `ROLE_ALIASES`. Like `Records`, a dataset is held column-wise: one list of roles and one
list of contents per conversation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from alpaca_plw.data.reading.records import ColumnMap, Source
from alpaca_plw.errors import InputError, abbreviate

KIND = "conversations"
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT names (and the plain ones) -> role. Documented in README, "Chat data".
ROLE_ALIASES = {
    "system": "system", "user": "user", "assistant": "assistant", "tool": "tool",
    "human": "user", "gpt": "assistant",
}


@dataclass
class Conversations:
    """A dataset of conversations. `len(conversations)` is the record count."""

    source: Source
    roles: list[list[str]]
    contents: list[list[str]]
    notes: list[str] = field(default_factory=list)
    kind: str = KIND

    def __len__(self) -> int:
        return len(self.roles)

    def messages(self, index: int) -> list[dict[str, str]]:
        """Conversation `index` as a list of `{"role", "content"}` dicts (canonical role names)."""
        return [{"role": r, "content": c} for r, c in zip(self.roles[index], self.contents[index])]

    def is_single_turn(self, index: int) -> bool:
        """An optional system message, then one user and one assistant message."""
        roles = self.roles[index]
        return roles in (["user", "assistant"], ["system", "user", "assistant"])


def _message(msg: object, where: str, index: int, turn: int, column: str) -> tuple[str, str]:
    if type(msg) is dict and "role" in msg:  # the common case, checked without building messages
        role, content = msg["role"], msg.get("content")
        if type(role) is str and type(content) is str and role in ROLE_ALIASES:
            return ROLE_ALIASES[role], content
    at = f"{where}: record {index}: {column} turn {turn}"
    if not isinstance(msg, Mapping):
        raise InputError(f"{at}: expected an object with fields role and content, found "
                         f"{type(msg).__name__} {abbreviate(msg)}")
    role_key, content_key = ("role", "content") if "role" in msg or "from" not in msg else ("from", "value")
    if role_key not in msg:
        raise InputError(f"{at}: missing field 'role' (or 'from'); its fields are {sorted(map(str, msg))}")
    role = msg[role_key]
    if not isinstance(role, str) or role not in ROLE_ALIASES:
        raise InputError(f"{at}: field {role_key!r}: unknown role {abbreviate(role)}; expected one of "
                         f"{', '.join(ROLES)} (ShareGPT: human -> user, gpt -> assistant)")
    if content_key not in msg:
        raise InputError(f"{at}: missing field {content_key!r}")
    content = msg[content_key]
    if not isinstance(content, str):
        found = "null" if content is None else f"{type(content).__name__} {abbreviate(content)}"
        raise InputError(f"{at}: field {content_key!r}: expected a string, found {found}")
    return ROLE_ALIASES[role], content


def check_conversation(value: object, where: str, index: int, column: str) -> tuple[list[str], list[str]]:
    """Validate one record's message list; every error names the record, the turn and the field."""
    if not isinstance(value, (list, tuple)):
        found = "null" if value is None else f"{type(value).__name__} {abbreviate(value)}"
        raise InputError(f"{where}: record {index}: field {column!r}: expected a list of messages, "
                         f"found {found}")
    if not value:
        raise InputError(f"{where}: record {index}: field {column!r}: the conversation has no messages")
    pairs = [_message(m, where, index, turn, repr(column)) for turn, m in enumerate(value)]
    return [r for r, _ in pairs], [c for _, c in pairs]


def _alpaca_fields(columns: ColumnMap) -> tuple[str, str]:
    return columns.instruction, columns.output


def row_kind(row: Mapping, columns: ColumnMap) -> str | None:
    """'conversations', 'alpaca', 'mixed' or None (neither), from one row's keys."""
    conv = columns.messages in row
    alpaca = any(name in row for name in _alpaca_fields(columns))
    return "mixed" if conv and alpaca else KIND if conv else "alpaca" if alpaca else None


def mixed_error(where: str, detail: str) -> InputError:
    return InputError(f"{where}: {detail}; mixing Alpaca records (instruction, input, output) and "
                      "conversations (messages) in one dataset is an error: split them")


def conversations_from_rows(rows: Iterable[object], source: Source, columns: ColumnMap,
                            first: int = 0, whole: bool = True) -> Conversations:
    """Validate row-wise conversations (JSON objects holding a message list); rows numbered from
    `first`; `whole=False` (a batch of a streamed source) allows none."""
    where, column = source.path, columns.messages
    roles, contents = [], []
    for index, row in enumerate(rows, start=first):
        if not isinstance(row, Mapping):
            raise InputError(f"{where}: record {index}: expected an object with field {column!r}, "
                             f"found {type(row).__name__} {abbreviate(row)}")
        kind = row_kind(row, columns)
        if kind != KIND:
            what = "is an Alpaca record" if kind == "alpaca" else \
                "holds both messages and Alpaca fields" if kind == "mixed" else \
                f"has no field {column!r} (its fields are {sorted(map(str, row))})"
            if kind in ("alpaca", "mixed"):
                raise mixed_error(where, f"record {index} {what} but record 0 is a conversation")
            raise InputError(f"{where}: record {index} {what}")
        r, c = check_conversation(row[column], where, index, column)
        roles.append(r)
        contents.append(c)
    if not roles and whole:
        raise InputError(f"{where}: the dataset has no records")
    return Conversations(source, roles, contents)


def conversations_from_columns(data: Mapping[str, list[object]], source: Source,
                               columns: ColumnMap, first: int = 0,
                               whole: bool = True) -> Conversations:
    """Validate column-wise conversations (Parquet, Arrow, hub datasets); `first` and `whole` as
    in `conversations_from_rows`."""
    where, column = source.path, columns.messages
    values = data[column]
    if not values and whole:
        raise InputError(f"{where}: the dataset has no records")
    checked = [check_conversation(v, where, i, column) for i, v in enumerate(values, start=first)]
    return Conversations(source, [r for r, _ in checked], [c for _, c in checked])
