"""`torch_varlen`: the packed-row attention that needs only torch (train/modeling/attention.py).

The CUDA kernel cannot run here, so it is tested in two halves: the adapter that calls it (layouts,
causal flag per torch version, grouped-query heads, head-size padding) against a CPU stand-in with
the kernel's contract, and the reference kernel the same code runs on CPU against attention
computed by hand in float64, then through the whole model: packed = padded to 1e-5, loss and
gradients, and the trainer's own packed run."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import LlamaConfig, LlamaForCausalLM

from alpaca_plw.train.batching.batches import SequenceStore, collate
from alpaca_plw.train.batching.packing import collate_packed
from alpaca_plw.train.modeling import attention
from alpaca_plw.train.modeling.checks import check_speed_paths
from alpaca_plw.train.modeling.model import WeightedCausalLM
from test_packing import _store  # four records of 7, 4, 9 and 3 tokens, prompts weighted 0.3

REPO = Path(__file__).resolve().parents[2]


def _by_hand(q, k, v, lengths, scale):
    """Causal softmax attention record by record, float64: q [N, H, D], k/v [N, Hkv, D]."""
    groups = q.shape[1] // k.shape[1]
    out, start = [], 0
    for n in lengths:
        qs, ks, vs = (t[start:start + n].double() for t in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, dim=1), vs.repeat_interleave(groups, dim=1)
        scores = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
        out.append(torch.einsum("hqk,khd->qhd", scores.softmax(-1), vs))
        start += n
    return torch.cat(out)


def _qkv(lengths, heads=4, kv_heads=2, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    return (torch.randn(n, heads, dim, generator=g), torch.randn(n, kv_heads, dim, generator=g),
            torch.randn(n, kv_heads, dim, generator=g))


def _cu(lengths):
    return torch.tensor(np.concatenate(([0], np.cumsum(lengths))), dtype=torch.int32)


def test_reference_kernel_is_causal_attention_within_each_record():
    lengths = [5, 1, 7, 3]
    q, k, v = _qkv(lengths)
    got = attention.reference_varlen(q, k, v, _cu(lengths), 0.35)
    torch.testing.assert_close(got.double(), _by_hand(q, k, v, lengths, 0.35), atol=1e-6, rtol=1e-6)
    # the plausible wrong version, one causal row over the whole packed row, differs
    whole = _by_hand(q, k, v, [sum(lengths)], 0.35)
    assert (got.double() - whole).abs().max() > 1e-2


def _stand_in(style: str, seen: dict):
    """A CPU function with the contract of torch's `varlen_attn` in torch 2.10 (`is_causal`, no
    grouped-query support) or 2.11+ (`window_size`, `enable_gqa`); it records its arguments."""

    def run(q, k, v, cu_q, cu_k, max_q, max_k, scale, causal, gqa):
        assert q.dim() == 3 and q.shape[-1] % 8 == 0, "the kernel takes [N, H, D], D % 8 == 0"
        assert cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k) and max_q == max_k
        assert causal, "training attention is causal"
        if k.shape[1] != q.shape[1]:
            assert gqa, "grouped-query heads without enable_gqa"
        seen.update(heads=q.shape[1], kv_heads=k.shape[1], dim=q.shape[-1], max=max_q)
        lengths = torch.diff(cu_q).tolist()
        assert max_q == max(lengths)
        return _by_hand(q, k, v, lengths, scale).to(q.dtype)

    if style == "2.10":
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False,
                        return_aux=None, scale=None):
            return run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, is_causal, False)
    else:
        def varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,
                        scale=None, window_size=(-1, -1), enable_gqa=False):
            return run(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale,
                       tuple(window_size) == (-1, 0), enable_gqa)
    return varlen_attn


@pytest.mark.parametrize("style", ["2.10", "2.11"])
@pytest.mark.parametrize("dim", [8, 12])
def test_flash_adapter_passes_the_kernel_what_it_needs(monkeypatch, style, dim):
    lengths = [4, 9, 2]
    q, k, v = _qkv(lengths, dim=dim)
    seen: dict = {}
    fake = _stand_in(style, seen)
    monkeypatch.setattr(attention, "_kernel", lambda: (fake, frozenset(
        __import__("inspect").signature(fake).parameters)))
    got = attention.flash_varlen(q, k, v, _cu(lengths), max(lengths), dim ** -0.5)
    assert got.shape == q.shape
    torch.testing.assert_close(got.double(), _by_hand(q, k, v, lengths, dim ** -0.5),
                               atol=1e-6, rtol=1e-6)
    assert seen["dim"] == -(-dim // 8) * 8  # padded with zero columns, sliced back
    assert seen["kv_heads"] == (2 if style == "2.11" else 4)  # repeated only where the kernel must


def _model(impl, kv_heads=2):
    attention.register()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads,
                         max_position_embeddings=64)
    config._attn_implementation = impl
    return LlamaForCausalLM(config)


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = WeightedCausalLM(model, 4096)(batch.input_ids, batch.targets, batch.weights,
                                        batch.prompt_mask, attention_mask=batch.attention_mask,
                                        position_ids=batch.position_ids, **batch.varlen_kwargs())
    out[0].backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
def test_varlen_packed_loss_and_gradients_equal_padded_sdpa(kv_heads):
    store = _store()
    padded, grads_padded = _loss_and_grads(_model("sdpa", kv_heads), collate(store, np.arange(4)))
    for batch in (collate_packed(store, np.arange(4)), collate(store, np.arange(4))):
        got, grads = _loss_and_grads(_model(attention.NAME, kv_heads), batch)
        for a, b in zip(padded, got):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for name in grads_padded:
            torch.testing.assert_close(grads_padded[name], grads[name], atol=1e-5, rtol=1e-5)


def test_without_the_boundaries_a_packed_row_leaks_and_the_check_sees_it():
    store = _store()
    padded, _ = _loss_and_grads(_model("sdpa"), collate(store, np.arange(4)))
    batch = collate_packed(store, np.arange(4))
    batch.cu_seq_lens = None  # the boundaries lost on the way: one causal sequence
    leaked, _ = _loss_and_grads(_model(attention.NAME), batch)
    assert abs(float(leaked[0].detach() - padded[0].detach())) > 1e-3


def test_the_default_is_varlen_only_for_packed_cuda_runs_of_plain_attention(monkeypatch):
    monkeypatch.setattr(attention, "kernel_available", lambda: True)
    monkeypatch.setattr(attention, "kernel_works", lambda device: True)
    model, cuda = _model("sdpa"), torch.device("cuda")
    assert attention.default_for(model, cuda, True, None) == attention.NAME
    assert attention.default_for(model, cuda, False, None) is None  # padded: the model's own
    assert attention.default_for(model, cuda, True, "sdpa") is None  # the user chose
    assert attention.default_for(model, torch.device("cpu"), True, None) is None
    model.config.sliding_window = 16
    assert "sliding" in attention.supported(model.config)
    assert attention.default_for(model, cuda, True, None) is None
    monkeypatch.setattr(attention, "kernel_works", lambda device: False)  # e.g. no backward
    assert attention.default_for(_model("sdpa"), cuda, True, None) is None
    monkeypatch.setattr(attention, "kernel_available", lambda: False)
    assert attention.default_for(_model("sdpa"), cuda, True, None) is None


def test_the_kernel_self_test_accepts_a_right_kernel_and_rejects_a_wrong_one(monkeypatch):
    """`kernel_works` on the CPU with stand-ins: a kernel with the contract passes, one that
    ignores the record boundaries (one causal row) or cannot run backward does not."""
    seen: dict = {}
    right = _stand_in("2.11", seen)

    def whole_row(q, k, v, cu_q, cu_k, max_q, max_k, **options):
        whole = torch.tensor([0, q.shape[0]], dtype=torch.int32)
        return right(q, k, v, whole, whole, q.shape[0], q.shape[0], **options)

    def no_backward(*args, **options):
        return right(*args, **options).detach()

    for kernel, expected in ((right, True), (whole_row, False), (no_backward, False)):
        attention.kernel_works.cache_clear()
        monkeypatch.setattr(attention, "_kernel", lambda k=kernel: (k, frozenset(
            ("window_size", "enable_gqa", "scale"))))
        assert attention.kernel_works(torch.device("cpu")) is expected, kernel.__name__
    attention.kernel_works.cache_clear()


def test_a_leaking_default_falls_back_to_sdpa_and_keeps_packing(monkeypatch):
    from alpaca_plw.train.modeling import checks

    store = _store()
    model = WeightedCausalLM(_model(attention.NAME), 4096)
    monkeypatch.setattr(checks, "attention_kwargs", lambda model, batch: {})  # boundaries lost
    assert check_speed_paths(model, store, torch.device("cpu"), True, True, False, True,
                             fallback="sdpa")
    assert attention.current(model.model) == "sdpa"
    model = WeightedCausalLM(_model(attention.NAME), 4096)
    assert not check_speed_paths(model, store, torch.device("cpu"), True, True, False, True)


class AllFramesSyncCounter(TorchFunctionMode):
    """Host reads of tensor values from any Python frame (transformers' too), except torch's own
    optimizers (CPU AdamW reads its step counters; fused CUDA AdamW does not)."""

    NAMES = {"item", "tolist", "__bool__", "__float__", "__int__", "nonzero", "cpu", "numpy",
             "any", "all", "unique", "masked_select"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self.NAMES:
            frame = sys._getframe(1)
            where = frame.f_code.co_filename
            if f"torch{'/'}optim" not in where:
                self.calls.append(f"{func.__name__} at {Path(where).name}:{frame.f_lineno}")
        return func(*args, **(kwargs or {}))


def _train_syncs(tmp_path, weights, model_dir, impl):
    from alpaca_plw.train import trainer
    from alpaca_plw.train.config import TrainConfig

    original, seen, losses = trainer._optimizer_step, [], []

    def counted(run, step):
        with AllFramesSyncCounter() as counter:
            record = original(run, step)
        seen.append(counter.calls)
        return record

    trainer._optimizer_step = counted
    try:
        plan = trainer.train(TrainConfig(weights_dir=weights, model=str(model_dir), output_dir=tmp_path,
                                  max_steps=2, device="cpu", warmup_ratio=0.0, micro_batch_size=4,
                                  grad_accum=2, packing=True, max_tokens=96,
                                  attn_implementation=impl),
                      on_step=lambda r: losses.append(r["loss"]))
    finally:
        trainer._optimizer_step = original
    return seen, losses, plan


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from tiny_models import LLAMA, save_tiny_llama

    from alpaca_plw.data.pipeline import DataOptions, make_weights

    model_dir = save_tiny_llama(tmp_path_factory.mktemp("varlen-llama"), hidden_size=16,
                                intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=1)
    records = json.loads((REPO / "data" / "sample.json").read_text(encoding="utf-8"))[:16]
    source = tmp_path_factory.mktemp("varlen-src") / "sixteen.json"
    source.write_text(json.dumps(records), encoding="utf-8")
    weights = tmp_path_factory.mktemp("varlen-w") / "weights"
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(LLAMA)), weights, max_length=48)
    return weights, model_dir


def test_trainer_packed_varlen_reads_nothing_back_and_matches_padded(tiny_run, tmp_path):
    weights, model_dir = tiny_run
    syncs, losses, plan = _train_syncs(tmp_path / "varlen", weights, model_dir, attention.NAME)
    # per optimizer step (2 micro-batches each): the step's own reads after the all-reduce (its
    # finiteness check, its loss sums, its gradient norm), none per micro-batch, none in transformers
    step_files = ("finite.py", "trainer.py", "features.py")
    assert all(len(calls) <= 3 and all(c.split(" at ")[1].startswith(step_files) for c in calls)
               for calls in syncs), syncs
    sdpa_syncs, sdpa_losses, _ = _train_syncs(tmp_path / "sdpa", weights, model_dir, "sdpa")
    assert any(any("masking_utils" in c for c in calls) for calls in sdpa_syncs), \
        "the counter should see transformers' mask read on the sdpa path"
    np.testing.assert_allclose(losses, sdpa_losses, rtol=1e-5, atol=1e-6)
    assert plan.packing and plan.attention == attention.NAME


def test_fsdp_bf16_policy_never_rounds_the_loss_weights():
    """Under the CUDA mixed-precision policy (run here on CPU/gloo) the weights reach the loss in
    fp32: the weight sum equals the host denominator. Casting the root's inputs to bf16 (the FSDP
    default) makes 0.1 into 0.10009765625 and fails this."""
    import torch.distributed as dist

    from alpaca_plw.train.distributed import Dist
    from alpaca_plw.train.modeling.wrap import shard

    store = _store()
    store.weights = np.where(store.weights < 1, np.float32(0.1), store.weights).astype(np.float32)
    batch = collate_packed(store, np.arange(4))
    sel = batch.selection
    model = shard(WeightedCausalLM(_model("sdpa"), 4096), Dist(0, 1, 0, torch.device("cpu")),
                  cpu_offload=False, mixed=True)
    try:
        assert model.model.model.embed_tokens.weight.dtype == torch.float32  # sharded fp32 master
        with torch.no_grad():
            out = model(batch.input_ids, sel.targets, sel.weights, sel.prompt,
                        position_ids=batch.position_ids, index=sel.index)
        assert out[1].dtype == torch.float32
        assert abs(float(out[1]) - sel.weight_sum) <= 1e-6 * sel.weight_sum
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _saved_bytes(model, batch) -> int:
    """Bytes autograd keeps for the backward of one forward (distinct storages)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=batch.input_ids, position_ids=batch.position_ids).logits
    out.float().pow(2).mean().backward()
    return sum(seen.values())


def test_compile_with_checkpointing_compiles_checkpoints_and_trains_like_eager():
    """--compile with --gradient-checkpointing: graphs are compiled (transformers' own
    checkpointing inside a compiled layer compiles nothing), the layers keep only their inputs,
    and the gradients equal the plain eager model's."""
    from alpaca_plw.train.modeling.compile import compile_decoder

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    store = _store()
    batch = collate_packed(store, np.arange(4))
    eager, both, plain = _model("sdpa"), _model("sdpa"), _model("sdpa")
    assert compile_decoder(both, backend="eager", checkpointing=True) == 2
    eager.train(), both.train(), plain.train()
    full, kept = _saved_bytes(plain, batch), _saved_bytes(both, batch)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    assert not torch._dynamo.utils.counters["graph_break"]
    assert kept < 0.6 * full  # checkpointed: a fraction of what the plain forward keeps
    for m in (eager, both):
        m.zero_grad()
        m(input_ids=batch.input_ids, position_ids=batch.position_ids).logits.float().pow(2).mean().backward()
    for (name, a), b in zip(eager.named_parameters(), both.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)
