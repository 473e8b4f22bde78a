"""Trainer throughput: the common weighted-prompt-loss recipe against alpaca-plw's trainer, side by side.

For each model shape (LLaMA architecture, random init, the same saved model for both sides) and the
same loss-weights data, both sides run the same optimizer steps on the same records:

  (a) baseline: right-padded micro-batches of --micro sequences, full-vocabulary logits upcast to
      fp32, CrossEntropyLoss(reduction="none"), weighted mean per micro-batch, AdamW, the Hugging
      Face cosine schedule, gradient clipping at 1.0;
  (b) alpaca-plw: `alpaca_plw.train.trainer.train` (packing by --max-tokens, chunked weighted CE,
      exact step mean; the same optimizer, schedule and clipping).

Same on both sides, by construction and checked at run time:
  - records per optimizer step: one `DataOrder` (seed 42, --micro x --batch/--micro), so both sides
    see equal real tokens per optimizer step (`tokens_per_step`);
  - throughput: real tokens (padding excluded) of the timed steps / wall time of the timed steps,
    timed from the end of the last warm-up step to the end of the last step (`torch.cuda.synchronize`
    at every step end); the first --warmup steps are excluded on both sides;
  - FLOPs: per token 6 N + 12 x layers x hidden x l, where l is the REAL length of the token's own
    record on both sides (the baseline's padding and any cross-record attention are not credited;
    not halved for causality). N = all parameters except the input embedding matrix; the LM head
    (untied in these shapes) IS included. Both sides therefore get the same FLOPs per step, and
    plw MFU / baseline MFU = speedup;
  - MFU against 989 TFLOP/s (H200 dense bf16 spec: `mfu`, `baseline_mfu`) and 790 TFLOP/s (the
    matmul peak measured on this H200: `mfu_measured_peak`, `baseline_mfu_measured_peak`); only on
    CUDA (on CPU the achieved TFLOP/s are reported and the MFU fields are null);
  - peak memory per side (`torch.cuda.max_memory_allocated`, reset between sides; null on CPU);
  - losses per side after the same steps (exact weighted step mean; step 1 runs before any update,
    so its two losses agree up to kernels and chunking: `loss_step1_*`).

Paths are flags (the GPU machine has no ../shared): --data (an Alpaca JSON, made into weights here
with PLW --plw, cut at --max-length) or --weights (a folder written by `alpaca-plw weights`), and
--tokenizer (a LLaMA tokenizer folder, copied into each model folder). Defaults: ../shared beside the
checkout when it exists. Nothing here imports `datasets`.

GPU:        python benchmarks/bench_train.py --shapes 1.1b,3b --data D/alpaca_data.json --tokenizer D/llama
CPU smoke:  python benchmarks/bench_train.py --shapes tiny --records 256 --steps 4 --warmup 1 --batch 16 --micro 4
Writes JSON (a list, one object per shape) to --out, default benchmarks/results/train_<cuda|cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alpaca_plw.data.weights_store import read_weights_dir  # noqa: E402
from alpaca_plw.train.batches import DataOrder, SequenceStore, collate  # noqa: E402
from alpaca_plw.train.config import ATTN_IMPLEMENTATIONS, TrainConfig  # noqa: E402
from alpaca_plw.train.packing import pack_records  # noqa: E402
from alpaca_plw.train.trainer import train  # noqa: E402

SHARED = REPO.parent / "shared"
PEAK_SPEC, PEAK_MEASURED = 989.0, 790.0  # TFLOP/s: H200 dense bf16 spec; measured bf16 matmul
SEED = 42
SHAPES = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=128),
    "1.1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, intermediate_size=5632),
    "3b": dict(hidden_size=3200, num_hidden_layers=26, num_attention_heads=32,
               num_key_value_heads=32, intermediate_size=8640),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=32, intermediate_size=11008),
}


def llama_config(shape: str):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False,
                       **SHAPES[shape])


def non_embedding_params(shape: str) -> int:
    """N: every parameter but the input embedding matrix (the untied LM head counts), on meta."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(shape))
    return sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()


def build_model_dir(shape: str, directory: Path, tokenizer: Path, device: str) -> None:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU when there is one (fast for 3B)
        model = LlamaForCausalLM(llama_config(shape))
    model.save_pretrained(directory)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, directory / name)
    del model


def step_end(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def baseline(model_dir: Path, store: SequenceStore, order: DataOrder, args, device: str):
    """The common recipe. Returns step-end times, exact step-mean losses, real tokens per step."""
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=args.attn_implementation).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0,
                                  fused=device == "cuda")
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, args.steps)
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    autocast = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else None
    ends, losses, tokens = [], [], []
    for step in range(args.steps):
        real, loss_sum, weight_sum = 0, 0.0, 0.0
        micro = order.micro_batches(step, 0)
        for indices in micro:
            batch = collate(store, indices).to(device)
            with autocast or torch.enable_grad():
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            per_token = criterion(logits.float().view(-1, logits.size(-1)), batch.targets.view(-1))
            weights = batch.weights.view(-1)
            loss = (per_token * weights).sum() / weights.sum() / len(micro)
            loss.backward()
            # The recipe optimises the per-micro-batch mean above; report the exact step mean.
            loss_sum += (per_token * weights).sum().item()
            weight_sum += weights.sum().item()
            real += batch.real_tokens
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ends.append(step_end(device))
        losses.append(loss_sum / weight_sum)
        tokens.append(real)
    del model, optimizer
    return ends, losses, tokens


