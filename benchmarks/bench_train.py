"""Trainer throughput: the common weighted-prompt-loss recipe against alpaca-plw's trainer, side by side.

One invocation builds the data (records of ../shared/data/alpaca_data.json through `alpaca-plw
weights` with the shared tokenizer), then for each model shape, on the same random-init model (same
seed), the same records per optimizer step and the same number of steps, times:

  (a) baseline: right-padded micro-batches, full-vocabulary logits upcast to fp32,
      CrossEntropyLoss(reduction="none"), weighted mean per micro-batch, AdamW;
  (b) alpaca-plw: `alpaca_plw.train.trainer.train` (packing, chunked weighted CE, exact step mean).

Tokens/s counts real tokens only (no padding). MFU = tokens/s x FLOPs per token / peak, with

    FLOPs per token = 6 N + 12 x layers x hidden x L

N = parameters excluding the embedding matrix's lookup (the LM head counts), L = the attention
context of that token: its own record's length when packed (attention is confined to the record)
and the padded micro-batch width for the baseline. The script prints a table last and writes
benchmarks/results/train_<device>.json (keys: shape, baseline_tok_s, plw_tok_s, speedup, mfu,
baseline_mfu, baseline_peak_gib, plw_peak_gib, loss_baseline, loss_plw, steps, tokens_per_step).

GPU:   python benchmarks/bench_train.py --shapes 1.1b,3b
CPU smoke test of the same code path (tiny shape, a few records):
       python benchmarks/bench_train.py --shapes tiny --records 64 --steps 2 --batch 8 --micro 4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alpaca_plw.train.batches import DataOrder, SequenceStore, collate  # noqa: E402
from alpaca_plw.data.pipeline import DataOptions, make_weights  # noqa: E402
from alpaca_plw.train.config import TrainConfig  # noqa: E402
from alpaca_plw.train.trainer import train  # noqa: E402
from alpaca_plw.data.weights_store import read_weights_dir  # noqa: E402

SHARED = REPO.parent / "shared"
PEAK_TFLOPS = {"cuda": 790.0, "cpu": None}
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


def build_model_dir(shape: str, directory: Path, tokenizer: Path) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, max_position_embeddings=2048, **SHAPES[shape])
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    for name in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer / name, directory / name)
    return sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()


def flops_per_token(params: int, layers: int, hidden: int, context: float) -> float:
    return 6 * params + 12 * layers * hidden * context


def baseline(model_dir: Path, store: SequenceStore, order: DataOrder, steps: int, device: str):
    """The common recipe: padded micro-batches, fp32 full logits, per-micro-batch weighted mean."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.0,
                                  fused=device == "cuda")
    criterion = torch.nn.CrossEntropyLoss(reduction="none")
    autocast = torch.autocast(device, dtype=torch.bfloat16) if device == "cuda" else None
    timings, losses, tokens, widths = [], [], [], []
    for step in range(steps):
        began = time.perf_counter()
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
            # Report the exact step mean (as alpaca-plw logs it); the recipe optimises the
            # per-micro-batch mean above, which is its normalisation.
            loss_sum += (per_token * weights).sum().item()
            weight_sum += weights.sum().item()
            real += batch.real_tokens
            widths.append((batch.input_ids.shape[1], batch.real_tokens))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - began)
        losses.append(loss_sum / weight_sum)
        tokens.append(real)
    del model, optimizer
    return timings, losses, tokens, widths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1.1b,3b")
    parser.add_argument("--records", type=int, default=0, help="first N Alpaca records (0: all)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    parser.add_argument("--batch", type=int, default=128, help="sequences per optimizer step")
    parser.add_argument("--micro", type=int, default=8, help="baseline micro-batch (sequences)")
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="alpaca-plw packed budget (0: micro x 512)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = SHARED / "tokenizers" / "llama"
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    source = SHARED / "data" / "alpaca_data.json"
    if args.records:
        subset = work / "subset.json"
        subset.write_text(json.dumps(json.loads(source.read_text())[: args.records]))
        source = subset
    weights = work / "weights"
    make_weights(str(source), 0.1, DataOptions(tokenizer=str(tokenizer)), weights, max_length=512)
    store = SequenceStore.from_weights(read_weights_dir(weights))
    accum = args.batch // args.micro
    order = DataOrder(len(store), 42, args.micro, accum, 1)
    results = []
    for shape in args.shapes.split(","):
        model_dir = work / f"model-{shape}"
        params = build_model_dir(shape, model_dir, tokenizer)
        layers, hidden = SHAPES[shape]["num_hidden_layers"], SHAPES[shape]["hidden_size"]
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        b_times, b_losses, b_tokens, widths = baseline(model_dir, store, order, args.steps, device)
        b_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        out = work / f"run-{shape}"
        cfg = TrainConfig(weights_dir=weights, model=str(model_dir), output_dir=out,
                          micro_batch_size=args.micro, grad_accum=accum, max_steps=args.steps,
                          lr=2e-5, warmup_ratio=0.0, packing=True,
                          max_tokens=args.max_tokens or args.micro * 512, device=device)
        log: list[dict] = []
        train(cfg, on_step=log.append)
        p_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        skip = min(args.warmup, args.steps - 1)
        b_tok_s = sum(b_tokens[skip:]) / sum(b_times[skip:])
        p_tok_s = float(np.mean([r["tokens_per_s"] for r in log[skip:]]))
        # Baseline context = padded width per micro-batch (token-weighted); packed = own record length.
        b_ctx = sum(w * t for w, t in widths) / sum(t for _, t in widths)
        lengths = store.lengths.astype(np.float64)
        p_ctx = float((lengths**2).sum() / lengths.sum())
        peak = PEAK_TFLOPS[device]
        mfu = (p_tok_s * flops_per_token(params, layers, hidden, p_ctx) / (peak * 1e12)) if peak else None
        b_mfu = (b_tok_s * flops_per_token(params, layers, hidden, b_ctx) / (peak * 1e12)) if peak else None
        results.append({
            "shape": shape, "baseline_tok_s": round(b_tok_s, 1), "plw_tok_s": round(p_tok_s, 1),
            "speedup": round(p_tok_s / b_tok_s, 3),
            "mfu": None if mfu is None else round(mfu, 4),
            "baseline_mfu": None if b_mfu is None else round(b_mfu, 4),
            "baseline_peak_gib": None if b_peak is None else round(b_peak, 2),
            "plw_peak_gib": None if p_peak is None else round(p_peak, 2),
            "loss_baseline": round(b_losses[-1], 5), "loss_plw": round(log[-1]["loss"], 5),
            "steps": args.steps, "tokens_per_step": int(np.mean(b_tokens)),
        })
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(model_dir, ignore_errors=True)
    out_path = args.out or REPO / "benchmarks" / "results" / f"train_{'h200' if device == 'cuda' else 'cpu'}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    print(f"{'shape':>6} {'base tok/s':>11} {'plw tok/s':>10} {'speedup':>8} {'MFU':>6} "
          f"{'base MFU':>9} {'base GiB':>9} {'plw GiB':>8} {'loss base':>10} {'loss plw':>9}")
    for r in results:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"{r['shape']:>6} {r['baseline_tok_s']:>11,.0f} {r['plw_tok_s']:>10,.0f} "
              f"{r['speedup']:>8.2f} {fmt(r['mfu'], '.1%'):>6} {fmt(r['baseline_mfu'], '.1%'):>9} "
              f"{fmt(r['baseline_peak_gib'], '.1f'):>9} {fmt(r['plw_peak_gib'], '.1f'):>8} "
              f"{r['loss_baseline']:>10.4f} {r['loss_plw']:>9.4f}")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
