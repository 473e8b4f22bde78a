"""The per-GPU memory estimate (`train --dry-run`) at 7B scale and through the CLI; each term is
checked against a measured run in test_memory_measured.py."""

import json
from pathlib import Path

import pytest
from tiny_models import save_tiny_llama
import torch

from alpaca_plw.data.pipeline import DataOptions, make_weights
from alpaca_plw.train.memory import GIB, estimate, model_shape

REPO = Path(__file__).resolve().parents[2]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"


def test_seven_billion_state_is_16_bytes_per_parameter_split_by_fsdp(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32).save_pretrained(tmp_path)
    shape = model_shape(str(tmp_path))  # counted on the meta device, no weights
    n = shape["params"]
    assert n == 6_738_415_616  # LLaMA-7B
    one = estimate(shape, 4096, 1, False, False, True, 4096)
    state = one["parameters"] + one["gradients"] + one["optimizer"]
    assert state == pytest.approx(16 * n / GIB, abs=0.03)
    eight = estimate(shape, 4096, 8, True, False, True, 4096)
    gathered = 4 * n / 32 / GIB
    assert eight["optimizer"] == pytest.approx(8 * n / 8 / GIB, abs=0.01)
    assert eight["parameters"] == pytest.approx(4 * n / 8 / GIB + gathered, abs=0.01)
    ddp = estimate(shape, 4096, 8, False, False, True, 4096)
    assert ddp["gradients"] == pytest.approx(4 * n / GIB, abs=0.01)  # views of DDP's buckets
    accumulating = estimate(shape, 4096, 8, True, False, True, 4096, grad_accum=4)
    assert accumulating["gradients"] - eight["gradients"] == pytest.approx(4 * n / GIB, abs=0.01)
    offload = estimate(shape, 4096, 1, False, True, True, 4096)
    assert offload["optimizer"] == 0 and offload["host_offload"] == pytest.approx(16 * n / GIB, abs=0.01)
    assert offload["total"] < 141e9 / GIB < one["total"] + 30  # fits one H200 with offload
    recompute = estimate(shape, 4096, 1, False, False, False, 4096)
    assert recompute["activations"] > 9 * one["activations"]  # checkpointing is what saves them
    assert recompute["autocast_copies"] == pytest.approx(2 * shape["linear_params"] / GIB, abs=0.01)
    # the measurement: ~56 x hidden bytes per token and layer, ~142 GiB in all at 4,096
    assert recompute["activations"] == pytest.approx(56 * 4096 * 4096 * 32 / GIB, rel=0.01)
    assert recompute["total"] > 141e9 / GIB  # does not fit one H200 without checkpointing


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory):
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-mem"), hidden_size=16,
                                intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
                                max_position_embeddings=64)
    records = json.loads((REPO / "data" / "sample.json").read_text(encoding="utf-8"))[:6]
    source = tmp_path_factory.mktemp("src-mem") / "six.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    weights = tmp_path_factory.mktemp("w-mem") / "weights"
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(LLAMA)), weights, max_length=48)
    return model_dir, weights


def test_dry_run_prints_a_memory_estimate(run_inputs, run_cli, tmp_path):
    model_dir, weights = run_inputs
    code, stdout, err = run_cli(["train", weights, "--model", model_dir, "--output-dir",
                                 tmp_path / "run", "--dry-run", "--device", "cpu"])
    assert code == 0, err
    assert "memory per GPU" in stdout and "optimizer" in stdout
    assert not (tmp_path / "run").exists()


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without a GPU, whatever it has (set_device would fail the test)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def refuse(*args, **kwargs):
        raise AssertionError("CUDA touched")

    monkeypatch.setattr(torch.cuda, "set_device", refuse)
    monkeypatch.setattr(torch.cuda, "get_device_properties", refuse)


@pytest.mark.parametrize("gpu_memory, verdict", [(None, "unknown: no GPU here; give --gpu-memory"),
                                                 (80, "yes: "), (1e-4, "no: ")])
def test_dry_run_plans_a_cuda_run_on_a_machine_without_a_gpu(run_inputs, run_cli, tmp_path, no_cuda,
                                                             gpu_memory, verdict):
    model_dir, weights = run_inputs
    extra = [] if gpu_memory is None else ["--gpu-memory", gpu_memory]
    code, stdout, err = run_cli(["train", weights, "--model", model_dir, "--output-dir",
                                 tmp_path / "run", "--dry-run", "--device", "cuda", *extra])
    assert code == 0 and "Traceback" not in err, err
    assert "cuda:0 (bf16 autocast)" in stdout and "packed" in stdout  # the GPU recipe's plan
    assert "memory per GPU" in stdout and "bf16 copies" in stdout and verdict in stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_training_on_a_device_torch_cannot_use_is_one_error_line(run_inputs, run_cli, tmp_path,
                                                                 no_cuda, monkeypatch, device):
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    model_dir, weights = run_inputs
    code, _, err = run_cli(["train", weights, "--model", model_dir, "--output-dir",
                            tmp_path / "run", "--device", device, "--max-steps", "1"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert f"--device {device}" in err and "--dry-run" in err
    assert not (tmp_path / "run").exists()


def test_a_device_torch_does_not_know_is_one_error_line(run_inputs, run_cli, tmp_path):
    model_dir, weights = run_inputs
    code, _, err = run_cli(["train", weights, "--model", model_dir, "--output-dir",
                            tmp_path / "run", "--device", "gpu0", "--dry-run"])
    assert code == 2 and "--device gpu0: not a device torch knows" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_gpu_memory_without_dry_run_is_one_error_line(run_inputs, run_cli, tmp_path):
    model_dir, weights = run_inputs
    code, _, err = run_cli(["train", weights, "--model", model_dir, "--output-dir",
                            tmp_path / "run", "--device", "cpu", "--gpu-memory", "80"])
    assert code == 2 and "--gpu-memory needs --dry-run" in err and "Traceback" not in err, err



def test_cpu_offload_in_one_process_trains_like_the_plain_process(run_inputs, tmp_path):
    from safetensors.torch import load_file

    from alpaca_plw.train.config import TrainConfig
    from alpaca_plw.train.trainer import train

    model_dir, weights = run_inputs
    base = dict(weights_dir=weights, model=str(model_dir), micro_batch_size=2, grad_accum=1,
                max_steps=2, lr=1e-3, device="cpu", warmup_ratio=0.0)
    train(TrainConfig(output_dir=tmp_path / "plain", **base))
    try:
        train(TrainConfig(output_dir=tmp_path / "offload", cpu_offload=True, **base))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    a = load_file(str(tmp_path / "plain" / "model.safetensors"))
    b = load_file(str(tmp_path / "offload" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)
