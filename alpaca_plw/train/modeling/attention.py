"""`torch_varlen`: attention over packed rows that needs nothing beyond torch.

A packed micro-batch is one row of several records. Hugging Face's `sdpa` path turns the restarting
position ids into a dense [1, 1, N, N] document mask, which rules out the flash kernel, makes the
attention work quadratic in the whole row instead of in each record, repeats the key/value heads of
grouped-query models, and reads a value back from the GPU in the mask code. `flash_attention_2`
avoids all that but needs the separately built `flash_attn` package.

This module registers one more attention implementation with transformers' attention interface,
`torch_varlen`, which receives the host-computed record boundaries (`cu_seq_lens_q`,
`max_length_q`, see `MicroBatch.varlen_kwargs`) and runs:

- on CUDA in bf16/fp16: torch's own flash varlen kernel (`torch.nn.attention.varlen.varlen_attn`,
  torch >= 2.10): causal attention within each record, no mask tensor, no host read, grouped-query
  heads natively where the kernel takes them;
- elsewhere (CPU, fp32 probes, older torch): the reference kernel, SDPA with a block-diagonal causal
  mask built on the device from the same boundaries (exact, no host read, but quadratic in the row).

Transformers builds no mask for an implementation it does not know (`masking_utils`), so padded
micro-batches reach this function with no mask; right padding under causal attention needs none
(a real token never sees a later pad), and every row is then one sequence.

Models with sliding windows, attention soft-capping, ALiBi or attention dropout are refused:
neither kernel applies them.
"""

from __future__ import annotations

import inspect
from functools import lru_cache

import torch
import torch.nn.functional as F

NAME = "torch_varlen"
UNSUPPORTED = ("sliding_window", "softcap")  # attention kwargs this path cannot honour


_RESOLVED: dict = {}  # "kernel": (varlen_attn, its parameter names) or None, looked up once


def _kernel():
    """(varlen_attn, its keyword parameter names) from torch, or None when torch lacks it. Looked
    up once and kept in a plain dict, so a compiled layer reads it without tracing `inspect`."""
    if "kernel" not in _RESOLVED:
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            _RESOLVED["kernel"] = None
        else:
            _RESOLVED["kernel"] = (varlen_attn, frozenset(inspect.signature(varlen_attn).parameters))
    return _RESOLVED["kernel"]


def kernel_available() -> bool:
    """True when this torch ships the flash varlen kernel (it still needs CUDA to run)."""
    return _kernel() is not None


def register() -> None:
    """Make `torch_varlen` a valid `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface

    _kernel()  # resolved before any layer is compiled
    AttentionInterface.register(NAME, varlen_attention)


def default_for(model, device: torch.device, packing: bool, requested: str | None) -> str | None:
    """`torch_varlen` when it should replace the model's own attention: a packed run on CUDA with
    no `--attn-implementation` given, a model whose attention it reproduces, and a torch that has
    the kernel. None otherwise (the model keeps what it loaded with)."""
    if requested is not None or not packing or device.type != "cuda" or not kernel_available():
        return None
    if supported(model.config) is not None or not kernel_works(device):
        return None
    return NAME


@lru_cache(maxsize=4)
def kernel_works(device: torch.device) -> bool:
    """One tiny forward and backward through the flash varlen kernel on `device` in bf16 (two
    records, grouped-query heads, head size 64): False when this torch/GPU pair cannot run it
    (no backward registered, an architecture the kernel was not built for), so the default falls
    back to the model's own attention instead of failing at the first step."""
    try:
        g = torch.Generator(device=device).manual_seed(0)
        q = torch.randn(12, 4, 64, device=device, dtype=torch.bfloat16, generator=g,
                        requires_grad=True)
        kv = torch.randn(12, 2, 64, device=device, dtype=torch.bfloat16, generator=g,
                         requires_grad=True)
        cu = torch.tensor([0, 5, 12], device=device, dtype=torch.int32)
        out = flash_varlen(q, kv, kv, cu, 7, 0.125)
        out.float().sum().backward()
        want = reference_varlen(q.detach().float(), kv.detach().float(), kv.detach().float(),
                                cu, 0.125)
        return bool(torch.isfinite(q.grad).all()) and float((out.detach().float() - want).abs().max()) < 0.05
    except (RuntimeError, ValueError, TypeError, NotImplementedError):
        return False


