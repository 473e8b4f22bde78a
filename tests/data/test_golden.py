"""Golden files: `stats --json` and the three built datasets (with manifests) of data/sample.json,
compared byte for byte. Regenerate them with `python tests/regen_golden.py` and explain the change
in CHANGELOG.md."""

from __future__ import annotations

import difflib
import json

import pytest
import regen_golden


@pytest.fixture(scope="module")
def generated(tmp_path_factory, llama_dir) -> dict[str, bytes]:
    return regen_golden.generate(tmp_path_factory.mktemp("golden"))


def test_golden_directory_holds_every_data_golden_file():
    present = {p.name for p in regen_golden.GOLDEN_DIR.iterdir()}
    assert set(regen_golden.golden_names()) <= present


@pytest.mark.parametrize("name", regen_golden.golden_names())
def test_output_matches_golden_file_byte_for_byte(name, generated):
    expected = (regen_golden.GOLDEN_DIR / name).read_bytes()
    got = generated[name]
    if got != expected:
        diff = "\n".join(list(difflib.unified_diff(
            expected.decode("utf-8").splitlines(), got.decode("utf-8").splitlines(),
            f"golden/{name}", "now", lineterm="", n=1))[:40])
        pytest.fail(f"{name} differs from its golden file "
                    f"(regenerate with `python tests/regen_golden.py` if intended):\n{diff}")


@pytest.mark.parametrize("name", regen_golden.golden_names())
def test_golden_files_are_canonical_json_without_absolute_paths(name, repo_root):
    text = (regen_golden.GOLDEN_DIR / name).read_text(encoding="utf-8")
    assert str(repo_root) not in text and str(repo_root.parent) not in text
    docs = ([json.loads(line) for line in text.splitlines()] if name.endswith(".jsonl")
            else [json.loads(text)])
    assert docs
    if name.endswith(".manifest.json"):
        manifest = docs[0]
        assert manifest["source"]["path"] == "data/sample.json"
        assert list(manifest) == sorted(k for k in manifest if k != "provenance") + ["provenance"]
    if name == regen_golden.STATS:
        assert text == json.dumps(docs[0], sort_keys=True, ensure_ascii=False) + "\n"


def test_golden_builds_agree_with_golden_stats():
    """The three goldens tell one consistent story: counts add up and every build keeps the
    source's digest."""
    stats = json.loads((regen_golden.GOLDEN_DIR / regen_golden.STATS).read_text(encoding="utf-8"))
    for stem in regen_golden.BUILDS:
        manifest = json.loads((regen_golden.GOLDEN_DIR / f"{stem}.manifest.json").read_text())
        built = json.loads((regen_golden.GOLDEN_DIR / f"{stem}.json").read_text())
        counts = manifest["counts"]
        assert counts["source"] == stats["records"] == manifest["source"]["records"]
        assert counts["kept"] + counts["dropped"] == counts["source"]
        assert len(built) == counts["kept"] == manifest["stats"]["records"]
        assert manifest["tokenizer"] == stats["tokenizer"]
