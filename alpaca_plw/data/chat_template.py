"""Chat templates: load a Jinja template, render conversations, and trace every rendered character.

A template comes from `--chat-template FILE` or from the tokenizer folder (`chat_template` in
`tokenizer_config.json`, or `chat_template.jinja`). It is rendered in a sandbox with the variables
Hugging Face templates expect (`messages`, `bos_token`, `eos_token`, `add_generation_prompt`,
`raise_exception`) and the `{% generation %}` block accepted as plain text.

Provenance, by rendering: each conversation is rendered twice, once as is and once with every
message's content replaced by a private-use placeholder character. The placeholder render is
markup and placeholders only, so it says exactly where each message's content sits; walking the real
render along it assigns every character either to one message's content or to markup. A template
that trims content (`content.strip()`) is followed; one that changes content otherwise, or renders
it twice, is refused with a clear error rather than guessed at.

The markup that closes an assistant turn is what the template emits after that assistant's content
when the conversation ends there (a third render, cut after that message), as far as the full
render agrees with it: for ChatML `<|im_end|>\\n`, for Llama-2-chat ` </s>`.

A template is code the user supplied, so each render has a time limit (`RENDER_SECONDS`, enforced
with SIGALRM in the main thread), and a render that recurses too deeply or runs out of memory is
refused with one line instead of a traceback; none of them leaves the output lock held.
"""

from __future__ import annotations

import hashlib
import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from alpaca_plw.errors import ConfigError, InputError

_BASE = 0xF0000  # Supplementary Private Use Area-A: one placeholder character per message
_PLACEHOLDER = re.compile("[\U000F0000-\U000FFFFD]")
MARKUP = -1  # owner of a markup character; otherwise the owner is the message index
RENDER_SECONDS = 10.0  # the most one render of one conversation may take


class TemplateRefusal(Exception):
    """Raised by `raise_exception(...)` inside a template."""


class _TooSlow(Exception):
    """Raised into a render that has run past `RENDER_SECONDS`."""


@contextmanager
def _time_limit(seconds: float):
    """Raise `_TooSlow` inside the block after `seconds` (main thread only; elsewhere no limit)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise _TooSlow

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template and where it came from (recorded in outputs)."""

    name: str
    text: str
    compiled: object

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]

    def identity(self) -> dict[str, str]:
        return {"name": self.name, "sha256": self.sha256}

    def render(self, messages: list[dict], bos: str, eos: str, where: str = "") -> str:
        """The template's text for `messages` (no generation prompt); refusals become `InputError`."""
        from jinja2 import TemplateError

        try:
            with _time_limit(RENDER_SECONDS):
                return self.compiled.render(messages=messages, bos_token=bos, eos_token=eos,
                                            add_generation_prompt=False, tools=None)
        except TemplateRefusal as exc:
            raise InputError(f"{where}: the chat template refuses this conversation: {exc}") from None
        except _TooSlow:
            raise InputError(f"{where}: the chat template {self.name} ran longer than "
                             f"{RENDER_SECONDS:g} s on this conversation (a loop that does not "
                             "end?); nothing was written") from None
        except RecursionError:
            raise InputError(f"{where}: the chat template {self.name} recursed too deeply on this "
                             "conversation (a macro that calls itself?)") from None
        except MemoryError:
            raise InputError(f"{where}: the chat template {self.name} ran out of memory on this "
                             "conversation") from None
        except (TemplateError, TypeError, ValueError, IndexError, KeyError, OverflowError) as exc:
            raise InputError(f"{where}: the chat template failed on this conversation "
                             f"({type(exc).__name__}: {str(exc)[:200]})") from None


def compile_template(text: str, name: str) -> ChatTemplate:
    """Compile `text` the way Hugging Face chat templates expect (trim_blocks, lstrip_blocks)."""
    from alpaca_plw.extras import require

    require("jinja2", "chat templates", "chat")
    from jinja2 import TemplateSyntaxError, nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):
        """`{% generation %}...{% endgeneration %}` renders its body unchanged."""

        tags = {"generation"}

        def parse(self, parser) -> list[nodes.Node]:
            next(parser.stream)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def raise_exception(message):
        raise TemplateRefusal(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent,
                                                                 ensure_ascii=False)
    env.globals["raise_exception"] = raise_exception
    try:
        compiled = env.from_string(text)
    except TemplateSyntaxError as exc:
        raise ConfigError(f"{name}: not a valid Jinja chat template (line {exc.lineno}: "
                          f"{exc.message})") from None
    return ChatTemplate(name, text, compiled)


