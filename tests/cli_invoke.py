"""The real `alpaca-plw` Typer app run in-process, for tests and for `--regen` scripts."""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
from pathlib import Path

LLAMA = Path(__file__).resolve().parents[1].parent / "shared" / "tokenizers" / "llama"


def invoke_cli(args: Sequence[object], cwd: Path | None = None, env: dict | None = None,
               tokenizer: Path = LLAMA) -> tuple[int, str, str]:
    """Run the app in `cwd` (default: here), offline, with `tokenizer` as ALPACA_PLW_TOKENIZER;
    returns (exit code, stdout, stderr). stderr is kept apart from stdout; an exception that escaped
    the app (which a user would see as a traceback) is appended to stderr as its formatted
    traceback, so `"Traceback" not in stderr` catches it."""
    from typer.testing import CliRunner

    from alpaca_plw.cli import app

    full_env = {"ALPACA_PLW_TOKENIZER": str(tokenizer), "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1", **(env or {})}
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], env=full_env)
    finally:
        os.chdir(old)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return result.exit_code, result.stdout, stderr


def assert_one_error(code: int, stderr: str, expected_code: int, needle: str) -> None:
    """The command ended with `expected_code` and one `error:` line, its last, holding `needle`;
    no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expected_code, stderr
    assert "Traceback" not in stderr, stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr
    assert needle in lines[-1], stderr
