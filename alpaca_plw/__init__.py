"""alpaca-plw: prompt-loss-weight tools for instruction tuning.

The library is the product; `alpaca_plw.cli` is a thin Typer layer over it. Three subpackages:

- `alpaca_plw.data`: records, token lengths, statistics and R_g, the builders, per-token weights
  (base install: no torch);
- `alpaca_plw.train`: the weighted-loss trainer (the `[train]` extra: torch);
- `alpaca_plw.cli`: the command line and its terminal renderers (nothing imports it).

The public API below is imported lazily, so `import alpaca_plw` costs nothing and needs no torch:

    >>> from alpaca_plw import dataset_stats, DataOptions
    >>> [m.stats.rg for m in dataset_stats(["data/sample.json"], DataOptions())]  # doctest: +SKIP

`alpaca_plw.train` is both the training subpackage and callable: `alpaca_plw.train(cfg)` runs
`alpaca_plw.train.trainer.train(cfg)`.
"""

from __future__ import annotations

import importlib

from alpaca_plw.version import __version__

# public name -> module that defines it
_EXPORTS = {
    "DataOptions": "alpaca_plw.data.pipeline",
    "dataset_stats": "alpaca_plw.data.pipeline",
    "build_dataset": "alpaca_plw.data.pipeline",
    "make_weights": "alpaca_plw.data.pipeline",
    "BuildRule": "alpaca_plw.data.alpaca.build",
    "SHORT": "alpaca_plw.data.alpaca.build",
    "MEDIUM": "alpaca_plw.data.alpaca.build",
    "TINY": "alpaca_plw.data.alpaca.build",
    "target_rule": "alpaca_plw.data.alpaca.build",
    "ColumnMap": "alpaca_plw.data.reading.records",
    "read_weights_dir": "alpaca_plw.data.weights_dir.read",
    "TrainConfig": "alpaca_plw.train.config",
    "PLWError": "alpaca_plw.errors",
    "InputError": "alpaca_plw.errors",
    "TokenizerError": "alpaca_plw.errors",
    "OutputError": "alpaca_plw.errors",
    "OutputExistsError": "alpaca_plw.errors",
    "TargetError": "alpaca_plw.errors",
    "ConfigError": "alpaca_plw.errors",
}

__all__ = sorted([*_EXPORTS, "train", "__version__"])


def __getattr__(name: str):
    if name == "train":
        return importlib.import_module("alpaca_plw.train")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alpaca_plw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
