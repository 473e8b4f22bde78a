"""Each term of the memory estimate (alpaca_plw.train.memory) against a measured CPU run of a small
Llama under bf16 autocast, the recipe the estimate describes.

What is measured, never derived from the estimate's own arithmetic:
- weights, gradients, optimizer state: the bytes of the real tensors after one AdamW step;
- autocast copies and activations: the bytes autograd saves in a forward (`saved_tensors_hooks`,
  deduplicated by storage, the parameters themselves left out), at two token counts: what grows
  with the tokens is activations, what does not is the bf16 weight copies;
- gradient checkpointing: the peak of the bytes allocated during a forward and backward (a
  dispatch mode that follows every storage until it is freed).
Attention is sdpa on one unpadded record, whose CPU kernel keeps q, k, v, the output and a
log-sum-exp per head and token like the CUDA flash kernel; no saved tensor may be T x T.
"""

from __future__ import annotations

import types
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from alpaca_plw.train.memory import estimate_bytes, lora_params, shape_of
from alpaca_plw.train.modeling.lora import add_adapter, target_pattern

T = 80  # tokens of the measured record; differs from every dimension, so no activation is T x T
LORA = types.SimpleNamespace(lora_r=4, lora_alpha=16.0, lora_dropout=0.05, lora_target=None)
SHAPES = {  # hidden, intermediate, heads, kv heads
    "mha": (64, 176, 4, 4),
    "gqa": (96, 256, 6, 2),
}


def tiny(shape="mha", layers=2, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, heads, kv = SHAPES[shape]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=inter,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, max_position_embeddings=512,
                         attn_implementation="sdpa")
    return LlamaForCausalLM(config).to(dtype)


def with_lora(model):
    """The trainer's own adapter (alpaca_plw.train.modeling.lora), and its parameter count."""
    adapters = lora_params(shape_of(model), LORA.lora_r, target_pattern(model, None))
    return add_adapter(model, LORA), adapters


def saved_bytes(model, tokens: int, full_logits: bool = False) -> int:
    """Bytes autograd saves in one forward of `tokens` tokens under CPU bf16 autocast, each
    storage once, the parameters left out; fails on a T x T tensor."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        assert not (t.dim() >= 2 and t.shape[-1] == t.shape[-2] == tokens), "T x T scores saved"
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(1))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if full_logits:
                base(input_ids=ids, use_cache=False).logits
            else:
                base.get_decoder()(input_ids=ids, use_cache=False).last_hidden_state
    return sum(seen.values())


def copies_and_activations(model, tokens: int = T, full_logits: bool = False):
    """(bytes that do not grow with the tokens: the weight copies, activation bytes at `tokens`)."""
    once, twice = saved_bytes(model, tokens, full_logits), saved_bytes(model, 2 * tokens, full_logits)
    copies = 2 * once - twice
    return copies, once - copies


def one_gpu(model, tokens=T, checkpointing=False, **options):
    return estimate_bytes(shape_of(model), tokens, 1, False, False, checkpointing, 4096, **options)


def close(estimated: float, measured: float, rel: float = 0.01) -> bool:
    return abs(estimated - measured) <= rel * measured


# --- weights, gradients, AdamW state -------------------------------------------------------------

def tensor_bytes(tensors) -> int:
    unique = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(unique.values())


def state_after_one_step(model, optim: str = "adamw") -> dict:
    from alpaca_plw.train.optim import make_optimizer

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(trainable, optim, 1e-3, 0.0, torch.device("cpu"))
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    loss.backward()
    optimizer.step()
    moments = [v for state in optimizer.state.values() for k, v in state.items()
               if k != "step" and isinstance(v, torch.Tensor)]
    return {"parameters": tensor_bytes(model.parameters()),
            "gradients": tensor_bytes(p.grad for p in trainable),
            "optimizer": tensor_bytes(moments)}


@pytest.mark.parametrize("case", ["full", "lora-bfloat16", "lora-float32"])
def test_state_terms_equal_the_tensor_bytes_after_one_adamw_step(case):
    if case == "full":
        model, options = tiny(), {}
    else:
        dtype = case.split("-")[1]
        model, adapters = with_lora(tiny(dtype=getattr(torch, dtype)))
        options = dict(lora_r=LORA.lora_r, adapter_params=adapters, base_dtype=dtype)
    estimated = estimate_bytes(shape_of(tiny()), T, 1, False, False, False, 4096, **options)
    measured = state_after_one_step(model)
    for term in ("parameters", "gradients", "optimizer"):
        assert estimated[term] == measured[term], (case, term, estimated[term], measured[term])
    if case != "full":  # the frozen base in --base-dtype, the adapter in fp32
        assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


@pytest.mark.parametrize("optim", ["sgd", "adafactor"])
@pytest.mark.parametrize("lora", [False, True])
def test_optimizer_term_equals_the_state_of_each_optim_after_one_step(optim, lora):
    """--optim sgd keeps nothing; Adafactor a row and a column per matrix (a LoRA adapter's
    r-sized rows and columns are left out of the estimate: within 10% on this tiny model)."""
    model, options = tiny(), {}
    if lora:
        model, adapters = with_lora(model)
        options = dict(lora_r=LORA.lora_r, adapter_params=adapters, base_dtype="float32")
    estimated = estimate_bytes(shape_of(tiny()), T, 1, False, False, False, 4096, optim=optim,
                               **options)["optimizer"]
    measured = state_after_one_step(model, optim)["optimizer"]
    assert estimated <= measured <= 1.1 * estimated if measured else estimated == 0, \
        (estimated, measured)


# --- autocast copies -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["fp32 weights", "bf16 weights (FSDP)", "lora bf16 base",
                                  "lora fp32 base"])
def test_autocast_copies_are_the_saved_bytes_that_do_not_grow_with_tokens(case):
    if case == "fp32 weights":
        model, estimated = tiny(), one_gpu(tiny())
    elif case.startswith("bf16"):  # FSDP's policy gathers bf16 parameters: nothing to cast
        model = tiny(dtype=torch.bfloat16)
        estimated = estimate_bytes(shape_of(model), T, 2, True, False, False, 4096)
    else:
        dtype = "bfloat16" if "bf16" in case else "float32"
        model, adapters = with_lora(tiny(dtype=getattr(torch, dtype)))
        estimated = one_gpu(tiny(), lora_r=LORA.lora_r, adapter_params=adapters, base_dtype=dtype)
    copies, _ = copies_and_activations(model, full_logits=True)
    if case.startswith("lora"):  # the first layer's q, k, v copies are cast and held in autocast's
        # cache to the end of the forward, but not saved: nothing before them needs a gradient
        assert copies <= estimated["autocast_copies"] <= 1.15 * copies, (case, estimated, copies)
    else:
        assert estimated["autocast_copies"] == copies, (case, estimated["autocast_copies"], copies)


# --- activations ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("weights", ["fp32", "bf16"])
def test_activation_bytes_equal_the_bytes_autograd_saves(shape, weights):
    """fp32 weights: one GPU or DDP; bf16: FSDP's gathered parameters. Fails on 34 x hidden."""
    model = tiny(shape, dtype=torch.float32 if weights == "fp32" else torch.bfloat16)
    _, measured = copies_and_activations(model)
    fsdp = weights == "bf16"
    estimated = estimate_bytes(shape_of(model), T, 2 if fsdp else 1, fsdp, False, False, 4096)
    assert close(estimated["activations"], measured), (estimated["activations"], measured)


