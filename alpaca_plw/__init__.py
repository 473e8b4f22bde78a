"""alpaca-plw: prompt-loss-weight tools for instruction tuning.

The library is the product; `alpaca_plw.cli` is a thin Typer layer over it. Heavy dependencies
(datasets, transformers, torch) are imported only by the functions that need them.
"""

__version__ = "0.1.0"
