"""benchmarks/bench_train.py on the CPU: the reduced end-to-end run, the device check that stands in
for a GPU (and catches a tensor left on the host), TRL's side on the common records and the fall
back to the hand loop without trl, alternation, shapes, and one-line errors.

Timing is not checked here (it belongs to the benchmark); each test takes a few seconds.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
LLAMA = REPO.parent / "shared" / "tokenizers" / "llama"
SAMPLE = REPO / "data" / "sample.json"
KEYS = {"shape", "baseline_tok_s", "plw_tok_s", "speedup", "mfu", "mfu_measured_peak",
        "baseline_mfu", "baseline_peak_gib", "plw_peak_gib", "loss_baseline", "loss_plw", "steps",
        "tokens_per_step", "baseline_recipe", "run_order", "loss_step1_baseline", "loss_step1_plw"}
SMALL = dict(steps=2, warmup=1, batch=4, micro=2, max_length=128, device_check=True,
             baseline="hand")
TINY_RUN = ["--shapes", "tiny", "--steps", "2", "--warmup", "1", "--batch", "4", "--micro", "2",
            "--max-length", "128"]


def _load_bench():
    if "bench_train" in sys.modules:
        return sys.modules["bench_train"]
    path = REPO / "benchmarks" / "bench_train.py"
    spec = importlib.util.spec_from_file_location("bench_train", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """16 sample records at PLW 0.1, cut at 128 tokens."""
    work = tmp_path_factory.mktemp("bench")
    return bench.prepare_weights(SAMPLE, LLAMA, work / "weights", records=16, max_length=128)


def _old_move(batch, device):
    """The bug: `MicroBatch.to` moves only what the trainer reads; targets and weights stay put."""
    moved = batch.to(device)
    return moved.input_ids, moved.attention_mask, moved.targets, moved.weights


def test_cpu_run_writes_every_key_and_step1_losses_agree(weights, tmp_path, capsys):
    out = tmp_path / "train.json"
    code = bench.main([*TINY_RUN, "--weights", str(weights), "--tokenizer", str(LLAMA),
                       "--baseline", "hand", "--device-check", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (result,) = json.loads(out.read_text())
    assert KEYS <= set(result)
    assert result["shape"] == "tiny" and result["steps"] == 2 and result["device_check"] is True
    assert result["run_order"] == ["baseline", "plw"]
    assert result["baseline"] == "hand" and result["baseline_fallback"] is None
    assert result["baseline_recipe"] == bench.BASELINE_RECIPE
    assert result["baseline_settings"]["lr_scheduler_type"] == "cosine"
    assert result["mfu"] is None and result["baseline_peak_gib"] is None  # CUDA-only fields
    assert result["baseline_tok_s"] > 0 and result["plw_tok_s"] > 0
    # step 1 runs before any update: both sides compute the same weighted mean
    assert result["loss_step1_baseline"] == pytest.approx(result["loss_step1_plw"], abs=1e-4)
    assert np.isfinite(result["loss_baseline"]) and np.isfinite(result["loss_plw"])
    assert "wrote" in capsys.readouterr().out


def test_device_check_catches_targets_left_on_host_by_the_baseline(weights, monkeypatch):
    monkeypatch.setattr(bench, "device_tensors", _old_move)
    with pytest.raises(bench.DeviceMismatch, match="cross_entropy"):
        bench.run_shape("tiny", weights, LLAMA, bench.BenchOptions(**SMALL), device="cpu")


def test_device_check_catches_a_trainer_selection_left_on_host(weights, monkeypatch):
    from alpaca_plw.train.batching import selection

    move = selection.Selection.to
    monkeypatch.setattr(selection.Selection, "to",
                        lambda self, device: dataclasses.replace(move(self, device),
                                                                 weights=self.weights))
    with pytest.raises(bench.DeviceMismatch):
        bench.run_shape("tiny", weights, LLAMA, bench.BenchOptions(**SMALL), device="cpu",
                        first="plw")


class _ReadCounter(bench.TorchFunctionMode):
    """Counts device values that bench_train's own code reads back (`.item()`, `float()`, ...)."""

    READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__float__, torch.Tensor.__int__,
             torch.Tensor.__bool__}

    def __init__(self):
        super().__init__()
        self.reads = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:  # read by bench_train itself (transformers' mask code reads too)
            self.reads += traceback.extract_stack()[-2].filename.endswith("bench_train.py")
        return func(*args, **(kwargs or {}))


def test_baseline_reads_its_losses_once_per_step_not_per_micro_batch(weights, tmp_path):
    bench.build_model_dir("tiny", tmp_path / "model", LLAMA, "cpu")
    store = bench.SequenceStore.from_weights(bench.read_weights_dir(weights))
    opts = bench.BenchOptions(steps=2, warmup=1, batch=6, micro=2, max_length=128)
    order = bench.DataOrder(len(store), bench.SEED, opts.micro, opts.accum, 1)
    with _ReadCounter() as counter:
        result = bench.baseline(tmp_path / "model", store, order, opts, "cpu")
    assert opts.accum == 3 and len(result["losses"]) == 2
    assert counter.reads == 2  # one per step (after the run), none per micro-batch


