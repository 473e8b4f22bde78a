"""README's figures for the real Alpaca data are the tool's: `alpaca-plw stats` on
../shared/data/alpaca_data.json, through the library the command calls."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_readme_quotes_the_stats_of_the_real_alpaca_data(alpaca_path, llama_dir):
    from alpaca_plw import DataOptions, dataset_stats

    [alpaca] = dataset_stats([str(alpaca_path)], DataOptions(tokenizer=str(llama_dir)))
    s = alpaca.stats
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    paragraph = readme[readme.index("Alpaca's `alpaca_data.json` (`alpaca-plw stats"):]
    paragraph = paragraph[: paragraph.index("\n\n")]
    assert f"{s.records:,} records" in paragraph
    assert f"{s.total_tokens:,} tokens in all" in paragraph
    assert f"({s.prompt_tokens:,} prompt, {s.completion_tokens:,} completion)" in paragraph
    assert f"**R_g = {s.rg:.3f}**" in paragraph
    assert f"mean of per-record ratios {s.rg_mean_of_ratios:.3f}, median {s.rg_median:.3f}" in paragraph
    plw = s.recommended_plw
    assert f"is {plw.all:.3f} / {plw.mc:.3f} / {plw.gen:.3f}" in paragraph
    comment = re.search(r"recommended_plw\.all\)\s+# (\S+) (\S+)", readme)
    assert comment and float(comment.group(1)) == s.rg and float(comment.group(2)) == plw.all
