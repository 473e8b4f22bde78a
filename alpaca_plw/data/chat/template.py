"""Chat templates: load a Jinja template and render conversations with it.

A template comes from `--chat-template FILE` or from the tokenizer folder (`chat_template` in
`tokenizer_config.json`, or `chat_template.jinja`). It is rendered in a sandbox with the variables
Hugging Face templates expect (`messages`, `bos_token`, `eos_token`, `add_generation_prompt`,
`raise_exception`) and the `{% generation %}` block accepted as plain text. Which rendered character
comes from which message is traced in `chat_trace`.

A template is code the user supplied, so each render has a time limit (`RENDER_SECONDS` of the
process's CPU time, enforced with SIGPROF in the main thread: a template that loops is stopped,
while a run suspended with Ctrl-Z, or starved on a loaded machine, is not), and a render that recurses too deeply or runs out of memory is
refused with one line instead of a traceback; none of them leaves the output lock held. Many renders
in a row share one installed handler (`ChatTemplate.renderer`); each still gets its own limit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from alpaca_plw.errors import ConfigError, InputError

RENDER_SECONDS = 10.0  # the most CPU time one render of one conversation may take


class TemplateRefusal(Exception):
    """Raised by `raise_exception(...)` inside a template."""


class _TooSlow(Exception):
    """Raised into a render that has run past `RENDER_SECONDS`."""


@contextmanager
def _alarm() -> Iterator[Callable[[float], None] | None]:
    """Install a SIGPROF handler raising `_TooSlow` for the block; yield `arm(seconds)` (0
    disarms; seconds of this process's CPU time, not of the clock, so a process stopped and
    continued is not cut short), or None outside the main thread or without `setitimer`."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield None
        return

    def expire(signum, frame):
        raise _TooSlow

    def arm(seconds: float) -> None:
        signal.setitimer(signal.ITIMER_PROF, seconds)

    previous = signal.signal(signal.SIGPROF, expire)
    try:
        yield arm
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


Render = Callable[[list, str, str, str], str]  # (messages, bos, eos, where) -> text


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
        with self.renderer() as render:
            return render(messages, bos, eos, where)

    @contextmanager
    def renderer(self) -> Iterator[Render]:
        """`render` for many conversations in a row: the time limit's handler is installed once."""
        template = self.compiled
        names = dict(template.globals)  # the environment's and the template's globals, merged once

        def run(**values) -> str:
            # what `Template.render` does, without merging the globals into every context again
            context = template.new_context({**names, **values}, shared=True)
            try:
                return template.environment.concat(template.root_render_func(context))
            except Exception:  # noqa: BLE001 - as Template.render: the template's own traceback
                return template.environment.handle_exception()

        with _alarm() as arm:
            yield lambda messages, bos, eos, where="": self._render(arm, run, messages, bos, eos,
                                                                     where)

    def _render(self, arm, run, messages: list[dict], bos: str, eos: str, where: str) -> str:
        from jinja2 import TemplateError

        try:
            if arm is not None:
                arm(RENDER_SECONDS)
            try:
                return run(messages=messages, bos_token=bos, eos_token=eos,
                           add_generation_prompt=False, tools=None)
            finally:
                if arm is not None:
                    arm(0)
        except TemplateRefusal as exc:
            raise InputError(f"{where}: the chat template refuses this conversation: {exc}") from None
        except _TooSlow:
            raise InputError(f"{where}: the chat template {self.name} ran longer than "
                             f"{RENDER_SECONDS:g} s of CPU time on this conversation (a loop that "
                             "does not end?); nothing was written") from None
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
