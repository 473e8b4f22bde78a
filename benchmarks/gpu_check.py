"""One prepared GPU check: everything the first H200 run must show, in one call, JSON after each stage.

Stages, in order of importance (a stage that fails records its error and the next one runs; a stage
that would start with less than its expected time left in --budget-s is skipped and says so):

  env             versions, the GPU, which attention kernels exist and work (torch's flash varlen
                  kernel forward+backward, flash_attn, flex_attention, SDPA's flash backend)
  attention_work  predicted attention work of each packed path on the real lengths (no GPU needed)
  kernels         torch_varlen vs fp32 per-record attention: output and gradient error in bf16, and
                  forward+backward time against SDPA with the dense document mask
  equivalence     a 2-layer model of the 1.1B width under bf16 autocast: packed vs separate logits
                  for sdpa, eager, flex_attention and torch_varlen; packed (torch_varlen) vs padded
                  (sdpa) loss and gradients; chunked vs full-logit loss
  tune            the trainer alone at the bench's geometry (1.1B, 128 records per step) with packed
                  budgets of 4,096 to 16,384 tokens, with and without --compile: tokens/s and peak;
                  the fastest whose peak stays within --peak-limit-gib goes to the bench
  bench           benchmarks/bench_train.py on the 1.1B shape, the common recipe side by side
  memory          the trainer's --dry-run estimate against torch.cuda.max_memory_allocated, 1.1B,
                  with and without gradient checkpointing
  smoke           3-step trainer runs: one-process FSDP (NCCL), LoRA, CPU offload
  compile         the same with --compile --gradient-checkpointing (inductor)
  seven_b         a 7B (Llama-2 shape) full fine-tune with PLW on the one GPU: fits or not, peak
  tests           the GPU-relevant CPU tests under the image's transformers (pytest subset)

The trainer's final save is skipped in the memory, smoke and 7B runs (it writes the whole model to
disk: 27 GB at 7B; saving is covered by the test suite).

GPU:  python3 benchmarks/gpu_check.py --weights W --tokenizer T --out $OUT --budget-s 480
CPU:  python benchmarks/gpu_check.py --reduced --out /tmp/gpu-check   (tiny shapes; what CI runs)
Writes OUT/gpu_check.json (all stages) and, from the bench stage, OUT/train_h200.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from alpaca_plw.train.modeling import attention  # noqa: E402

GIB = 2**30
SHAPE_1B = dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, intermediate_size=5632)
SHAPE_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, intermediate_size=11008)
SHAPE_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=128)
# expected seconds of each stage on the H200 (the budget check), and whether it needs CUDA
STAGES = {"env": (10, False), "attention_work": (10, False), "kernels": (20, False),
          "equivalence": (40, False), "tune": (120, False), "bench": (120, False),
          "memory": (50, False),
          "smoke": (70, False), "compile": (90, False), "seven_b": (150, True),
          "tests": (60, False)}


class Context:
    def __init__(self, args):
        self.args = args
        self.cuda = torch.cuda.is_available() and not args.reduced
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.out = args.out
        self.began = time.perf_counter()
        self.work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
        self._store = None
        self.model_dirs: dict[str, Path] = {}

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.began)

    def store(self):
        from alpaca_plw.data.weights_dir.read import read_weights_dir
        from alpaca_plw.train.batching.batches import SequenceStore

        if self._store is None:
            self._store = SequenceStore.from_weights(read_weights_dir(self.weights()))
        return self._store

    def weights(self) -> Path:
        if self.args.weights is not None:
            return self.args.weights
        target = self.work / "weights"
        if not target.exists():
            from alpaca_plw.data.pipeline import DataOptions, make_weights

            records = json.loads(Path(self.args.data).read_text(encoding="utf-8"))
            if self.args.reduced:
                records = records[:64]
            source = self.work / "records.json"
            source.write_text(json.dumps(records), encoding="utf-8")
            make_weights(str(source), 0.1, DataOptions(tokenizer=str(self.args.tokenizer)), target,
                         max_length=512)
        self.args.weights = target
        return target

    def model_dir(self, name: str, shape: dict) -> Path:
        """A random Llama of `shape` saved once (bf16 on disk: half the bytes to write and read)."""
        if name not in self.model_dirs:
            from transformers import LlamaConfig, LlamaForCausalLM

            directory = self.work / f"model-{name}"
            torch.manual_seed(0)
            config = LlamaConfig(vocab_size=32000, max_position_embeddings=2048,
                                 tie_word_embeddings=False, **shape)
            with torch.device(self.device):
                model = LlamaForCausalLM(config).to(torch.bfloat16)
            model.save_pretrained(directory)
            del model
            if self.cuda:
                torch.cuda.empty_cache()
            for file in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
                if (self.args.tokenizer / file).exists():
                    shutil.copy(self.args.tokenizer / file, directory / file)
            self.model_dirs[name] = directory
        return self.model_dirs[name]


# ---------------------------------------------------------------------------------------- stages

def stage_env(ctx: Context) -> dict:
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "python": sys.version.split()[0], "cuda": ctx.cuda}
    for name in ("peft", "flash_attn", "trl", "datasets"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "present")
        except ImportError:
            info[name] = None
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401

        info["flex_attention"] = True
    except ImportError:
        info["flex_attention"] = False
    info["varlen_attn"] = attention.kernel_available()
    if ctx.cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, capability=list(torch.cuda.get_device_capability()),
                    gpu_memory_gib=round(props.total_memory / GIB, 2),
                    flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                    cudnn=torch.backends.cudnn.version())
        info["varlen_attn_works"] = attention.kernel_works(ctx.device)
    return info


def stage_attention_work(ctx: Context) -> dict:
    """Pairs of (query, key) each packed path computes per optimizer step, over the bench's steps
    (batch 128 records, micro 8, budget 8 x 512 tokens), relative to the causal pairs inside each
    record (the least any exact kernel must do)."""
    from alpaca_plw.train.batching.batches import DataOrder
    from alpaca_plw.train.batching.packing import pack_records

    store = ctx.store()
    lengths = store.lengths.astype(np.int64)
    batch, micro, budget, tile = (16, 4, 4 * 512, 128) if ctx.args.reduced else (128, 8, 4096, 128)
    order = DataOrder(len(store), 42, micro, batch // micro, 1)
    totals = dict(ideal=0.0, varlen_tiles=0.0, dense_mask=0.0, flex_blocks=0.0, padded=0.0)
    for step in range(min(12, order.steps_per_epoch)):
        for rows in order.micro_batches(step, 0):
            width = int(lengths[rows].max())
            totals["padded"] += len(rows) * width * width  # SDPA with a padding mask: every pair
        for packed in pack_records(order.step_records(step), lengths, budget):
            ls = lengths[packed]
            n = int(ls.sum())
            totals["ideal"] += float((ls * (ls + 1) // 2).sum())
            totals["dense_mask"] += n * n  # a boolean [N, N] mask: no block can be skipped
            totals["varlen_tiles"] += sum(_causal_tiles(int(x), tile) for x in ls) * tile * tile
            totals["flex_blocks"] += _flex_blocks(ls, tile) * tile * tile
    ideal = totals.pop("ideal")
    return {"convention": "pairs computed / causal pairs within records; tiles of "
                          f"{tile}x{tile} for the flash and flex kernels",
            "micro_batch": micro, "budget_tokens": budget, "batch": batch,
            **{k: round(v / ideal, 2) for k, v in totals.items()}}


def _causal_tiles(length: int, tile: int) -> int:
    blocks = -(-length // tile)
    return blocks * (blocks + 1) // 2


def _flex_blocks(lengths: np.ndarray, tile: int) -> int:
    """Blocks of a packed row's block mask holding at least one same-record causal pair."""
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    n = int(lengths.sum())
    blocks = -(-n // tile)
    count = 0
    for qb in range(blocks):
        q0, q1 = qb * tile, min(n, (qb + 1) * tile) - 1
        for kb in range(qb + 1):
            k0, k1 = kb * tile, min(n, (kb + 1) * tile) - 1
            # records overlapping the query block and the key block; a pair exists when one record
            # spans both with some key <= query
            first = np.searchsorted(starts, k0, side="right") - 1
            last = np.searchsorted(starts, q1, side="right") - 1
            count += int(first <= last and (first == last or _shared(starts, lengths, k0, k1, q0)))
    return count


def _shared(starts, lengths, k0, k1, q0) -> bool:
    ends = starts + lengths - 1
    return bool(np.any((starts <= k1) & (ends >= q0) & (ends >= k0)))


def stage_kernels(ctx: Context) -> dict:
    """torch_varlen on one real packed row, bf16 on CUDA (the reference kernel on CPU)."""
    from alpaca_plw.train.batching.packing import pack_records

    store = ctx.store()
    lengths = store.lengths.astype(np.int64)
    budget = 1024 if ctx.args.reduced else 4096
    row = pack_records(np.arange(min(len(store), 256)), lengths, budget)[0]
    ls = lengths[row].tolist()
    cu = torch.tensor(np.concatenate(([0], np.cumsum(ls))), dtype=torch.int32, device=ctx.device)
    out = {"row_tokens": int(sum(ls)), "records": len(ls)}
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    for name, (heads, kv, dim) in {"1.1b": (32, 4, 64), "7b": (32, 32, 128),
                                   "head_dim_100": (32, 32, 100)}.items():
        g = torch.Generator(device=ctx.device).manual_seed(0)
        n = int(sum(ls))
        q = torch.randn(n, heads, dim, device=ctx.device, generator=g)
        k = torch.randn(n, kv, dim, device=ctx.device, generator=g)
        v = torch.randn(n, kv, dim, device=ctx.device, generator=g)
        qs, ks, vs = (t.to(dtype).requires_grad_() for t in (q, k, v))
        flash = ctx.cuda and attention.kernel_available()
        kernel = "flash_varlen" if flash else "reference_varlen"
        got = (attention.flash_varlen(qs, ks, vs, cu, max(ls), dim ** -0.5) if flash
               else attention.reference_varlen(qs, ks, vs, cu, dim ** -0.5))
        got.float().pow(2).sum().backward()
        qr, kr, vr = (t.detach().double().requires_grad_() for t in (q, k, v))
        want = _per_record(qr, kr, vr, ls)
        want.pow(2).sum().backward()
        rel = lambda a, b: float((a.double() - b).abs().max() / (b.abs().max() + 1e-12))  # noqa: E731
        entry = {"heads": heads, "kv_heads": kv, "head_dim": dim, "kernel": kernel,
                 "out_rel_err": rel(got.detach(), want.detach()),
                 "dq_rel_err": rel(qs.grad, qr.grad), "dk_rel_err": rel(ks.grad, kr.grad),
                 "dv_rel_err": rel(vs.grad, vr.grad)}
        if ctx.cuda:
            entry.update(_timings(qs.detach(), ks.detach(), vs.detach(), cu, ls))
        out[name] = entry
    return out


def _per_record(q, k, v, ls):
    import torch.nn.functional as F

    outs, start = [], 0
    groups = q.shape[1] // k.shape[1]
    for n in ls:
        qs, ks, vs = (t[start:start + n].transpose(0, 1)[None] for t in (q, k, v))
        ks, vs = ks.repeat_interleave(groups, dim=1), vs.repeat_interleave(groups, dim=1)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1))
        start += n
    return torch.cat(outs)


