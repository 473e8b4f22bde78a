"""Regenerate the golden files in tests/golden/ (run: `python tests/regen_golden.py`).

The data goldens (`generate` below) and, after them, the weights golden of tests/data/test_weights.py.

Every golden file is produced by the real `alpaca-plw` entry point run from the repository root on
`data/sample.json` (a relative path, so manifests hold no absolute path) with the shared LLaMA
tokenizer at ../shared/tokenizers/llama. tests/data/test_golden.py runs the same `generate` and
compares byte for byte. Explain every change to these files in CHANGELOG.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT / "tests" / "golden"
LLAMA_DIR = REPO_ROOT.parent / "shared" / "tokenizers" / "llama"
SOURCE = "data/sample.json"

# golden name -> CLI arguments; "{out}" is replaced by the temporary output directory.
STATS = "stats.jsonl"
BUILDS = {
    "sample-short": "build-short",
    "sample-medium": "build-medium",
    "sample-tiny": "build-tiny",
}


def golden_names() -> list[str]:
    names = [STATS]
    for stem in BUILDS:
        names += [f"{stem}.json", f"{stem}.manifest.json"]
    return sorted(names)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALPACA_PLW_TOKENIZER": str(LLAMA_DIR), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "alpaca_plw", *args], cwd=REPO_ROOT, env=env,
                          check=False, capture_output=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"alpaca-plw {' '.join(args)} exited {proc.returncode}:\n"
                           f"{proc.stderr.decode('utf-8', 'replace')}")
    return proc


def generate(out_dir: Path) -> dict[str, bytes]:
    """Run the commands behind every golden file; return {golden name: bytes}."""
    if not (LLAMA_DIR / "tokenizer.model").is_file():
        raise FileNotFoundError(f"the shared tokenizer is missing: {LLAMA_DIR}")
    files = {STATS: _run(["stats", "--json", SOURCE]).stdout}
    for stem, command in BUILDS.items():
        out = out_dir / f"{stem}.json"
        _run([command, SOURCE, "-o", str(out)])
        files[f"{stem}.json"] = out.read_bytes()
        files[f"{stem}.manifest.json"] = out.with_suffix(".manifest.json").read_bytes()
    return files


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    GOLDEN_DIR.mkdir(exist_ok=True)  # other golden files (e.g. the weights') are left alone
    for name, data in sorted(files.items()):
        path = GOLDEN_DIR / name
        changed = not path.exists() or path.read_bytes() != data
        path.write_bytes(data)
        print(f"{'updated' if changed else 'unchanged'}: {path.relative_to(REPO_ROOT)}")


# --- tests/golden/weights_handcrafted.json, owned by tests/data/test_weights.py ----------------------
# Kept apart from `generate` above: it pins `alpaca-plw weights` on tests/fixtures/weights_records.json
# and is compared by tests/data/test_weights.py. main() leaves golden files it does not list alone.

def regen_weights_golden() -> None:
    """Rewrite tests/golden/weights_handcrafted.json (the same code as `test_weights.py --regen`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    import test_weights

    test_weights.regenerate_golden()


# --- tests/golden/chat_weights.json, owned by tests/data/test_chat_weights.py --------------------

def regen_chat_weights_golden() -> None:
    """Rewrite tests/golden/chat_weights.json (the same code as `test_chat_weights.py --regen`)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    import test_chat_weights

    test_chat_weights.regenerate_golden()


if __name__ == "__main__":
    main()
    regen_weights_golden()
    regen_chat_weights_golden()
