"""The `report` command: one self-contained HTML page for a sweep (library: study/report.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from alpaca_plw.cli.options import Force, err, guard


def report(
    sweep_dir: Annotated[Path, typer.Argument(help="A folder written by `alpaca-plw sweep`.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The HTML file to write.")] = Path("report.html"),
    scores: Annotated[Optional[list[Path]], typer.Option("--scores", help="More scores (an `eval -o` CSV, eval.json or lm-eval results JSON); repeatable. The runs' own eval.json are always read.", show_default=False)] = None,
    base: Annotated[Optional[str], typer.Option("--base", help="Base model for the weight distance [default: the sweep's --model].", show_default=False)] = None,
    force: Force = False,
) -> None:
    """Write one self-contained HTML page with the sweep's data statistics and R_g, the guide's
    recommendation, every run's curves, the scores per benchmark, the paper's fit and the
    stability and distance of each run. No script, nothing loaded from the network."""
    from alpaca_plw.extras import require

    def run() -> None:
        require("matplotlib", "alpaca-plw report", "study")
        require("torch", "alpaca-plw report")
        from alpaca_plw.data.outputs.atomic import atomic_write, text_writer
        from alpaca_plw.data.outputs.file_output import file_output
        from alpaca_plw.study.report import build_report
        from alpaca_plw.study.report_html import render_html

        inputs = [("sweep", sweep_dir), *[("scores", s) for s in scores or []]]
        with file_output(output, inputs, force):  # never over an input; locked
            page = render_html(build_report(sweep_dir, list(scores or []), base))
            atomic_write(output, text_writer(page))
        err.print(f"wrote {output}", markup=False)

    guard(run)