def test_host_tensor_check_follows_cuda_device_rules():
    with bench.HostTensorCheck():
        host = torch.from_numpy(np.arange(6, dtype=np.float32))
        device = host.to("cpu")
        assert device is not host  # the host original stays host
        assert (device + device).sum() == 30  # device with device
        assert device[torch.tensor([0, 2])].tolist() == [0.0, 2.0]  # host indices are fine
        assert (device * torch.tensor(2.0)).sum() == 30  # a 0-dim host tensor is a scalar
        assert (device + torch.ones(6, device=device.device)).sum() == 21  # made on the device
        assert (host + torch.ones(6)).sum() == 21  # host with host
        with pytest.raises(bench.DeviceMismatch, match="host tensor"):
            device + host
        with pytest.raises(bench.DeviceMismatch):
            device * torch.ones(6)  # a factory without device= makes a host tensor
        with pytest.raises(bench.DeviceMismatch):
            device + device.cpu()  # read back, then mixed
    assert torch.from_numpy(np.zeros(1)).__dict__.get("_bench_on_host") is None  # unpatched after


TRL_MISSING = bench.trl_missing()
needs_trl = pytest.mark.skipif(TRL_MISSING is not None, reason=f"TRL's side: {TRL_MISSING}")


def _order(weights, opts):
    store = bench.SequenceStore.from_weights(bench.read_weights_dir(weights))
    return store, bench.DataOrder(len(store), bench.SEED, opts.micro, opts.accum, 1)


