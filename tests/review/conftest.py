"""Fixtures for the adversarial review tests: the trainer-feature fixtures of tests/train (a tiny
Llama, small weights folders), loaded from tests/train/conftest.py rather than copied."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "train_fixtures", Path(__file__).resolve().parents[1] / "train" / "conftest.py")
train_fixtures = importlib.util.module_from_spec(_spec)
sys.modules["train_fixtures"] = train_fixtures  # `from train_fixtures import make_weights_dir`
_spec.loader.exec_module(train_fixtures)

make_tiny_llama = train_fixtures.make_tiny_llama
make_weights_dir = train_fixtures.make_weights_dir
tiny_llama = train_fixtures.tiny_llama
train_weights = train_fixtures.train_weights
twelve_train_weights = train_fixtures.twelve_train_weights
tiny_config = train_fixtures.tiny_config
read_log = train_fixtures.read_log