@pytest.mark.parametrize("dropout", [0.05, 0.0])
@pytest.mark.parametrize("base", ["bfloat16", "float32"])
def test_lora_activation_bytes_equal_the_bytes_autograd_saves(base, dropout):
    """Within 10% above: the first layer saves less than the others (its input needs no
    gradient when the embedding is frozen); the estimate counts every layer like the later ones."""
    model = tiny("gqa", layers=4, dtype=getattr(torch, base))
    adapters = lora_params(shape_of(model), LORA.lora_r, target_pattern(model, None))
    model = add_adapter(model, types.SimpleNamespace(**{**vars(LORA), "lora_dropout": dropout}))
    model.train()
    _, measured = copies_and_activations(model)
    estimated = one_gpu(tiny("gqa", layers=4), lora_r=LORA.lora_r, adapter_params=adapters,
                        base_dtype=base, lora_dropout=dropout > 0)
    assert measured <= estimated["activations"] <= 1.1 * measured, (estimated, measured)


# --- gradient checkpointing ----------------------------------------------------------------------

class AllocatedBytes(TorchDispatchMode):
    """The bytes of every storage allocated while active and not yet freed, and their peak
    (`held()`: their size now, after any resize to 0 such as FSDP's freeing of gathered weights)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.refs: dict[int, weakref.ref] = {}
        self.now = self.peak = 0

    def held(self) -> int:
        storages = [ref() for ref in self.refs.values()]
        return sum(s.nbytes() for s in storages if s is not None)

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)
        self.refs.pop(key, None)

    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                # keyed by the storage object (kept alive with its memory), not its address: FSDP
                # frees gathered weights by resizing their storage to 0, and a gradient allocated
                # later at the same address must still count
                key = id(storage)
                if storage.nbytes() and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.refs[key] = weakref.ref(storage)
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out


def peak_of_second_micro_batch(model, tokens: int) -> int:
    """Peak bytes allocated by a forward and backward whose gradients already exist (the second
    micro-batch of an accumulated step), under CPU bf16 autocast."""
    ids = torch.randint(0, 256, (1, tokens), generator=torch.Generator().manual_seed(3))
    decoder = model.get_decoder()

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
        hidden.float().square().mean().backward()

    step()
    with AllocatedBytes() as mode:
        step()
    return mode.peak


@pytest.mark.parametrize("layers", [2, 4])
def test_checkpointing_keeps_layer_inputs_and_recomputes_one_layer(layers):
    tokens = 4 * T
    model = tiny("mha", layers=layers)
    model.activation_checkpointing_enable({"use_reentrant": False})  # as train.wrap does
    model.train()
    measured = peak_of_second_micro_batch(model, tokens)
    estimated = one_gpu(tiny("mha", layers=layers), tokens, checkpointing=True)
    held = estimated["autocast_copies"] + estimated["activations"]
    assert close(held, measured, 0.15), (held, measured)  # backward's transient gradients: ~8%
    assert estimated["activations"] < 0.7 * one_gpu(model, tokens)["activations"]


# --- logits --------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [256, 0])
def test_logit_bytes_equal_the_peak_of_the_lm_head_and_loss(chunk):
    """The chunked head (train.loss.head_token_losses) or full logits with every position
    selected, forward and backward under bf16 autocast; the head's bf16 copy and its gradient
    (autocast copies and gradients terms) left out."""
    from alpaca_plw.train.modeling.loss import head_token_losses, logits_token_losses

    vocab, hidden, positions = 16000, 32, 512
    torch.manual_seed(0)
    head = torch.nn.Linear(hidden, vocab, bias=False)
    rows = torch.randn(positions, hidden, requires_grad=True)
    targets = torch.randint(0, vocab, (positions,))
    with AllocatedBytes() as mode:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if chunk:
                losses = head_token_losses(rows, head, targets, chunk)
            else:
                logits = head(rows)  # the model's own forward
                losses = logits_token_losses(logits.index_select(0, torch.arange(positions)), targets)
        losses.sum().backward()
    measured = mode.peak - (2 + 4) * head.weight.numel()
    shape = {"params": 0, "layers": 1, "hidden": hidden, "heads": 1, "kv_heads": 1,
             "head_dim": hidden, "intermediate": hidden, "vocab": vocab, "linear_params": 0}
    estimated = estimate_bytes(shape, positions, 1, False, False, False, chunk)["logits"]
    assert close(estimated, measured, 0.05), (estimated, measured)


# --- FSDP gradient accumulation ------------------------------------------------------------------

FSDP_WORKER = r'''
import json, os, sys, types
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
from test_memory_measured import AllocatedBytes, tiny
from alpaca_plw.train.distributed import Dist
from alpaca_plw.train.modeling.wrap import wrap_model

dist.init_process_group("gloo")
rank = dist.get_rank()
cfg = types.SimpleNamespace(gradient_checkpointing=False, loss_chunk=0, fsdp=True, cpu_offload=False,
                            compile=False)
model = wrap_model(tiny(), cfg, Dist(rank, 2, rank, torch.device("cpu")))
ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(rank))
weights, prompt = torch.ones(1, 32), torch.zeros(1, 32, dtype=torch.bool)
held = {}
for sync in (False, True):  # the trainer's accumulation: sync on the last micro-batch only
    model.set_requires_gradient_sync(sync)
    with AllocatedBytes() as mode:
        model(ids, ids, weights, prompt)[0].backward()
    held[str(sync)] = mode.held()
sharded = sum(p.grad.to_local().nbytes for p in model.parameters())
if rank == 0:
    print(json.dumps({"held_without_sync": held["False"], "sharded_grads": sharded}))
dist.destroy_process_group()
'''


def test_fsdp_accumulation_holds_unsharded_fp32_gradients_on_every_rank(tmp_path):
    """Two gloo processes, the trainer's FSDP wrapping: after a backward with gradient sync off,
    each rank holds every parameter's full gradient (4 bytes each), not its shard's."""
    import json
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "worker.py"
    script.write_text(FSDP_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    here = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, str(script), here], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                                   "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r)})
             for r in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-2000:] + outs[1][1][-2000:]
    measured = json.loads(outs[0][0].strip().splitlines()[-1])
    shape = shape_of(tiny())
    accumulating = estimate_bytes(shape, 32, 2, True, False, False, 0, grad_accum=2)
    single_pass = estimate_bytes(shape, 32, 2, True, False, False, 0, grad_accum=1)
    assert single_pass["gradients"] == measured["sharded_grads"]
    unsharded = accumulating["gradients"] - single_pass["gradients"]
    assert close(unsharded, measured["held_without_sync"], 0.05), (unsharded, measured)
