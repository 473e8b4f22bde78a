"""Other libraries' warnings stay off the terminal unless --verbose: a LoRA run through the real
entry point (a fresh interpreter, as a user runs it) prints transformers' deprecation warning only
with --verbose; alpaca-plw's own lines show either way."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_third_party_warnings_are_hidden_and_ours_are_not():
    import warnings

    from alpaca_plw.cli.app import quiet_other_libraries

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_other_libraries()
        for module in ("transformers.modeling_utils", "peft.tuners",
                       "alpaca_plw.train.modeling.checks"):
            warnings.warn_explicit("deprecated", FutureWarning, "x.py", 1, module=module)
    assert [w.filename for w in seen] == ["x.py"] and len(seen) == 1  # only alpaca_plw's


@pytest.mark.slow
def test_a_lora_run_shows_library_warnings_only_with_verbose(tmp_path, llama_dir):
    from tiny_models import save_tiny_llama

    from alpaca_plw.data.pipeline import DataOptions, make_weights

    model = save_tiny_llama(tmp_path / "model")
    source = tmp_path / "four.json"
    source.write_text(json.dumps(json.loads((REPO / "data" / "sample.json").read_text())[:4]))
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(llama_dir)), tmp_path / "w",
                 max_length=48)
    env = {**os.environ, "ALPACA_PLW_TOKENIZER": str(llama_dir), "HF_HUB_OFFLINE": "1"}
    stderr = {}
    for name, first in (("quiet", []), ("verbose", ["--verbose"])):
        done = subprocess.run([sys.executable, "-m", "alpaca_plw", *first, "train", tmp_path / "w",
                               "--model", model, "--output-dir", tmp_path / name, "--lora-r", "2",
                               "--max-steps", "1", "--warmup-ratio", "0", "--device", "cpu",
                               "--micro-batch-size", "2", "--batch-size", "2"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr
        stderr[name] = done.stderr
    assert "Warning" not in stderr["quiet"] and "model ready" in stderr["quiet"]
    assert "model ready" in stderr["verbose"]
    # transformers 5.x warns that peft's is_gradient_checkpointing is deprecated; where a version
    # stops warning, --verbose simply has nothing more to show
    if "FutureWarning" in stderr["verbose"]:
        assert "is_gradient_checkpointing" in stderr["verbose"]