def use(model, name: str) -> None:
    """Switch a loaded Hugging Face model (or a PEFT wrapper of one) to attention `name`."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers: the attention modules read the config at every call
        model.config._attn_implementation = name


def current(model) -> str | None:
    """The attention implementation a loaded model runs."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def supported(config) -> str | None:
    """None when `config`'s attention is plain causal softmax attention this path reproduces; else
    the reason it is not (sliding window, soft-capping, ALiBi, attention dropout)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return "it uses sliding-window attention"
    if getattr(text, "attn_logit_softcapping", None):
        return "it soft-caps attention logits"
    if getattr(text, "alibi", False):  # Falcon's ALiBi biases reach the kernel as a mask only
        return "it uses ALiBi position biases"
    if getattr(text, "attention_dropout", 0) or getattr(text, "attn_pdrop", 0):
        return "it trains with attention dropout"  # the probes run without it (eval mode)
    return None


def varlen_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs):
    """The transformers attention-interface function: query [B, H, T, D], key/value
    [B, Hkv, T, D] -> (output [B, T, H, D], None)."""
    for name in UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"{NAME} does not support {name}; choose another --attn-implementation")
    if dropout:
        raise ValueError(f"{NAME} runs without attention dropout; set attention_dropout to 0")
    if attention_mask is not None:  # a caller-made mask (not the trainer's): honour it with SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, **kwargs)
    batch, heads, length, dim = query.shape
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # padded rows: each row is one sequence of `length` positions
        cu = torch.arange(0, (batch + 1) * length, length, device=query.device, dtype=torch.int32)
        longest = length
    else:
        if batch != 1:
            raise ValueError(f"{NAME}: packed boundaries need a single row, got {batch} rows")
        longest = int(kwargs.get("max_length_q") or length)
    scale = scaling if scaling is not None else dim ** -0.5
    # [B, H, T, D] -> [B * T, H, D]: the varlen layout (a view: no copy)
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    dtype = _compute_dtype(q)
    if q.is_cuda and dtype in (torch.bfloat16, torch.float16) and kernel_available():
        out = flash_varlen(q.to(dtype), k.to(dtype), v.to(dtype), cu, longest, scale)
    else:
        out = reference_varlen(q, k, v, cu, scale)
    return out.reshape(batch, length, heads, dim), None


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype SDPA would compute in: autocast's where it is on (the rotary embedding leaves
    queries and keys in fp32 under autocast), else the query's own."""
    device = q.device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return q.dtype


def flash_varlen(q, k, v, cu: torch.Tensor, longest: int, scale: float) -> torch.Tensor:
    """torch's flash varlen kernel, causal within each record: q [N, H, D], k/v [N, Hkv, D]."""
    varlen_attn, params = _kernel()
    heads, kv_heads, dim = q.shape[1], k.shape[1], q.shape[2]
    options = {"scale": scale}
    if "window_size" in params:  # torch >= 2.11: causal is the window (-1, 0)
        options["window_size"] = (-1, 0)
    else:  # torch 2.10
        options["is_causal"] = True
    if kv_heads != heads:
        if "enable_gqa" in params:
            options["enable_gqa"] = True
        else:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
    pad = -dim % 8  # the kernel wants a head size that is a multiple of 8; zero columns change nothing
    if pad:
        q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    cu = cu.to(device=q.device, dtype=torch.int32)
    out = varlen_attn(q, k, v, cu, cu, longest, longest, **options)
    return out[..., :dim] if pad else out


def reference_varlen(q, k, v, cu: torch.Tensor, scale: float) -> torch.Tensor:
    """The same attention as `flash_varlen` with SDPA and a block-diagonal causal mask built on the
    device from `cu` (no host read). Exact; quadratic in the row, so for CPU runs and checks."""
    total, heads, dim = q.shape
    position = torch.arange(total, device=q.device)
    record = torch.searchsorted(cu.to(q.device, torch.int64), position, right=True)
    mask = (record[:, None] == record[None, :]) & (position[:, None] >= position[None, :])
    kv_heads = k.shape[1]
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
        v = v.repeat_interleave(heads // kv_heads, dim=1)
    dtype = _compute_dtype(q)
    out = F.scaled_dot_product_attention(
        q.to(dtype).transpose(0, 1)[None], k.to(dtype).transpose(0, 1)[None],
        v.to(dtype).transpose(0, 1)[None], attn_mask=mask, scale=scale)
    return out[0].transpose(0, 1)
