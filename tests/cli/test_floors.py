"""Dependency floors (issue 17, item 8): every requirement pyproject.toml declares has a `>=` floor,
`.ci/min_versions` pins exactly those floors (its pins are generated from pyproject.toml), and
`.ci/run` runs that check after the README's test command. Also: an `OSError` the library did not
name is reported for what it was, not always as an output (the CLI's `guard`)."""

from __future__ import annotations

import errno
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.cli_invoke import invoke_cli

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "min_versions"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _pins_program() -> str:
    """The Python program `.ci/min_versions` runs to turn pyproject.toml into `name==floor` pins."""
    text = SCRIPT.read_text(encoding="utf-8")
    found = re.search(r'pyproject\.toml" > "\$pins" <<\'PY\'\n(.*?)\nPY\n', text, re.S)
    assert found, ".ci/min_versions no longer generates its pins from pyproject.toml"
    return found.group(1)


def _floor(name: str) -> Version:
    everything = PROJECT["dependencies"] + sum(PROJECT["optional-dependencies"].values(), [])
    for text in everything:
        req = Requirement(text)
        if req.name == name:
            return Version(next(s.version for s in req.specifier if s.operator == ">="))
    raise AssertionError(f"{name} is not declared")


def test_pins_are_every_declared_floor_but_torch(tmp_path):
    done = subprocess.run([sys.executable, "-c", _pins_program(), str(REPO / "pyproject.toml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pins = dict(line.split("==") for line in done.stdout.split())
    extras = PROJECT["optional-dependencies"]
    wanted = set()
    for text in PROJECT["dependencies"] + [r for e in ("train", "lora", "eval", "study",
                                                       "tensorboard", "plot", "chat", "test")
                                           for r in extras[e]]:
        req = Requirement(text)
        if req.name not in ("alpaca-plw", "torch"):
            wanted.add(req.name)
            assert Version(pins[req.name]) == _floor(req.name)
    assert set(pins) == wanted
    assert "torch" not in pins  # installed as torch==2.13.0, the CPU build CI has


def test_a_requirement_without_a_floor_stops_the_check(tmp_path):
    project = (REPO / "pyproject.toml").read_text(encoding="utf-8").replace(
        '"rich>=13"', '"rich"')
    (tmp_path / "pyproject.toml").write_text(project, encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", _pins_program(), str(tmp_path / "pyproject.toml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "'rich'" in done.stderr


def test_the_floors_are_the_documented_ones():
    assert PROJECT["requires-python"] == ">=3.11"  # hashlib.file_digest
    assert _floor("datasets") >= Version("4.0")  # loading scripts cannot run
    assert _floor("torch") >= Version("2.11")  # what the trainer ran on (benchmarks/RESULTS.md)
    assert _floor("transformers") >= Version("4.57.1")  # 4.56: get_decoder() is None (LoRA)
    assert _floor("sentencepiece") >= Version("0.2.2")  # encode(return_type="proto") (chat)
    assert _floor("typer") >= Version("0.16")  # older ones fail with click >= 8.2
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert ".ci/min_versions" in readme


def test_ci_runs_the_floors_check_after_the_readme_tests():
    text = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines()]
    tests = lines.index('pip install -e ".[dev]" && python -m pytest -q')
    floors = [i for i, line in enumerate(lines) if line.startswith("bash .ci/min_versions")]
    assert floors and floors[0] > tests
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# --- an OSError the library did not name (cli/options.py `guard`) ------------------------------

def _raising(monkeypatch, exc: OSError) -> None:
    def build_dataset(*args, **kwargs):
        raise exc

    monkeypatch.setattr("alpaca_plw.data.pipeline.build_dataset", build_dataset)


def test_an_os_error_reading_an_input_is_not_called_an_output(tmp_path, monkeypatch):
    source = tmp_path / "data.json"
    source.write_text('[{"instruction": "a", "output": "b"}]', encoding="utf-8")
    _raising(monkeypatch, OSError(errno.EIO, "Input/output error", str(source)))
    code, _, stderr = invoke_cli(["build-short", source, "-o", tmp_path / "out.json"])
    assert code == 2, stderr
    assert stderr.strip() == f"error: {source}: cannot read it (input/output error)"
    assert "output:" not in stderr and "Traceback" not in stderr


def test_an_os_error_at_an_output_is_still_an_output_error(tmp_path, monkeypatch):
    out = tmp_path / "out.json"
    temporary = tmp_path / ".out.json.plw-tmp-1"  # beside the output
    _raising(monkeypatch, OSError(errno.EIO, "Input/output error", str(temporary)))
    code, _, stderr = invoke_cli(["build-short", REPO / "data" / "sample.json", "-o", out])
    assert code == 3, stderr
    assert stderr.strip() == f"error: {temporary}: input/output error"


@pytest.mark.parametrize("exc, code, line", [
    (OSError("Can't load the configuration of 'm'"), 1,
     "error: an operating-system error (no path named): can't load the configuration of 'm'"),
    (OSError(errno.ENOSPC, "No space left on device"), 3,
     "error: cannot write an output: no space left on device"),
    (OSError(errno.EACCES, "Permission denied", "/elsewhere/cache/x"), 1,
     "error: /elsewhere/cache/x: permission denied (not one of this command's inputs or outputs)"),
])
def test_an_os_error_elsewhere_claims_neither(tmp_path, monkeypatch, exc, code, line):
    _raising(monkeypatch, exc)
    got, _, stderr = invoke_cli(["build-short", REPO / "data" / "sample.json", "-o",
                                 tmp_path / "out.json"])
    assert (got, stderr.strip()) == (code, line)