def _timings(q, k, v, cu, ls) -> dict:
    """Forward+backward milliseconds: torch_varlen against SDPA with the dense document mask that
    transformers builds for packed rows under sdpa (key/value heads repeated, as it does)."""
    import torch.nn.functional as F

    n, dim = q.shape[0], q.shape[-1]
    record = torch.searchsorted(cu.long(), torch.arange(n, device=q.device), right=True)
    pos = torch.arange(n, device=q.device)
    mask = (record[:, None] == record[None, :]) & (pos[:, None] >= pos[None, :])
    groups = q.shape[1] // k.shape[1]

    def varlen():
        a, b, c = (t.clone().requires_grad_() for t in (q, k, v))
        attention.flash_varlen(a, b, c, cu, max(ls), dim ** -0.5).sum().backward()

    def dense():
        a, b, c = (t.clone().requires_grad_() for t in (q, k, v))
        kk, vv = b.repeat_interleave(groups, dim=1), c.repeat_interleave(groups, dim=1)
        F.scaled_dot_product_attention(a.transpose(0, 1)[None], kk.transpose(0, 1)[None],
                                       vv.transpose(0, 1)[None], attn_mask=mask).sum().backward()

    result = {}
    for name, fn in (("varlen_ms", varlen), ("sdpa_dense_mask_ms", dense)):
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        result[name] = round((time.perf_counter() - t0) / 10 * 1e3, 3)
    result["dense_over_varlen"] = round(result["sdpa_dense_mask_ms"] / result["varlen_ms"], 2)
    return result


