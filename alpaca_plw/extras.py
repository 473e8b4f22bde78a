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
        hint = ""
        if module == "torch" and not has_nvidia_gpu():
            hint = ("; this machine shows no NVIDIA GPU, so install torch's CPU build first (the "
                    "CPU wheel index in PyTorch's install instructions), or pip fetches the "
                    "multi-GB CUDA build")
        raise MissingExtraError(f"{feature} needs {module}, which is not installed: "
                                f"pip install 'alpaca-plw[{extra}]'{hint}")
    return importlib.import_module(module)


def has_nvidia_gpu() -> bool:
    """Whether an NVIDIA driver is visible (nvidia-smi on PATH or the kernel module's proc file)."""
    import os
    import shutil

    return shutil.which("nvidia-smi") is not None or os.path.exists("/proc/driver/nvidia/version")