def alpaca_plw(model_dir: Path, weights: Path, work: Path, args, device: str):
    """The trainer on the same data and steps. Returns step-end times, losses, its grad_accum."""
    ends, losses = [], []

    def on_step(record: dict) -> None:
        ends.append(step_end(device))  # the trainer synchronises CUDA before returning a step
        losses.append(record["loss"])

    cfg = TrainConfig(weights_dir=weights, model=str(model_dir), output_dir=work / "run",
                      micro_batch_size=args.micro, grad_accum=args.batch // args.micro,
                      max_steps=args.steps, lr=2e-5, warmup_ratio=0.0, seed=SEED, packing=True,
                      max_tokens=args.max_tokens or args.micro * args.max_length, device=device,
                      attn_implementation=args.attn_implementation, compile=args.compile)
    plan = train(cfg, on_step=on_step)
    shutil.rmtree(work / "run", ignore_errors=True)
    return ends, losses, plan


def measure(shape: str, store: SequenceStore, weights: Path, tokenizer: Path, work: Path, args,
            device: str) -> dict:
    accum = args.batch // args.micro
    order = DataOrder(len(store), SEED, args.micro, accum, 1)
    records = [order.step_records(s) for s in range(args.steps)]
    lengths = store.lengths.astype(np.int64)
    step_tokens = [int(lengths[r].sum()) for r in records]
    budget = args.max_tokens or args.micro * args.max_length
    packed = [len(pack_records(r, lengths, budget)) for r in records]
    padded = [sum(len(m) * int(lengths[m].max()) for m in order.micro_batches(s, 0) if len(m))
              for s in range(args.steps)]
    model_dir = work / f"model-{shape}"
    build_model_dir(shape, model_dir, tokenizer, device)

    peaks = []
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    b_ends, b_losses, b_tokens = baseline(model_dir, store, order, args, device)
    peaks.append(torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    p_ends, p_losses, plan = alpaca_plw(model_dir, weights, work, args, device)
    peaks.append(torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None)
    shutil.rmtree(model_dir, ignore_errors=True)
    assert b_tokens == step_tokens, "baseline saw other records than the common order"
    assert plan.grad_accum == accum and plan.micro_batch_size == args.micro and plan.packing, plan
    assert len(p_ends) == len(b_ends) == args.steps

    w = args.warmup
    timed_tokens = sum(step_tokens[w:])
    b_wall, p_wall = b_ends[-1] - b_ends[w - 1], p_ends[-1] - p_ends[w - 1]
    b_tok_s, p_tok_s = timed_tokens / b_wall, timed_tokens / p_wall
    n = non_embedding_params(shape)
    layers, hidden = SHAPES[shape]["num_hidden_layers"], SHAPES[shape]["hidden_size"]
    attention = sum(float((lengths[r] ** 2).sum()) for r in records[w:])  # sum over tokens of l
    flops = 6 * n * timed_tokens + 12 * layers * hidden * attention
    b_tflops, p_tflops = flops / b_wall / 1e12, flops / p_wall / 1e12
    mfu = lambda tflops, peak: round(tflops / peak, 4) if device == "cuda" else None  # noqa: E731
    gib = lambda v: None if v is None else round(v, 2)  # noqa: E731
    return {
        "shape": shape, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "baseline_tok_s": round(b_tok_s, 1), "plw_tok_s": round(p_tok_s, 1),
        "speedup": round(p_tok_s / b_tok_s, 3),
        "mfu": mfu(p_tflops, PEAK_SPEC), "mfu_measured_peak": mfu(p_tflops, PEAK_MEASURED),
        "baseline_mfu": mfu(b_tflops, PEAK_SPEC),
        "baseline_mfu_measured_peak": mfu(b_tflops, PEAK_MEASURED),
        "plw_tflops": round(p_tflops, 4), "baseline_tflops": round(b_tflops, 4),
        "baseline_peak_gib": gib(peaks[0]), "plw_peak_gib": gib(peaks[1]),
        "loss_baseline": round(b_losses[-1], 5), "loss_plw": round(p_losses[-1], 5),
        "loss_step1_baseline": round(b_losses[0], 5), "loss_step1_plw": round(p_losses[0], 5),
        "steps": args.steps, "warmup_steps": w, "timed_steps": args.steps - w,
        "tokens_per_step": round(float(np.mean(step_tokens)), 1),
        "sequences_per_step": args.batch,
        "forwards_per_step": {"baseline": accum, "plw": round(float(np.mean(packed)), 2)},
        "baseline_padded_tokens_per_step": round(float(np.mean(padded)), 1),
        "plw_max_tokens": budget,
        "n_params": n, "n_convention": "non-embedding parameters, LM head included (untied)",
        "attention_term": "12 x layers x hidden x real record length, per token, both sides",
        "flops_per_token": round(flops / timed_tokens),
        "attn_implementation": args.attn_implementation or "model default (sdpa)",
        "plw_compile": args.compile,
    }


def parse_args(argv=None) -> argparse.Namespace:
    shared_data, shared_tok = SHARED / "data" / "alpaca_data.json", SHARED / "tokenizers" / "llama"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="1.1b,3b", help=f"comma list of {', '.join(SHAPES)}")
    p.add_argument("--data", type=Path, default=shared_data if shared_data.exists() else None,
                   help="Alpaca JSON to make weights from [default: ../shared/data/alpaca_data.json]")
    p.add_argument("--weights", type=Path, default=None,
                   help="a prepared `alpaca-plw weights` folder (instead of --data)")
    p.add_argument("--tokenizer", type=Path, default=shared_tok if shared_tok.exists() else None,
                   help="LLaMA tokenizer folder [default: ../shared/tokenizers/llama]")
    p.add_argument("--records", type=int, default=0, help="first N records of --data (0: all)")
    p.add_argument("--plw", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=512, help="cut records at this many tokens")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2, help="steps left out of the timing (>= 1)")
    p.add_argument("--batch", type=int, default=128, help="sequences per optimizer step")
    p.add_argument("--micro", type=int, default=8, help="sequences per micro-batch")
    p.add_argument("--max-tokens", type=int, default=0,
                   help="alpaca-plw packed budget (0: micro x max-length)")
    p.add_argument("--attn-implementation", choices=ATTN_IMPLEMENTATIONS, default=None,
                   help="both sides [default: the model's, sdpa]")
    p.add_argument("--compile", action="store_true", help="alpaca-plw side: --compile")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    args = p.parse_args(argv)
    args.shape_list = [s.strip() for s in args.shapes.split(",") if s.strip()]
    unknown = [s for s in args.shape_list if s not in SHAPES]
    if unknown or not args.shape_list:
        p.error(f"--shapes: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(SHAPES)}")
    if args.tokenizer is None or not (args.tokenizer / "tokenizer.model").exists():
        p.error("--tokenizer: ../shared is not beside this checkout; pass a LLaMA tokenizer folder"
                if args.tokenizer is None else f"--tokenizer {args.tokenizer}: no tokenizer.model there")
    if args.weights is not None and args.records:
        p.error("--records applies to --data, not to a prepared --weights folder")
    if args.weights is None and (args.data is None or not args.data.is_file()):
        p.error(f"--data {args.data}: no such file; pass --data FILE or --weights DIR")
    if args.weights is not None and not args.weights.is_dir():
        p.error(f"--weights {args.weights}: no such folder")
    if not 1 <= args.warmup < args.steps:
        p.error("need 1 <= --warmup < --steps (the timing starts at the end of the last warm-up step)")
    if args.micro < 1 or args.batch % args.micro:
        p.error("--batch must be a multiple of --micro")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out_path = args.out or REPO / "benchmarks" / "results" / f"train_{device}.json"
    if out_path.exists() and not args.force:
        sys.exit(f"error: {out_path} exists; pass --force to replace it or --out elsewhere")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        weights = args.weights
        if weights is None:
            from alpaca_plw.data.pipeline import DataOptions, make_weights

            source = args.data
            if args.records:
                source = work / "subset.json"
                source.write_text(json.dumps(json.loads(args.data.read_text())[: args.records]))
            weights = work / "weights"
            make_weights(str(source), args.plw, DataOptions(tokenizer=str(args.tokenizer)), weights,
                         max_length=args.max_length)
        store = SequenceStore.from_weights(read_weights_dir(weights))
        results = [measure(shape, store, weights, args.tokenizer, work, args, device)
                   for shape in args.shape_list]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    partial.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(partial, out_path)
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"{'shape':>6} {'base tok/s':>11} {'plw tok/s':>10} {'speedup':>8} {'MFU':>6} "
          f"{'MFU@790':>8} {'base MFU':>9} {'base GiB':>9} {'plw GiB':>8} {'loss base':>10} "
          f"{'loss plw':>9}")
    for r in results:
        print(f"{r['shape']:>6} {r['baseline_tok_s']:>11,.0f} {r['plw_tok_s']:>10,.0f} "
              f"{r['speedup']:>8.2f} {fmt(r['mfu'], '.1%'):>6} "
              f"{fmt(r['mfu_measured_peak'], '.1%'):>8} {fmt(r['baseline_mfu'], '.1%'):>9} "
              f"{fmt(r['baseline_peak_gib'], '.1f'):>9} {fmt(r['plw_peak_gib'], '.1f'):>8} "
              f"{r['loss_baseline']:>10.4f} {r['loss_plw']:>9.4f}")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
