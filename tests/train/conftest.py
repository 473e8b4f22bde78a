"""Fixtures shared by the trainer-feature tests: one tiny Llama and small weights folders per
session, cut from sample records at 48 tokens with PLW 0.1. Records whose prompt alone fills 48
tokens are skipped by `weights`, so a folder holds fewer records than the slice it is made from
(training: slice 0-11, 4 records; evaluation: slice 12-23); the 2-process tests use a slice that
yields 12 and assert that count."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_models import save_tiny_llama

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"
SAMPLE = REPO / "data" / "sample.json"


make_tiny_llama = save_tiny_llama  # the name the trainer-feature tests use


def make_weights_dir(tmp_path_factory, first: int, count: int, plw: float = 0.1) -> Path:
    from alpaca_plw.data.pipeline import DataOptions, make_weights

    records = json.loads(SAMPLE.read_text(encoding="utf-8"))[first : first + count]
    source = tmp_path_factory.mktemp("src") / f"records-{first}.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    out = tmp_path_factory.mktemp("w") / "weights"
    make_weights(str(source), plw, DataOptions(tokenizer=str(LLAMA)), out, max_length=48)
    return out


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama-features"))


@pytest.fixture(scope="session")
def train_weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory, 0, 12)


@pytest.fixture(scope="session")
def heldout_weights(tmp_path_factory) -> Path:
    return make_weights_dir(tmp_path_factory, 12, 12)


@pytest.fixture(scope="session")
def twelve_train_weights(tmp_path_factory) -> Path:
    """Sample records 0-47, of which 12 fit 48 tokens (the 2-process tests' training set)."""
    return make_weights_dir(tmp_path_factory, 0, 48)


@pytest.fixture(scope="session")
def odd_heldout_weights(tmp_path_factory) -> Path:
    """Sample records 24-50, of which 5 fit 48 tokens: an odd evaluation set (2 ranks x
    micro-batches of 2 split it unevenly)."""
    return make_weights_dir(tmp_path_factory, 24, 27)


def _tiny_config(weights_dir, model, out, **overrides):
    """Three steps of 4 records (2 micro x 2 accum) on CPU, lr 1e-3, no warmup."""
    from alpaca_plw.train.config import TrainConfig

    base = dict(weights_dir=weights_dir, model=str(model), output_dir=out, micro_batch_size=2,
                batch_size=4, max_steps=3, lr=1e-3, device="cpu", warmup_ratio=0.0)
    base.update(overrides)
    return TrainConfig(**base)


def _read_log(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(weights_dir, model, out, **overrides) -> TrainConfig`."""
    return _tiny_config


@pytest.fixture(scope="session")
def read_log():
    """`read_log(run_dir) -> list of log.jsonl records`."""
    return _read_log