def stage_equivalence(ctx: Context) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    from alpaca_plw.train.batching.batches import collate
    from alpaca_plw.train.modeling.head import head_mismatch
    from alpaca_plw.train.modeling.model import WeightedCausalLM
    from alpaca_plw.train.batching.packing import collate_packed

    attention.register()
    store = ctx.store()
    shape = dict(SHAPE_TINY if ctx.args.reduced else SHAPE_1B, num_hidden_layers=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, max_position_embeddings=2048,
                                         tie_word_embeddings=False, **shape)).to(ctx.device)
    model.eval()
    records = np.arange(4)
    packed = collate_packed(store, records).to(ctx.device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if ctx.cuda else torch.autocast(
        "cpu", enabled=False)
    out: dict = {"dtype": "bf16 autocast" if ctx.cuda else "fp32", "records": len(records),
                 "row_tokens": int(packed.real_tokens)}
    separate = [collate(store, np.array([i])).to(ctx.device) for i in records]
    with torch.no_grad():
        attention.use(model, "sdpa")
        truth = torch.cat([model(input_ids=b.input_ids, use_cache=False).logits[0].double()
                           for b in separate])
        for impl in ("sdpa", "eager", "flex_attention", attention.NAME):
            try:
                attention.use(model, impl)
                with amp:
                    kwargs = packed.varlen_kwargs() if impl == attention.NAME else {}
                    logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids,
                                   use_cache=False, **kwargs).logits[0]
                    alone = torch.cat([model(input_ids=b.input_ids, use_cache=False).logits[0]
                                       for b in separate])
                out[impl] = {"packed_vs_separate": head_mismatch(alone, logits),
                             "packed_vs_fp32_separate": head_mismatch(truth, logits)}
            except Exception as exc:  # noqa: BLE001 - a path that cannot run is a finding
                out[impl] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    # loss and gradients: packed torch_varlen vs padded sdpa, chunked vs full logits
    model.train()
    results = {}
    for name, impl, batch, chunk in (("padded_sdpa_full", "sdpa", collate(store, records), None),
                                     ("packed_varlen_chunked", attention.NAME,
                                      collate_packed(store, records), 4096),
                                     ("padded_sdpa_chunked", "sdpa", collate(store, records), 64)):
        attention.use(model, impl)
        model.zero_grad()
        batch = batch.to(ctx.device)
        sel = batch.selection
        with amp:
            terms = WeightedCausalLM(model, chunk)(
                batch.input_ids, sel.targets, sel.weights, sel.prompt,
                attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                index=sel.index, **(batch.varlen_kwargs() if impl == attention.NAME else {}))
        (terms[0] / terms[1]).backward()
        results[name] = (float((terms[0] / terms[1]).detach()),
                         torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    base_loss, base_grad = results.pop("padded_sdpa_full")
    for name, (loss, grad) in results.items():
        out[name] = {"loss_rel_diff": abs(loss - base_loss) / abs(base_loss),
                     "grad_rel_diff": float((grad - base_grad).norm() / base_grad.norm())}
    del model
    return out


def stage_bench(ctx: Context) -> dict:
    import bench_train

    target = ctx.out / ("train_h200.json" if ctx.cuda else "train_cpu_reduced.json")
    argv = ["--weights", str(ctx.weights()), "--tokenizer", str(ctx.args.tokenizer),
            "--out", str(target)] + (["--force"] if ctx.args.force else [])
    argv += (["--shapes", "tiny", "--steps", "3", "--warmup", "1", "--batch", "8", "--micro", "4"]
             if ctx.args.reduced else ["--shapes", "1.1b"])
    best = getattr(ctx, "best", None)
    if best is not None and not ctx.args.reduced:
        argv += ["--max-tokens", str(best["max_tokens"])] + (["--compile"] if best["compile"] else [])
    bench_train.main(argv)
    return {"results": json.loads(target.read_text()), "argv": argv}


def _trainer_run(ctx: Context, model_dir: Path, name: str, steps: int = 3, **options) -> dict:
    """A short real trainer run (final save skipped); peak memory, losses, the dry-run estimate."""
    from alpaca_plw.train import trainer
    from alpaca_plw.train.config import TrainConfig

    base = dict(weights_dir=ctx.weights(), model=str(model_dir), output_dir=ctx.work / f"run-{name}",
                max_steps=steps, warmup_ratio=0.0, micro_batch_size=8, grad_accum=2, packing=True,
                max_tokens=1024 if ctx.args.reduced else 4096, device=ctx.device.type)
    base.update(options)
    estimate = trainer.train(TrainConfig(**{**base, "dry_run": True,
                                            "output_dir": ctx.work / f"dry-{name}"})).memory
    records: list[dict] = []
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    original = trainer._save_final
    trainer._save_final = lambda run: None
    began = time.perf_counter()
    try:
        plan = trainer.train(TrainConfig(**base), on_step=records.append)
    finally:
        trainer._save_final = original
        shutil.rmtree(base["output_dir"], ignore_errors=True)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    peak = torch.cuda.max_memory_allocated() / GIB if ctx.cuda else None
    timed = [r.get("tokens_per_s") for r in records[2:]] or [r.get("tokens_per_s") for r in records]
    out = {"ok": True, "seconds": round(time.perf_counter() - began, 1),
           "largest_micro_batch_tokens": _largest_micro(ctx, plan, base),
           "median_tokens_per_s_after_2": float(np.median(timed)) if timed else None,
           "losses": [round(r["loss"], 5) for r in records],
           "tokens_per_s": [r.get("tokens_per_s") for r in records],
           "attention": plan.attention, "packing": plan.packing,
           "tokens_per_micro_batch": plan.max_tokens, "peak_gib": None if peak is None else round(peak, 2),
           "estimate_gib": estimate}
    if peak is not None and estimate and estimate.get("total"):
        out["estimate_over_measured"] = round(estimate["total"] / peak, 3)
    if ctx.cuda:
        torch.cuda.empty_cache()
    return out


def _largest_micro(ctx: Context, plan, base: dict) -> int:
    """Tokens in the largest micro-batch the run's steps formed (packing by the plan's budget)."""
    from alpaca_plw.train.batching.batches import DataOrder
    from alpaca_plw.train.batching.packing import pack_records

    store = ctx.store()
    order = DataOrder(len(store), 42, plan.micro_batch_size, plan.grad_accum, 1)
    largest = 0
    for step in range(base["max_steps"]):
        records = order.step_records(step)
        bins = (pack_records(records, store.lengths, plan.max_tokens) if plan.packing
                else order.micro_batches(step, 0))
        largest = max(largest, max(int(store.lengths[b].sum()) for b in bins))
    return largest


def _guarded(fn) -> dict:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - each run's failure is a finding, not the end
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:400]}",
                "where": traceback.format_exc().splitlines()[-6:]}


