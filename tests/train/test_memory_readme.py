"""README's 7B memory table is what the code computes: its snippet is run and its figures compared."""

import ast
import contextlib
import io
import re
import textwrap
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
ROWS = {"fp32 weights": "parameters", "fp32 gradients": "gradients", "AdamW moments": "optimizer",
        "bf16 weight copies": "autocast_copies", "activations": "activations",
        "logits (one chunk)": "logits", "total": "total"}


def readme_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- memory-7b")
    return text[start:text.index("prints the same total", start)]


def test_readme_seven_billion_table_equals_the_estimate_its_command_prints():
    section = readme_section()
    table = {}
    for label, key in ROWS.items():
        row = re.search(r"\|\s*" + re.escape(label) + r"\s*\|\s*([\d.]+)\s*\|\s*([\d.]+)\s*\|", section)
        assert row, f"README memory table lacks the row {label!r}"
        table[key] = (float(row.group(1)), float(row.group(2)))
    snippet = re.search(r"python - <<'EOF'\n(.*?)\n\s*EOF", section, re.S).group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(textwrap.dedent(snippet), {})  # the README's own command
    without, with_checkpointing = map(ast.literal_eval, printed.getvalue().splitlines())
    for key, (plain, checkpointed) in table.items():
        assert (plain, checkpointed) == (without[key], with_checkpointing[key]), key
    assert without["total"] > 140 > with_checkpointing["total"]  # "does not fit ... with it, it does"
