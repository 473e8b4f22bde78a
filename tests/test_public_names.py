"""The public API keeps its names through the moves of issue 21: each name below was exported by
its package's `__init__` before the move (taken from those files), and each still imports."""

from __future__ import annotations

import importlib

import pytest

# package -> the names its `__init__` exported before issue 21
PUBLIC = {
    "alpaca_plw": (
        "BuildRule", "ColumnMap", "ConfigError", "DataOptions", "InputError", "MEDIUM",
        "OutputError", "OutputExistsError", "PLWError", "SHORT", "TINY", "TargetError",
        "TokenizerError", "TrainConfig", "__version__", "build_dataset", "dataset_stats",
        "make_weights", "read_weights_dir", "target_rule", "train"),
    "alpaca_plw.data": (),   # a docstring only: no names
    "alpaca_plw.train": ("train", "TrainConfig"),
    "alpaca_plw.study": (),  # a docstring only: no names
}


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_every_public_name_of_before_the_move_still_imports(package):
    module = importlib.import_module(package)
    missing = [name for name in PUBLIC[package] if getattr(module, name, None) is None]
    assert missing == []


def test_the_top_level_all_is_unchanged():
    import alpaca_plw

    assert sorted(alpaca_plw.__all__) == sorted(PUBLIC["alpaca_plw"])


def test_the_train_package_is_still_callable_and_its_names_are_the_trainers():
    import alpaca_plw
    from alpaca_plw.train.config import TrainConfig

    assert callable(alpaca_plw.train)
    assert alpaca_plw.train.TrainConfig is TrainConfig is alpaca_plw.TrainConfig


def test_the_version_has_one_source_that_pyproject_agrees_with():
    import tomllib
    from pathlib import Path

    import alpaca_plw
    from alpaca_plw.version import __version__

    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"] == __version__
    assert alpaca_plw.__version__ is __version__
