"""Typed errors. The CLI turns each into a one-line message on stderr and a non-zero exit code."""

from __future__ import annotations


class PLWError(Exception):
    """Base class: a problem the user can fix. Its message says what was found and what is expected."""

    exit_code = 1


class InputError(PLWError):
    """A source dataset cannot be read or holds an invalid record."""

    exit_code = 2


class TokenizerError(PLWError):
    """A tokenizer cannot be loaded, or does not match what the data was made with."""

    exit_code = 2


class OutputError(PLWError):
    """An output cannot be written where asked (not a folder, not writable, or the source itself)."""

    exit_code = 3


class OutputExistsError(OutputError):
    """The output path exists and `--force` was not given."""


class TargetError(PLWError):
    """A builder's target generation ratio cannot be reached with the options given."""

    exit_code = 4


class ConfigError(PLWError):
    """An option value is out of range or inconsistent with another."""

    exit_code = 2


def abbreviate(value: object, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for error messages that quote bad input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MissingExtraError(PLWError):
    """A feature needs an optional dependency (a pip extra) that is not installed."""

    exit_code = 5


class Interrupted(PLWError):
    """Ctrl-C: the command stopped; outputs are as they were (or, for `train`, resumable)."""

    exit_code = 130


class DivergedError(PLWError):
    """Training stopped: a loss or gradient norm is not finite (the step was not applied)."""

    exit_code = 6