def stage_memory(ctx: Context) -> dict:
    model_dir = ctx.model_dir("small" if ctx.args.reduced else "1.1b",
                              SHAPE_TINY if ctx.args.reduced else SHAPE_1B)
    full = dict(micro_batch_size=64, grad_accum=1)  # ~2 packed micro-batches filled to the budget
    return {"plain": _guarded(lambda: _trainer_run(ctx, model_dir, "mem-plain", **full)),
            "checkpointing": _guarded(lambda: _trainer_run(ctx, model_dir, "mem-ckpt",
                                                           gradient_checkpointing=True, **full))}


def stage_tune(ctx: Context) -> dict:
    """Tokens/s and peak of the trainer alone at the bench geometry, per packed budget and compile."""
    model_dir = ctx.model_dir("small" if ctx.args.reduced else "1.1b",
                              SHAPE_TINY if ctx.args.reduced else SHAPE_1B)
    spec = ctx.args.tune or ("1024,2048" if ctx.args.reduced else "4096,8192,4096c,8192c,16384c")
    variants = [(int(v.rstrip("c")), v.endswith("c")) for v in spec.split(",")]
    out, best = {}, None
    for budget, compiled in variants:
        name = f"{budget}{'-compile' if compiled else ''}"
        run = _guarded(lambda b=budget, c=compiled, n=name: _trainer_run(
            ctx, model_dir, f"tune-{n}", steps=6, micro_batch_size=8, grad_accum=16,
            max_tokens=b, compile=c))
        run.pop("estimate_gib", None)
        out[name] = run
        within = run.get("peak_gib") is None or run["peak_gib"] <= ctx.args.peak_limit_gib
        if run.get("ok") and within and (best is None or run["median_tokens_per_s_after_2"]
                                         > out[best]["median_tokens_per_s_after_2"]):
            best = name
    if best is not None:
        ctx.best = {"max_tokens": int(best.split("-")[0]), "compile": best.endswith("compile")}
    out["chosen"] = best
    out["peak_limit_gib"] = ctx.args.peak_limit_gib
    return out


