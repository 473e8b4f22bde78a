"""The package version, in one small module that every other module may import (the package root
re-exports it as `alpaca_plw.__version__`). `pyproject.toml` states the same version statically;
tests/test_public_names.py checks that the two agree."""

__version__ = "0.1.0"
