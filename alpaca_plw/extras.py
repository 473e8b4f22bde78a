"""Optional dependencies: one clear error naming the extra when a feature's library is missing."""

from __future__ import annotations

import importlib
import importlib.util

from alpaca_plw.errors import MissingExtraError

# module -> the pip extra that provides it
EXTRAS = {
    "torch": "train",
    "matplotlib": "plot",
    "jinja2": "chat",
}


def require(module: str, feature: str, extra: str | None = None):
    """Import and return `module`, or raise `MissingExtraError` saying which extra installs it.

    `feature` names what needs it, as the user typed it (e.g. "alpaca-plw train").
    """
    extra = extra or EXTRAS.get(module, module)
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(
            f"{feature} needs {module}, which is not installed: pip install 'alpaca-plw[{extra}]'")
    return importlib.import_module(module)
