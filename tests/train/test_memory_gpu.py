"""The memory estimate against a CUDA run (skipped without a GPU): the activation bytes autograd
saves under CUDA bf16 autocast with torch's own sdpa kernels, and the peak
`torch.cuda.max_memory_allocated` of a real accumulated training step through the trainer's own
wrapping (one GPU with fp32 weights, with and without checkpointing, and one-process FSDP with bf16
gathered weights). Also runnable as a script: `python tests/train/test_memory_gpu.py [OUT.json] [--steps-only]`
prints (and writes) every measurement next to its estimate."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from alpaca_plw.train.memory import estimate_bytes, shape_of

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOKENS = 4096
DEVICE = "cuda"  # a module constant, so the script's logic can be smoke-run on the CPU
TRACE: dict = {}  # bytes allocated after each forward and backward of the last step_peak
SHAPES = {  # hidden, intermediate, layers, heads, kv heads (head_dim 64 and 128)
    "mha": (1024, 2816, 4, 16, 16),
    "gqa": (1024, 2816, 4, 8, 2),
    "step": (2048, 5632, 8, 16, 16),
}


def llama(name: str, dtype=torch.float32, layers: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, depth, heads, kv = SHAPES[name]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers or depth, num_attention_heads=heads,
                         num_key_value_heads=kv, max_position_embeddings=2 * TOKENS,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(dtype)


def cuda_saved_per_token_and_layer(name: str, dtype) -> float:
    """Saved bytes per token and decoder layer on CUDA (difference of 2 and 1 layers, and of
    TOKENS and 2 x TOKENS tokens: weights, their copies and the embedding drop out)."""
    def saved(layers, tokens):
        model = llama(name, dtype, layers).to(DEVICE)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            storage = t.untyped_storage()
            assert not (t.dim() >= 2 and t.shape[-1] == t.shape[-2] == tokens), "T x T saved"
            if storage.data_ptr() not in params:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        ids = torch.randint(0, 32000, (1, tokens), device=DEVICE)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                model.model(input_ids=ids, use_cache=False)
        return sum(seen.values())

    per_layer = [saved(2, t) - saved(1, t) for t in (TOKENS, 2 * TOKENS)]
    return (per_layer[1] - per_layer[0]) / TOKENS


def expected_per_token_and_layer(name: str, bf16_weights: bool) -> float:
    model = llama(name, layers=1).to("meta")
    shape = shape_of(model)
    two = estimate_bytes({**shape, "layers": 2}, TOKENS, 1, bf16_weights, False, False, 4096)
    one = estimate_bytes(shape, TOKENS, 1, bf16_weights, False, False, 4096)
    return (two["activations"] - one["activations"]) / TOKENS


def step_peak(checkpointing: bool, fsdp: bool) -> tuple[int, dict]:
    """Peak bytes of the second of two steps of 2 accumulated micro-batches of TOKENS tokens (the
    AdamW state exists by then) through train.wrap, and the estimate for the same run."""
    from alpaca_plw.train.distributed import Dist
    from alpaca_plw.train.modeling.wrap import wrap_model

    import gc

    cuda = DEVICE == "cuda"
    gc.collect()  # models of earlier measurements, in reference cycles
    if cuda:
        torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated() if cuda else 0
    base = llama("step")
    shape = shape_of(base)
    cfg = types.SimpleNamespace(gradient_checkpointing=checkpointing, loss_chunk=4096, fsdp=fsdp,
                                cpu_offload=False, compile=False)
    model = wrap_model(base, cfg, Dist(0, 1, 0, torch.device(DEVICE, 0) if cuda else
                                       torch.device(DEVICE)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    ids = torch.randint(0, 32000, (1, TOKENS), device=DEVICE)
    weights = torch.ones(1, TOKENS, device=DEVICE)
    prompt = torch.zeros(1, TOKENS, dtype=torch.bool, device=DEVICE)
    for step in range(2):
        if step == 1 and cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for micro in range(2):
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                loss = model(ids, ids, weights, prompt)[0]
            TRACE[f"{step}.{micro} forward"] = torch.cuda.memory_allocated() - before if cuda else 0
            loss.backward()
            del loss
            TRACE[f"{step}.{micro} backward"] = torch.cuda.memory_allocated() - before if cuda else 0
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    TRACE["after step"] = torch.cuda.memory_allocated() - before if cuda else 0
    peak = torch.cuda.max_memory_allocated() - before if cuda else 0
    estimated = estimate_bytes(shape, TOKENS, 1, fsdp, False, checkpointing, 4096, grad_accum=2)
    del model, optimizer, base
    if fsdp and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return peak, estimated


@pytest.mark.parametrize("name", ["mha", "gqa"])
@pytest.mark.parametrize("weights", ["fp32", "bf16"])
def test_cuda_activation_bytes_match_the_cpu_fitted_model(name, weights):
    dtype = torch.float32 if weights == "fp32" else torch.bfloat16
    measured = cuda_saved_per_token_and_layer(name, dtype)
    expected = expected_per_token_and_layer(name, weights == "bf16")
    assert abs(measured - expected) <= 0.02 * expected, (measured, expected)


@pytest.mark.parametrize("checkpointing, fsdp", [(False, False), (True, False), (True, True)])
def test_cuda_step_peak_matches_the_estimate(checkpointing, fsdp):
    peak, estimated = step_peak(checkpointing, fsdp)
    total = sum(v for k, v in estimated.items() if k != "host_offload")
    assert abs(total - peak) <= 0.1 * peak, (total, peak, estimated)


def main(out: str | None, activations: bool = True) -> None:
    results: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)
                     if DEVICE == "cuda" else DEVICE}

    def record(key, value):
        results[key] = value
        print(key, json.dumps(value), flush=True)
        if out:
            with open(out, "w") as f:
                json.dump(results, f, indent=1, sort_keys=True)

    for name in ("mha", "gqa") if activations else ():
        for weights, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            try:
                record(f"activations/{name}/{weights}",
                       {"measured": cuda_saved_per_token_and_layer(name, dtype),
                        "expected": expected_per_token_and_layer(name, weights == "bf16")})
            except Exception as exc:  # noqa: BLE001 - a stage's failure is a result too
                record(f"activations/{name}/{weights}", {"error": repr(exc)[:500]})
    for checkpointing, fsdp in ((False, False), (True, False), (True, True)):
        key = f"step/checkpointing={checkpointing}/fsdp={fsdp}"
        try:
            peak, estimated = step_peak(checkpointing, fsdp)
            total = sum(v for k, v in estimated.items() if k != "host_offload")
            record(key, {"peak": peak, "estimate": total, "ratio": round(total / peak, 4) if peak else None,
                         "terms": estimated, "trace": dict(TRACE)})
        except Exception as exc:  # noqa: BLE001
            record(key, {"error": repr(exc)[:500]})


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None, "--steps-only" not in sys.argv)
