"""The command line: `app` assembles one module per command group (`data`, `train`); `render` turns
library results into rich tables. Nothing in the library imports this package."""

from alpaca_plw.cli.app import app, main

__all__ = ["app", "main"]
