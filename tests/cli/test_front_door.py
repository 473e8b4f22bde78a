"""The front door: the version flag, a base install without torch, the README's two commands, the
layout's import rules (the rooms' too; circles are tests/test_import_circles.py), and a `stats`
table that stays readable on an 80-column terminal."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "alpaca_plw"

# Runs the real CLI in a fresh interpreter in which torch cannot be imported (as after a base
# install): `sys.modules["torch"] = None` makes `import torch` fail and `find_spec("torch")` None.
NO_TORCH = """
import sys
sys.modules["torch"] = None
sys.argv = ["alpaca-plw", *sys.argv[1:]]
import atexit
from alpaca_plw.cli import main

def report():  # main() ends the process with os._exit after running the atexit handlers
    loaded = sorted(m for m, mod in sys.modules.items()
                    if mod is not None and (m == "torch" or m.startswith("torch.")))
    sys.stderr.write("TORCH_MODULES=" + ",".join(loaded) + "\\n")

atexit.register(report)
main()
"""


def run_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_version_flag_prints_the_package_version():
    import alpaca_plw

    done = subprocess.run([sys.executable, "-m", "alpaca_plw", "--version"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"alpaca-plw {alpaca_plw.__version__}\n"


def test_data_commands_work_without_torch(tmp_path, llama_dir):
    sample = REPO / "data" / "sample.json"
    cases = [
        ["stats", str(sample), "--json", "--tokenizer", str(llama_dir)],
        ["build-short", str(sample), "-o", str(tmp_path / "short.json"), "--tokenizer", str(llama_dir)],
        ["weights", str(sample), "--plw", "0.1", "-o", str(tmp_path / "w"), "--tokenizer", str(llama_dir)],
    ]
    for args in cases:
        done = run_without_torch(args, tmp_path)
        assert done.returncode == 0, (args, done.stderr)
        assert "TORCH_MODULES=\n" in done.stderr, (args, done.stderr)
    from alpaca_plw.data.weights_dir.read import read_weights_dir

    assert read_weights_dir(tmp_path / "w").meta["plw"] == 0.1
    assert json.loads((tmp_path / "short.json").read_text(encoding="utf-8"))


def test_train_without_torch_is_one_line_naming_the_extra(tmp_path):
    done = run_without_torch(["train", str(tmp_path / "w"), "--model", "m", "--output-dir",
                              str(tmp_path / "out")], tmp_path)
    lines = [line for line in done.stderr.splitlines() if not line.startswith("TORCH_MODULES=")]
    assert done.returncode == 5
    from alpaca_plw.extras import has_nvidia_gpu

    cpu_hint = ("" if has_nvidia_gpu() else "; this machine shows no NVIDIA GPU, so install torch's "
                "CPU build first (the CPU wheel index in PyTorch's install instructions), or pip "
                "fetches the multi-GB CUDA build")
    assert lines == ["error: alpaca-plw train needs torch, which is not installed: "
                     "pip install 'alpaca-plw[train]'" + cpu_hint]
    assert not (tmp_path / "out").exists()


def test_the_torch_hint_names_the_cpu_build_only_without_a_gpu(monkeypatch):
    from alpaca_plw import extras
    from alpaca_plw.errors import MissingExtraError

    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name: None)
    for gpu, expected in ((True, False), (False, True)):
        monkeypatch.setattr(extras, "has_nvidia_gpu", lambda gpu=gpu: gpu)
        with pytest.raises(MissingExtraError) as caught:
            extras.require("torch", "alpaca-plw train")
        assert ("CPU build" in str(caught.value)) is expected


def test_public_api_is_importable_from_the_top_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import alpaca_plw; "
            "names = [n for n in alpaca_plw.__all__ if n not in ('train',)]; "
            "[getattr(alpaca_plw, n) for n in names]; print(len(names))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 15


def test_train_package_is_callable_and_still_a_package():
    import alpaca_plw
    from alpaca_plw.train import trainer

    assert callable(alpaca_plw.train)
    assert alpaca_plw.train.trainer is trainer
    assert alpaca_plw.train.train is trainer.train
    assert alpaca_plw.TrainConfig is alpaca_plw.train.TrainConfig


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block and text.index(block.group(0)) < 40, "README must open with the two commands"
    return block.group(1).strip().splitlines()


def test_readme_opens_with_two_commands_and_ci_runs_the_second_exactly():
    commands = _readme_commands()
    assert len(commands) == 2
    assert commands[0].startswith("pip install -e . && alpaca-plw ")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert commands[1] in ci
    pin = next(i for i, line in enumerate(ci) if "pip install torch==" in line)
    assert pin < ci.index(commands[1]), "torch must be pinned before the project's install"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("subpackage, forbidden", [
    ("data", ("alpaca_plw.train", "alpaca_plw.cli", "torch")),
    ("train", ("alpaca_plw.cli",)),
])
def test_layout_import_rules_hold(subpackage, forbidden):
    offenders = {}
    for path in sorted((PACKAGE / subpackage).rglob("*.py")):
        bad = sorted(m for m in _imports(path) if m.startswith(forbidden))
        if bad:
            offenders[str(path.relative_to(REPO))] = bad
    assert offenders == {}


_LOOP = ("alpaca_plw.train.trainer", "alpaca_plw.train.hooks", "alpaca_plw.train.run")


@pytest.mark.parametrize("room, forbidden", [
    # the chat path builds on the Alpaca path (its builders and weights), never the reverse
    ("data/alpaca", ("alpaca_plw.data.chat",)),
    # reading records and writing outputs serve every path; neither reaches into one
    ("data/reading", ("alpaca_plw.data.alpaca", "alpaca_plw.data.pipeline")),
    ("data/outputs", ("alpaca_plw.data.alpaca", "alpaca_plw.data.chat",
                      "alpaca_plw.data.weights_dir", "alpaca_plw.data.pipeline")),
    # the loop's neighbours never reach back into the loop or the run folder
    ("train/batching", _LOOP),
    ("train/modeling", _LOOP),
    ("train/checkpoints", (*_LOOP, "alpaca_plw.train.batching")),
])
def test_rooms_import_only_what_they_serve(room, forbidden):
    found = {str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.startswith(forbidden))
             for p in sorted((PACKAGE / room).rglob("*.py"))}
    assert {path: bad for path, bad in found.items() if bad} == {}


def test_nothing_in_data_calls_back_into_the_data_flow():
    """`data/pipeline.py` hands a source to the rooms; no room imports it back."""
    offenders = [str(p.relative_to(REPO)) for p in (PACKAGE / "data").rglob("*.py")
                 if p.name != "pipeline.py" or p.parent.name != "data"
                 if "alpaca_plw.data.pipeline" in _imports(p)]
    assert offenders == []


def test_train_config_validates_itself_without_the_loop():
    """`TrainConfig.__post_init__` calls its own checks and `config_checks`, nothing of the loop."""
    found = {name: sorted(m for m in _imports(PACKAGE / "train" / name) if m.startswith("alpaca_plw"))
             for name in ("config.py", "config_checks.py")}
    assert found == {"config.py": ["alpaca_plw.errors", "alpaca_plw.train.config_checks"],
                     "config_checks.py": []}


def test_every_module_reads_in_one_sitting():
    """At most 300 lines a module (issue 21): a longer one is split by concern, not by count."""
    long = {str(p.relative_to(REPO)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300}
    assert long == {}


def test_no_library_module_outside_cli_imports_the_cli():
    offenders = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
                 if "cli" not in p.relative_to(PACKAGE).parts[:1] and p.name != "__main__.py"
                 and any(m.startswith("alpaca_plw.cli") for m in _imports(p))]
    assert offenders == []


def _stats_rows(llama_dir):
    from alpaca_plw import DataOptions, dataset_stats

    sample = REPO / "data" / "sample.json"
    measured = dataset_stats([str(sample), str(REPO / "tests" / "fixtures" / "weights_records.json")],
                             DataOptions(tokenizer=str(llama_dir)))
    return [m.stats for m in measured]


def _render(rows, width: int) -> str:
    from rich.console import Console

    from alpaca_plw.cli.render import stats_table

    console = Console(width=width, file=io.StringIO(), highlight=False, color_system=None)
    console.print(stats_table(rows))
    return console.file.getvalue()


@pytest.mark.parametrize("width", [60, 80, 100, 200])
def test_stats_table_keeps_every_number_whole_at_any_width(llama_dir, width):
    rows = _stats_rows(llama_dir)
    text = _render(rows, width)
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    for s in rows:
        rec = s.recommended_plw
        for value in (f"{s.records:,}", f"{s.total_tokens:,}", f"{s.rg:.3f}",
                      f"{rec.all:.3f} / {rec.mc:.3f} / {rec.gen:.3f}"):
            assert value in text, (width, value)


def test_stats_table_is_one_table_when_wide_and_splits_when_narrow(llama_dir):
    rows = _stats_rows(llama_dir)
    assert _render(rows, 200).count("┏") == 1     # one table with a header row
    assert _render(rows, 60).count("┏") == 0      # vertical key/value tables: no header rows