def stage_smoke(ctx: Context) -> dict:
    model_dir = ctx.model_dir("small" if ctx.args.reduced else "1.1b",
                              SHAPE_TINY if ctx.args.reduced else SHAPE_1B)
    runs = {"fsdp_one_process": dict(fsdp=True), "lora": dict(lora_r=8, lora_alpha=16.0),
            "cpu_offload": dict(cpu_offload=True)}
    if ctx.args.smoke:
        runs = {k: v for k, v in runs.items() if k in ctx.args.smoke.split(",")}
    return {name: _guarded(lambda o=options, n=name: _trainer_run(ctx, model_dir, n, **o))
            for name, options in runs.items()}


def stage_compile(ctx: Context) -> dict:
    """--compile --gradient-checkpointing against the same run uncompiled (memory stage)."""
    if ctx.args.reduced:
        return {"skipped": "inductor on the CPU takes minutes; tests/train/test_attention.py "
                           "checks compile + checkpointing with the eager backend"}
    model_dir = ctx.model_dir("1.1b", SHAPE_1B)
    return {"compile_checkpointing": _guarded(lambda: _trainer_run(
        ctx, model_dir, "compile", steps=4, compile=True, gradient_checkpointing=True))}


def stage_seven_b(ctx: Context) -> dict:
    tokens = 4096
    model_dir = ctx.model_dir("7b", SHAPE_7B)
    result = _guarded(lambda: _trainer_run(ctx, model_dir, "7b", steps=2, micro_batch_size=64,
                                           grad_accum=1, max_tokens=tokens,
                                           gradient_checkpointing=True))
    result["what"] = ("Llama-2-7B shape, full fine-tune, fp32 master weights + AdamW, bf16 "
                      f"autocast, --gradient-checkpointing, packed micro-batches of <= {tokens} tokens")
    return result


