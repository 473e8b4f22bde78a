"""Length and ratio histograms (matplotlib, the optional `plot` extra)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alpaca_plw.data.outputs.atomic import atomic_write
from alpaca_plw.errors import ConfigError


def plot_lengths(measured, path: Path) -> None:
    """Per dataset: prompt and completion length histograms, and the log10 per-record ratio
    histogram with log10 R_g marked. Written atomically as PNG."""
    if path.suffix.lower() != ".png":
        raise ConfigError(f"--plot: expected a .png file name, got {path}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib: pip install 'alpaca-plw[plot]' (or pip install matplotlib)"
        ) from None
    rows = len(measured)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 3.6 * rows), squeeze=False)
    for (ax_p, ax_c, ax_r), m in zip(axes, measured):
        lengths, stats = m.lengths, m.stats
        top = max(int(lengths.prompt.max()), int(lengths.completion.max()), 1)
        bins = np.linspace(0, top, 60)
        ax_p.hist(lengths.prompt, bins=bins, color="tab:blue")
        ax_p.set(title=f"{stats.dataset}: prompt tokens", xlabel="tokens", ylabel="records")
        ax_c.hist(lengths.completion, bins=bins, color="tab:orange")
        ax_c.set(title=f"{stats.dataset}: completion tokens", xlabel="tokens")
        ratios = lengths.ratios()
        ok = np.isfinite(ratios) & (ratios > 0)
        ax_r.hist(np.log10(ratios[ok]), bins=60, color="tab:green")
        ax_r.axvline(np.log10(stats.rg), color="black", linestyle="--",
                     label=f"R_g = {stats.rg:.3f}")
        ax_r.axvline(0, color="grey", linewidth=0.8)
        ax_r.set(title=f"{stats.dataset}: log10(completion / prompt)", xlabel="log10 ratio")
        ax_r.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
