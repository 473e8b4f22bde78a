"""Review of FSDP's rank-0 loading (modeling/wrap.py `_fill_from_rank0`): two gloo processes, rank 1
on `meta`, must still train exactly like one process with LoRA, tied embeddings and --cpu-offload.
One torchrun spawn runs every 2-process training (tests/train/dist_worker.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_tiny_llama

from alpaca_plw.train.config import TrainConfig
from alpaca_plw.train.trainer import train

WORKER = Path(__file__).resolve().parents[1] / "train" / "dist_worker.py"
COMMON = dict(micro_batch_size=2, max_steps=3, lr=1e-3, device="cpu", warmup_ratio=0.0,
              packing=False)
LORA = dict(lora_r=4, lora_dropout=0.0)
RUNS = {  # name: (2-process overrides, single-process reference, weights file)
    "fsdp-lora": (dict(fsdp=True, **LORA), "lora", "adapter_model.safetensors"),
    "fsdp-tied": (dict(fsdp=True, model="TIED"), "tied", "model.safetensors"),
    "offload-tied": (dict(cpu_offload=True, model="TIED"), "tied", "model.safetensors"),
    "offload-lora": (dict(cpu_offload=True, **LORA), "lora", "adapter_model.safetensors"),
    "fsdp-lora-bf16": (dict(fsdp=True, base_dtype="bfloat16", **LORA), "lora-bf16",
                       "adapter_model.safetensors"),
    "offload-resumed": (dict(cpu_offload=True, save_steps=2, resume=True), "full",
                        "model.safetensors"),
}
STOPPED = {"offload-stopped": dict(cpu_offload=True, save_steps=2, _crash_at=2,
                                   _dir="offload-resumed")}  # runs before offload-resumed


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("rank0-models")
    return {"plain": save_tiny_llama(root / "plain"),
            "tied": save_tiny_llama(root / "tied", tie_word_embeddings=True)}


@pytest.fixture(scope="module")
def single(twelve_train_weights, models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rank0-single")
    for name, model, extra in (("lora", models["plain"], LORA), ("tied", models["tied"], {}),
                               ("lora-bf16", models["plain"], dict(base_dtype="bfloat16", **LORA)),
                               ("full", models["plain"], {})):
        train(TrainConfig(weights_dir=twelve_train_weights, model=str(model),
                          output_dir=root / name, grad_accum=4, **COMMON, **extra))
    return root


@pytest.fixture(scope="module")
def two(twelve_train_weights, models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rank0-two")
    ordered = {name: o for name, (o, _, _) in RUNS.items() if name != "offload-resumed"}
    ordered.update(STOPPED)
    ordered["offload-resumed"] = RUNS["offload-resumed"][0]
    runs = {name: {k: (str(models["tied"]) if v == "TIED" else v) for k, v in o.items()}
            for name, o in ordered.items()}
    base = dict(weights_dir=str(twelve_train_weights), model=str(models["plain"]),
                output_dir=str(root), grad_accum=2, **COMMON)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               "2", str(WORKER), json.dumps({"base": base, "runs": runs})]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    (root / "stderr.txt").write_text(result.stderr)
    return root


def _weights(single, two, run):
    _, reference, weights_file = RUNS[run]
    assert (two / run / weights_file).is_file(), (two / "stderr.txt").read_text()[-3000:]
    return (load_file(str(single / reference / weights_file)),
            load_file(str(two / run / weights_file)))


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_rank0_loading_trains_like_one_process(single, two, run):
    a, b = _weights(single, two, run)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=f"{run}: {name}")




@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS)
def test_rank0_loading_saves_the_same_tensors_as_one_process(single, two, run):
    a, b = _weights(single, two, run)
    assert sorted(b) == sorted(a)