def stage_tests(ctx: Context) -> dict:
    tests = ["tests/train/test_attention.py", "tests/train/test_packing.py",
             "tests/train/test_loss.py", "tests/train/test_feed.py",
             "tests/train/test_model_families.py"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=max(30, int(ctx.left())))
    return {"returncode": done.returncode, "tail": done.stdout.splitlines()[-15:]}


# ------------------------------------------------------------------------------------------ main

def parse_args(argv=None) -> argparse.Namespace:
    shared = REPO.parent / "shared"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    p.add_argument("--weights", type=Path, default=None, help="an `alpaca-plw weights` folder")
    p.add_argument("--data", type=Path, default=shared / "data" / "alpaca_data.json",
                   help="Alpaca JSON made into weights (PLW 0.1) when --weights is not given")
    p.add_argument("--tokenizer", type=Path, default=shared / "tokenizers" / "llama")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="wall seconds for all stages; a stage is skipped when too little is left")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    p.add_argument("--reduced", action="store_true", help="tiny shapes on the CPU (CI)")
    p.add_argument("--force", action="store_true",
                   help="replace gpu_check.json and the bench JSON already in --out")
    p.add_argument("--smoke", default="", help="smoke runs to do (comma list; default all)")
    p.add_argument("--tune", default="",
                   help="tune variants: packed budgets, 'c' for --compile (e.g. 4096,8192c)")
    p.add_argument("--peak-limit-gib", type=float, default=29.9,
                   help="tune: the most peak memory a chosen setting may take (the common recipe's "
                        "peak at the bench geometry: 29.9 GiB on the first H200 run)")
    args = p.parse_args(argv)
    args.stage_list = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in args.stage_list if s not in STAGES]
    if unknown:
        p.error(f"--stages: unknown {', '.join(unknown)}")
    if not (args.tokenizer / "tokenizer.model").exists():
        p.error(f"--tokenizer {args.tokenizer}: no tokenizer.model there")
    if args.weights is None and not args.data.is_file():
        p.error(f"--data {args.data}: no such file; pass --data FILE or --weights DIR")
    existing = [n for n in ("gpu_check.json", "train_h200.json", "train_cpu_reduced.json")
                if (args.out / n).exists()]
    if existing and not args.force:
        p.error(f"--out {args.out}: holds {', '.join(existing)} already; pass --force to replace "
                "them or choose another folder")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    ctx = Context(args)
    report: dict = {"device": str(ctx.device), "reduced": args.reduced, "stages": {}}
    path = args.out / "gpu_check.json"
    try:
        for name in args.stage_list:
            expected, cuda_only = STAGES[name]
            if cuda_only and not ctx.cuda:
                report["stages"][name] = {"skipped": "needs CUDA"}
            elif not args.reduced and ctx.left() < expected:
                report["stages"][name] = {"skipped": f"{ctx.left():.0f} s left, needs ~{expected} s"}
            else:
                began = time.perf_counter()
                print(f"[gpu_check] {name} ...", flush=True)
                result = _guarded(lambda n=name: globals()[f"stage_{n}"](ctx))
                result["seconds"] = round(time.perf_counter() - began, 1)
                report["stages"][name] = result
                print(f"[gpu_check] {name} done in {result['seconds']} s", flush=True)
            _write(path, report)
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    return report


def _write(path: Path, report: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    os.replace(partial, path)


def _plain(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


if __name__ == "__main__":
    main()