def load_template(path: str | Path | None, tokenizer_dir: Path | None) -> ChatTemplate:
    """`--chat-template FILE`, else the tokenizer's own template; a clear error when neither exists."""
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--chat-template {file}: cannot read it ({exc})") from None
        return compile_template(text, file.name)
    found = _tokenizer_template(tokenizer_dir) if tokenizer_dir is not None else None
    if found is None:
        raise ConfigError(
            f"the tokenizer{f' at {tokenizer_dir}' if tokenizer_dir else ''} has no chat template; "
            "conversations need one: pass --chat-template FILE (a Jinja template)")
    return compile_template(found, f"{tokenizer_dir.name} (tokenizer's chat_template)")


def _tokenizer_template(directory: Path) -> str | None:
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        value = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError, RecursionError, AttributeError) as exc:
        raise ConfigError(f"{config}: cannot read its chat_template ({type(exc).__name__}); pass "
                          "--chat-template FILE") from None
    if isinstance(value, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else None


@dataclass
class Traced:
    """A rendered conversation: its text, the owner of every character (message index or MARKUP),
    and per message the character span of the markup that closes it (assistant turns; else None)."""

    text: str
    owner: np.ndarray  # int32 [len(text)]
    closing: list[tuple[int, int] | None]


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


def _candidates(content: str) -> list[str]:
    return list(dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())))


def trace(template: ChatTemplate, roles: list[str], contents: list[str], bos: str, eos: str,
          where: str) -> Traced:
    """Render one conversation and assign every character to a message's content or to markup."""
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents)]
    text = template.render(messages, bos, eos, where)
    marked = [{"role": r, "content": chr(_BASE + i) if (c or r == "assistant") else ""}
              for i, (r, c) in enumerate(zip(roles, contents))]
    pieces, indices = _split(template.render(marked, bos, eos, where), where)
    owner = np.full(len(text), MARKUP, dtype=np.int32)
    ends: dict[int, int] = {}
    pos = 0
    for k, index in enumerate(indices):
        if not text.startswith(pieces[k], pos):
            raise _untraceable(where, index)
        pos += len(pieces[k])
        follow = pieces[k + 1]
        for candidate in _candidates(contents[index]):
            if text.startswith(candidate, pos) and text.startswith(follow, pos + len(candidate)):
                owner[pos:pos + len(candidate)] = index
                pos += len(candidate)
                ends[index] = pos
                break
        else:
            raise _untraceable(where, index)
    if text[pos:] != pieces[-1]:
        raise _untraceable(where, indices[-1] if indices else 0)
    closing: list[tuple[int, int] | None] = [None] * len(roles)
    for index, end in ends.items():
        if roles[index] == "assistant":
            closing[index] = (end, end + _closing_length(template, marked, index, text, owner, end,
                                                         bos, eos, where))
    return Traced(text, owner, closing)


def _closing_length(template, marked, index, text, owner, end, bos, eos, where) -> int:
    """Length of the markup closing assistant message `index`: the tail the template emits after
    its content when the conversation ends there, as far as the full render agrees with it (and
    never past the markup, into the next message's content)."""
    cut = template.render(marked[: index + 1], bos, eos, where)
    tail = cut[cut.index(chr(_BASE + index)) + 1:]
    n, limit = 0, min(len(tail), len(text) - end)
    while n < limit and tail[n] == text[end + n] and owner[end + n] == MARKUP:
        n += 1
    return n


def _untraceable(where: str, index: int) -> InputError:
    return InputError(
        f"{where}: turn {index}: the chat template changes this message's content (beyond trimming "
        "whitespace) or renders it conditionally on its text; alpaca-plw cannot tell which "
        "characters of the rendered text come from it")
