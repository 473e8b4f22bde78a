"""`--base-dtype` (LoRA's frozen base): bfloat16 holds the base in 2 bytes per parameter while the
adapter, its gradients and optimizer state stay float32; auto is bfloat16 on CUDA, float32 on CPU."""

import pytest
import torch

from alpaca_plw.train.modeling.lora import base_dtype_name, load_dtype, load_trainable


def test_auto_base_dtype_is_bfloat16_on_cuda_and_float32_on_cpu(train_weights, tiny_llama,
                                                                 tiny_config, tmp_path):
    assert base_dtype_name("auto", "cuda") == "bfloat16"
    assert base_dtype_name("auto", "cpu") == "float32"
    assert base_dtype_name("float32", "cuda") == "float32"
    assert load_dtype(tiny_config(train_weights, tiny_llama, tmp_path, lora_r=4)) == torch.float32
    assert load_dtype(tiny_config(train_weights, tiny_llama, tmp_path)) == torch.float32  # full FT
    assert load_dtype(tiny_config(train_weights, tiny_llama, tmp_path, lora_r=4,
                                  base_dtype="bfloat16")) == torch.bfloat16


def test_lora_on_a_bfloat16_base_trains_a_float32_adapter(train_weights, tiny_llama, tiny_config,
                                                          read_log, tmp_path):
    from safetensors.torch import load_file

    from alpaca_plw.train.loading import load_model as _load_model
    from alpaca_plw.train.trainer import train

    cfg = tiny_config(train_weights, tiny_llama, tmp_path / "run", lora_r=4, lora_dropout=0.0,
                      lr=1e-2, base_dtype="bfloat16")
    model = load_trainable(cfg, None, lambda source: _load_model(cfg, source, 0))
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    train(cfg)
    losses = [r["loss"] for r in read_log(tmp_path / "run")]
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # finite, logged
    adapter = load_file(str(tmp_path / "run" / "adapter_model.safetensors"))
    assert {v.dtype for v in adapter.values()} == {torch.float32}
    assert any(v.abs().max() > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0


@pytest.mark.parametrize("args, needle", [
    (["--base-dtype", "bfloat16"], "--base-dtype needs --lora-r"),
    (["--lora-r", "4", "--base-dtype", "float16"], "--base-dtype must be one of auto, float32, bfloat16"),
])
def test_bad_base_dtype_is_one_error_line(run_cli, train_weights, tiny_llama, tmp_path, args, needle):
    code, stdout, err = run_cli(["train", train_weights, "--model", tiny_llama, "--output-dir",
                                 tmp_path / "run", "--device", "cpu", "--dry-run", *args])
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