@needs_trl
@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")  # TRL's default, on CPU
def test_trl_side_takes_the_common_records_per_step_and_names_its_settings(weights, tmp_path,
                                                                           monkeypatch, capsys):
    import trl

    runs, real = [], bench.trl_baseline

    def kept(*args, **kwargs):  # the TRL side's own result, before the JSON summarises it
        runs.append(real(*args, **kwargs))
        return runs[-1]

    monkeypatch.setattr(bench, "trl_baseline", kept)
    out = tmp_path / "trl.json"
    code = bench.main([*TINY_RUN, "--weights", str(weights), "--tokenizer", str(LLAMA),
                       "--baseline", "trl", "--device-check", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (result,) = json.loads(out.read_text())
    assert (result["baseline"], result["baseline_requested"]) == ("trl", "trl")
    assert result["baseline_fallback"] is None and result["baseline_recipe"] == bench.TRL_RECIPE
    # the real tokens TRL fed its model at each step are the common order's, which the trainer takes
    store, order = _order(weights, bench.BenchOptions(**SMALL))
    expected = [int(store.lengths[order.step_records(s)].sum()) for s in range(2)]
    (run,) = runs
    assert run["tokens"] == expected == result["step_real_tokens"] and len(run["ends"]) == 2
    settings = result["baseline_settings"]
    assert settings["trl_version"] == trl.__version__
    assert (settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"],
            settings["max_steps"]) == (2, 2, 2)
    assert (settings["learning_rate"], settings["lr_scheduler_type"], settings["warmup_steps"],
            settings["max_grad_norm"]) == (2e-5, "cosine", 0, 1.0)
    assert settings["gradient_checkpointing"] is True  # TRL's default, kept
    assert settings["max_length"] is None and settings["bf16"] is False  # CPU: fp32
    assert not settings["padding_free"] and not settings["packing"]
    assert settings["model_dtype"] == "float32"
    assert set(settings["changed"]) == set(bench.TRL_CHANGED)
    # TRL optimises PLW 0: before any update its loss is the trainer's completion loss
    assert result["loss_step1_baseline"] == pytest.approx(result["loss_step1_plw_completion"],
                                                          abs=1e-4)
    assert "tiny baseline: trl" in capsys.readouterr().out


@needs_trl
def test_trl_refuses_an_order_with_partial_micro_batches_and_auto_falls_back(weights):
    opts = bench.BenchOptions(steps=2, warmup=1, batch=12, micro=4)  # 15 records: step 2 holds 3
    store, order = _order(weights, opts)
    recipe, why = bench.choose_baseline("auto", store, order, opts)
    assert recipe == "hand" and "step 2 crosses the end of an epoch" in why
    with pytest.raises(bench.BenchError, match="--baseline trl: step 2 crosses"):
        bench.choose_baseline("trl", store, order, opts)
    full = bench.BenchOptions(**SMALL)  # 2 steps of 4 records: every micro-batch is full
    assert bench.choose_baseline("auto", store, _order(weights, full)[1], full) == ("trl", None)


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="needs datasets")
def test_trl_dataset_holds_the_store_tokens_with_the_prompt_labelled_minus_100(weights):
    store = bench.SequenceStore.from_weights(bench.read_weights_dir(weights))
    data = bench.trl_dataset(store)
    assert len(data) == len(store)
    for i in range(len(store)):
        ids = store.ids[store.offsets[i]:store.offsets[i + 1]].tolist()
        prompt = int(store.prompt_length[i])
        assert data[i]["input_ids"] == ids
        assert data[i]["labels"] == [-100] * prompt + ids[prompt:]


def test_auto_without_trl_falls_back_to_the_hand_loop_and_says_why(weights, tmp_path, monkeypatch,
                                                                   capsys):
    monkeypatch.setitem(sys.modules, "trl", None)  # `import trl` now raises ImportError
    out = tmp_path / "auto.json"
    code = bench.main([*TINY_RUN, "--weights", str(weights), "--tokenizer", str(LLAMA),
                       "--device-check", "--out", str(out)])  # --baseline auto, the default
    assert code == 0, capsys.readouterr().err
    (result,) = json.loads(out.read_text())
    assert (result["baseline"], result["baseline_requested"]) == ("hand", "auto")
    assert result["baseline_recipe"] == bench.BASELINE_RECIPE
    assert result["baseline_fallback"] == ("auto: TRL's side cannot run here (ModuleNotFoundError: "
                                           "import of trl halted; None in sys.modules); ran the "
                                           "hand loop")
    assert result["loss_step1_baseline"] == pytest.approx(result["loss_step1_plw"], abs=1e-4)
    assert "tiny baseline: hand (auto: TRL's side cannot run here" in capsys.readouterr().out
    # asked for by name, a missing trl is one error line before any work
    code = bench.main([*TINY_RUN, "--weights", str(weights), "--tokenizer", str(LLAMA),
                       "--baseline", "trl", "--out", str(tmp_path / "trl.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --baseline trl: ModuleNotFoundError: import of trl halted")
    assert not (tmp_path / "trl.json").exists()


def test_trl_missing_names_datasets_when_only_datasets_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert "datasets" in bench.trl_missing()


def test_sides_alternate_over_rounds_and_shapes():
    assert bench.run_order("baseline", 1) == ["baseline", "plw"]
    assert bench.run_order("plw", 1) == ["plw", "baseline"]
    assert bench.run_order("baseline", 2) == ["baseline", "plw", "plw", "baseline"]
    with pytest.raises(bench.BenchError):
        bench.run_order("trl", 1)


def test_gpu_shapes_have_head_dims_64_and_128():
    head_dim = {name: s["hidden_size"] // s["num_attention_heads"]
                for name, s in bench.SHAPES.items()}
    assert head_dim == {"tiny": 16, "1.1b": 64, "3b": 128, "7b": 128}
    assert all(s["hidden_size"] % s["num_attention_heads"] == 0 for s in bench.SHAPES.values())
    assert 2.8e9 < bench.non_embedding_params("3b") < 3.3e9


def test_json_is_written_after_every_shape_and_a_failed_shape_keeps_the_rest(weights, tmp_path,
                                                                             monkeypatch, capsys):
    calls = []

    def fake(shape, *args, **kwargs):
        calls.append((shape, kwargs["first"]))
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB\nmore")
        return {"shape": shape, "baseline_tok_s": 1.0, "plw_tok_s": 2.0, "speedup": 2.0,
                "mfu": None, "mfu_measured_peak": None, "baseline_mfu": None,
                "baseline_peak_gib": None, "plw_peak_gib": None, "loss_baseline": 1.0,
                "loss_plw": 1.0}

    monkeypatch.setattr(bench, "run_shape", fake)
    out = tmp_path / "r.json"
    code = bench.main(["--shapes", "tiny,1.1b,3b", "--weights", str(weights), "--tokenizer",
                       str(LLAMA), "--out", str(out)])
    assert code == 1
    assert calls == [("tiny", "baseline"), ("1.1b", "plw"), ("3b", "baseline")]
    written = json.loads(out.read_text())
    assert [r["shape"] for r in written] == ["tiny", "1.1b", "3b"]
    assert written[1]["error"].startswith("OutOfMemoryError: CUDA out of memory")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: shape 1.1b: OutOfMemoryError: CUDA out of memory. "
                   "Tried to allocate 2 GiB"]


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "13b"], "--shapes: unknown 13b"),
    (["--steps", "2", "--warmup", "2"], "need 1 <= --warmup < --steps"),
    (["--batch", "10", "--micro", "4"], "--batch must be a positive multiple of --micro"),
    (["--data", "/nonexistent.json"], "--data /nonexistent.json: no such file"),
    (["--steps", "many"], "argument --steps: invalid int value"),
    (["--baseline", "tf"], "argument --baseline: invalid choice: 'tf'"),
    (["--weights", str(REPO / "data")], "error: reading the weights: "),
])
def test_bad_input_is_one_error_line_and_exit_2(argv, message, tmp_path, capsys):
    code = bench.main([*argv, "--tokenizer", str(LLAMA), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "x.json").exists()
