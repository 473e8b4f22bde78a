"""Shared fixtures: the shared LLaMA tokenizer, the real CLI entry point, and independent token counts.

Everything here is offline. The hub clients are put in offline mode before anything imports them,
so a test that names a hub id fails fast with the "offline" error instead of touching the network.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from reference import (  # noqa: F401  (re-exported for fixtures)
    ALPACA_DATA,
    LLAMA_DIR,
    REF_FLAT_PLW,
    REF_GUIDE,
    REF_STARS,
    REF_SWAP_NO_INPUT,
    REF_SWAP_WITH_INPUT,
    REPO_ROOT,
    SAMPLE,
    SHARED,
    SPCounter,
    comparable,
    expected_stats,
    reference_guide,
    reference_plw,
    reference_swap,
    sha256_of,
    stats_from_counts,
    write_json,
)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def llama_dir() -> Path:
    if not (LLAMA_DIR / "tokenizer.model").is_file():
        pytest.fail(
            f"the shared LLaMA tokenizer is missing: expected {LLAMA_DIR}/tokenizer.model "
            "(the repository must be cloned with ../shared beside it)"
        )
    return LLAMA_DIR


@pytest.fixture(scope="session")
def sample_path() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def sample_records() -> list[dict]:
    return json.loads(SAMPLE.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def sp_counter(llama_dir) -> SPCounter:
    """One independent counter per session: a text is tokenized at most once in the whole run."""
    return SPCounter(llama_dir / "tokenizer.model")


@pytest.fixture(autouse=True)
def _tokenizer_env(monkeypatch, llama_dir):
    """Library calls made in-process see the shared tokenizer as the default."""
    monkeypatch.setenv("ALPACA_PLW_TOKENIZER", str(llama_dir))


@pytest.fixture()
def run_cli(llama_dir):
    """Run the real Typer app: `run_cli(args, cwd=None, env=None) -> (exit_code, stdout, stderr)`.

    stderr is kept apart from stdout. An exception that escaped the app (which a user would see as
    a traceback) is appended to stderr as its formatted traceback, so `"Traceback" not in stderr`
    catches it.
    """
    from cli_invoke import invoke_cli

    def run(args: Sequence[str], cwd: Path | None = None, env: dict | None = None):
        return invoke_cli(args, cwd, env, tokenizer=llama_dir)

    return run


# --- the real Alpaca data, loaded and counted once per session -------------------------------

@pytest.fixture(scope="session")
def alpaca_path() -> Path:
    if not ALPACA_DATA.is_file():
        pytest.fail(f"the shared Alpaca data is missing: expected {ALPACA_DATA}")
    return ALPACA_DATA


@pytest.fixture(scope="session")
def alpaca_records(alpaca_path) -> list[dict]:
    return json.loads(alpaca_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def alpaca_lengths(alpaca_records, sp_counter):
    """Independent per-record token counts of the real data: dict of int arrays per field."""
    import numpy as np

    fields = {}
    for name in ("instruction", "input", "output"):
        fields[name] = np.array(sp_counter.counts([r[name] for r in alpaca_records]), dtype=np.int64)
    return fields


# --- independent statistics ------------------------------------------------------------------

def pytest_report_header(config) -> list[str]:
    """The versions CI runs with, at the top of every test run."""
    from importlib.metadata import PackageNotFoundError, version

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    names = ["torch", "transformers", "datasets", "peft", "lm_eval", "statsmodels"]
    tok = os.environ.get("ALPACA_PLW_TOKENIZER", "unset")
    return ["alpaca-plw: " + ", ".join(f"{n} {v(n)}" for n in names) + f"; ALPACA_PLW_TOKENIZER={tok}"]
